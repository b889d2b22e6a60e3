"""A room of another server joined with partial state, used through the
client API while its resync is held back.

A holds a public room with a few members; Bob of B joins it through A, and
A's router holds the reads that start B's resync (``/state_ids``,
``/state``) until the test lets them go, so the room stays partial on B for
as long as a test needs. What B's users do in the meantime (send, change
their display name, name the room with an alias, join, leave, join again)
must not wait for the resync, and what A does to them (kick, ban) must
reach them. The cases are those a partial-state join (MSC3706, MSC3902)
must get right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from _client import q
from _e2e import device_keys
from _federation import TwoServers, eventually, two_servers

from ranvier.federation.transport.server import Request, RouteMatch, Router
from ranvier.testing.homeserver import TestUser

_RESYNC_READS = frozenset(
    ("GET", f"/_matrix/federation/v1/{pattern}")
    for pattern in ("state_ids/{room_id}", "state/{room_id}")
)
_MEMBERS = 3


class _HeldReads(Router):
    """A router that answers the reads of a resync only once released."""

    def __init__(self, inner: Router) -> None:
        super().__init__()
        self._inner = inner
        self.released = trio.Event()
        self.asked = 0

    def match(self, method: str, path: str) -> RouteMatch:
        found = self._inner.match(method, path)
        if (found.route.method, found.route.pattern) not in _RESYNC_READS:
            return found
        handler = found.route.handler

        async def held(request: Request) -> Any:
            self.asked += 1
            await self.released.wait()
            return await handler(request)

        return RouteMatch(dataclasses.replace(found.route, handler=held), found.params)


@dataclasses.dataclass
class _Partial:
    servers: TwoServers
    room_id: str
    held: _HeldReads
    #: A's users who joined before Bob: B's partial state does not hold them.
    members: list[TestUser]

    async def membership_at_a(self, user: TestUser) -> dict[str, Any] | None:
        """``user``'s membership content in the room as A has it."""
        ca, alice = self.servers.ca, self.servers.alice
        path = f"/rooms/{q(self.room_id)}/state/m.room.member/{q(user.user_id)}"
        status, content = await ca.call(alice, "GET", path)
        if status == 404:
            return None
        assert status == 200, content
        found: dict[str, Any] = content
        return found

    async def sections_at_b(self, user: TestUser) -> set[str]:
        """The sections of a lazy-loading initial sync on B, left rooms
        included, that hold the room.
        """
        answer = await self.servers.cb.ok(
            user, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"}
        )
        return {name for name, rooms in answer["rooms"].items() if self.room_id in rooms}

    async def still_partial(self) -> bool:
        return await self.servers.b.server.storage.is_partial_state_room(self.room_id)


_LAZY = '{"room": {"include_leave": true, "state": {"lazy_load_members": true}}}'


@asynccontextmanager
async def _partially_joined(tmp_path: Path) -> AsyncIterator[_Partial]:
    """Bob of B joined to Alice's public room on A, its resync held."""
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="public_chat", name="partial")
        members = [await a.register_user(f"member{n}") for n in range(_MEMBERS)]
        for member in members:
            await ca.ok(member, "POST", f"/rooms/{q(room_id)}/join", {})
        held = _HeldReads(a.server.federation_app.router)
        a.server.federation_app.router = held
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        partial = _Partial(servers, room_id, held, members)
        assert await partial.still_partial()
        yield partial
        held.released.set()


async def test_sending_renaming_aliases_and_joins_go_on_during_a_resync(tmp_path: Path) -> None:
    async with _partially_joined(tmp_path) as partial:
        a, b, ca, cb, alice, bob = partial.servers
        room_id = partial.room_id
        # A message is sent at once, and reaches A.
        sent = await cb.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "hello from B"},
        )

        async def message_at_a() -> bool:
            status, _ = await ca.call(
                alice, "GET", f"/rooms/{q(room_id)}/event/{q(sent['event_id'])}"
            )
            return status == 200

        await eventually(message_at_a, "Bob's message at A")
        # A new display name goes into the room as a join membership.
        await cb.ok(bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob 2"})

        async def renamed_at_a() -> bool:
            membership = await partial.membership_at_a(bob)
            return membership is not None and membership.get("displayname") == "Bob 2"

        await eventually(renamed_at_a, "Bob's new display name at A")
        assert (await partial.membership_at_a(bob) or {}).get("membership") == "join"
        # An alias of B's names the room and both servers, and can go again.
        alias = f"#partial:{b.server_name}"
        await cb.ok(bob, "PUT", f"/directory/room/{q(alias)}", {"room_id": room_id})
        found = await cb.ok(bob, "GET", f"/directory/room/{q(alias)}")
        assert found["room_id"] == room_id
        assert {b.server_name, a.server_name} <= set(found["servers"])
        await cb.ok(bob, "DELETE", f"/directory/room/{q(alias)}")
        await cb.refused(
            bob, "GET", f"/directory/room/{q(alias)}", status=404, errcode="M_NOT_FOUND"
        )
        # Another user of B joins the room that B holds with partial state.
        carol = await b.register_user("carol")
        await cb.ok(carol, "POST", f"/rooms/{q(room_id)}/join", {})

        async def carol_at_a() -> bool:
            membership = await partial.membership_at_a(carol)
            return membership is not None and membership["membership"] == "join"

        await eventually(carol_at_a, "Carol's join at A")
        assert await partial.sections_at_b(carol) == {"join"}
        # All of it while the resync waited.
        assert await partial.still_partial()
        assert partial.held.asked > 0
        partial.held.released.set()
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        members = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/joined_members")
        assert len(members["joined"]) == 3 + _MEMBERS


async def test_a_leave_during_a_resync_does_not_wait_for_it_and_joins_after_it_work(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        a, b, _ca, cb, _alice, bob = partial.servers
        room_id = partial.room_id
        assert await partial.sections_at_b(bob) == {"join"}
        with trio.fail_after(20):
            await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})

        async def left_at_a() -> bool:
            membership = await partial.membership_at_a(bob)
            return membership is not None and membership["membership"] == "leave"

        await eventually(left_at_a, "Bob's leave at A")
        assert await partial.sections_at_b(bob) == {"leave"}
        # Joining again, or another user joining, needs no finished resync.
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        assert await partial.sections_at_b(bob) == {"join"}
        carol = await b.register_user("carol")
        await cb.ok(carol, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        assert await partial.sections_at_b(carol) == {"join"}
        # And the original joiner may leave after a second join.
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
        assert await partial.sections_at_b(bob) == {"leave"}
        await eventually(left_at_a, "Bob's second leave at A")
        partial.held.released.set()
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        members = await cb.ok(carol, "GET", f"/rooms/{q(room_id)}/joined_members")
        assert carol.user_id in members["joined"]
        assert bob.user_id not in members["joined"]


async def test_a_remote_kick_and_ban_during_a_resync_reach_the_user(tmp_path: Path) -> None:
    async with _partially_joined(tmp_path) as partial:
        a, _b, ca, cb, alice, bob = partial.servers
        room_id = partial.room_id
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id})

        async def sections(wanted: set[str]) -> None:
            async def there() -> bool:
                return await partial.sections_at_b(bob) == wanted

            await eventually(there, f"the room in {wanted} on B")

        await sections({"leave"})
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/ban", {"user_id": bob.user_id})
        await sections({"leave"})

        async def banned_on_b() -> bool:
            status, content = await cb.call(
                bob, "GET", f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
            )
            return status == 200 and content["membership"] == "ban"

        await eventually(banned_on_b, "Bob's ban on B")
        status, answer = await cb.call(
            bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name}
        )
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), answer
        assert await partial.still_partial()


