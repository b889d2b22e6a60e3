"""A room of another server joined with partial state, used through the
client API while its resync is held back.

A holds a public room with a few members; Bob of B joins it through A, and
A's router holds the reads of B's resync (``/state_ids``, ``/state``,
``/event``) until the test lets them go, so the room stays partial on B for
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
from _federation import TwoServers, eventually, two_servers

from ranvier.federation.transport.server import Request, RouteMatch, Router
from ranvier.testing.homeserver import TestUser

_RESYNC_READS = frozenset(
    ("GET", f"/_matrix/federation/v1/{pattern}")
    for pattern in ("state_ids/{room_id}", "state/{room_id}", "event/{event_id}")
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
        for n in range(_MEMBERS):
            member = await a.register_user(f"member{n}")
            await ca.ok(member, "POST", f"/rooms/{q(room_id)}/join", {})
        held = _HeldReads(a.server.federation_app.router)
        a.server.federation_app.router = held
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        partial = _Partial(servers, room_id, held)
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