async def _lazy_sync_until(partial: _Partial, user: TestUser, found: Any, what: str) -> None:
    """Long-poll lazy-loading syncs of ``user`` on B until ``found(answer)``."""
    since: str | None = None
    with trio.move_on_after(20):
        while True:
            params = {"filter": _LAZY, "timeout": "1000" if since else "0"}
            if since is not None:
                params["since"] = since
            answer = await partial.servers.cb.ok(user, "GET", "/sync", params=params)
            if found(answer):
                return
            since = answer["next_batch"]
    raise AssertionError(f"gave up waiting for {what}")


def _ephemeral(answer: dict[str, Any], room_id: str, kind: str) -> list[dict[str, Any]]:
    room = answer["rooms"]["join"].get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == kind]


async def test_typing_receipts_and_to_device_of_unseen_members_arrive_during_a_resync(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, _, ca, _, _, bob = partial.servers
        room_id = partial.room_id
        member = partial.members[0]
        current = await partial.servers.b.server.storage.get_current_state_ids(room_id)
        assert ("m.room.member", member.user_id) not in current
        await ca.ok(
            member,
            "PUT",
            f"/rooms/{q(room_id)}/typing/{q(member.user_id)}",
            {"typing": True, "timeout": 30_000},
        )
        await _lazy_sync_until(
            partial,
            bob,
            lambda answer: any(
                member.user_id in e["content"]["user_ids"]
                for e in _ephemeral(answer, room_id, "m.typing")
            ),
            "member0 typing on B",
        )
        sent = await ca.ok(
            member,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/r1",
            {"msgtype": "m.text", "body": "read me"},
        )
        event_id = sent["event_id"]
        await ca.ok(member, "POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {})
        await _lazy_sync_until(
            partial,
            bob,
            lambda answer: any(
                member.user_id in e["content"].get(event_id, {}).get("m.read", {})
                for e in _ephemeral(answer, room_id, "m.receipt")
            ),
            "member0's receipt on B",
        )
        await ca.ok(
            member,
            "PUT",
            "/sendToDevice/m.test/d1",
            {"messages": {bob.user_id: {"*": {"hello": "during the resync"}}}},
        )
        await _lazy_sync_until(
            partial,
            bob,
            lambda answer: any(
                e["sender"] == member.user_id and e["type"] == "m.test"
                for e in answer.get("to_device", {}).get("events", [])
            ),
            "member0's to-device message on B",
        )
        assert await partial.still_partial()


async def test_device_changes_of_members_unseen_during_a_resync_are_listed_after_it(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, b, ca, cb, _, bob = partial.servers
        room_id = partial.room_id
        first, second = partial.members[:2]
        start = await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
        keys = {"device_keys": device_keys(first).body}
        await ca.ok(first, "POST", "/keys/upload", keys)
        partial.held.released.set()
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)

        async def changed_since(since: str, user: TestUser) -> str:
            with trio.fail_after(20):
                while True:
                    params = {"since": since, "timeout": "1000", "filter": _LAZY}
                    answer = await cb.ok(bob, "GET", "/sync", params=params)
                    since = answer["next_batch"]
                    if user.user_id in answer.get("device_lists", {}).get("changed", []):
                        return since

        # A change made while the room was partial is listed once it is not…
        since = await changed_since(start["next_batch"], first)
        # …and B follows the members it now knows of.
        await ca.ok(second, "POST", "/keys/upload", {"device_keys": device_keys(second).body})
        await changed_since(since, second)
        found = await cb.ok(bob, "POST", "/keys/query", {"device_keys": {first.user_id: []}})
        assert found["device_keys"][first.user_id] == {first.device_id: keys["device_keys"]}
