"""A room of another server joined with partial state, used through the
client API while its resync is held back.

A holds a public room with a few members; Bob of B joins it through A, and
A's router holds the reads that start B's resync (``/state_ids``,
``/state``) until the test lets them go, so the room stays partial on B for
as long as a test needs. What B's users do in the meantime (send, change
their display name, name the room with an alias, join, leave, join again)
must not wait for the resync, and what A does to them (kick, ban) must
reach them. Events of A whose prev events B lacks must be fetched and
shown without waiting for the resync, and what the resync brings (members
in the room list and the user directory, memberships in a gappy sync)
must show once it is done. The cases are those a partial-state join
(MSC3706, MSC3902) must get right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client, q
from _e2e import cross_signing, device_keys
from _federation import TwoServers, eventually, two_servers

from ranvier.core.context import EventContext, event_to_persist
from ranvier.federation.transport.client import FederationRequestError
from ranvier.federation.transport.server import Request, RouteMatch, Router
from ranvier.protocol.auth import auth_state_keys
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import compute_event_id, hash_and_sign_event
from ranvier.testing.held_routes import HeldRoutes
from ranvier.testing.homeserver import TestUser, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.web import Handler

_RESYNC_READS = frozenset(
    ("GET", f"/_matrix/federation/v1/{pattern}")
    for pattern in ("state_ids/{room_id}", "state/{room_id}")
)
_MISSING_EVENTS = ("POST", "/_matrix/federation/v1/get_missing_events/{room_id}")
_MEMBERS = 3
_TEST_STATE = "org.example.test_state"


def _decoded(event: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = (
        msgspec.json.decode(event) if isinstance(event, msgspec.Raw) else event
    )
    return decoded


class _HeldReads(HeldRoutes):
    """A router that answers the reads of a resync only once released, but
    for those at a gap, and may leave events out of ``/get_missing_events``."""

    def __init__(self, inner: Router) -> None:
        super().__init__(inner, _RESYNC_READS)
        self.asked = 0
        #: Events whose state is answered at once: those at a gap, not the join.
        self.answered_at_once: set[str] = set()
        #: Events left out of the answers to ``/get_missing_events``, of a room of this version.
        self.withheld: set[str] = set()
        self.room_version = ""
        self.left_out = 0
        #: The paths of the reads answered at once.
        self.answered_gaps: list[str] = []

    def match(self, method: str, path: str) -> RouteMatch:
        found = super().match(method, path)
        handler = found.route.handler
        if (found.route.method, found.route.pattern) == _MISSING_EVENTS and self.withheld:

            async def withholding(request: Request) -> Any:
                answer = await handler(request)
                assert isinstance(answer, dict)
                events = [_decoded(event) for event in answer["events"]]
                answer["events"] = [
                    event
                    for event in events
                    if compute_event_id(event, self.room_version) not in self.withheld
                ]
                self.left_out += len(events) - len(answer["events"])
                return answer

            return RouteMatch(dataclasses.replace(found.route, handler=withholding), found.params)
        return found

    def _holding(self, handler: Handler) -> Handler:
        held = super()._holding(handler)

        async def held_unless_at_a_gap(request: Request) -> Any:
            if request.query_value("event_id") in self.answered_at_once:
                self.answered_gaps.append(request.uri)
                return await handler(request)
            self.asked += 1
            return await held(request)

        return held_unless_at_a_gap


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
        # Redone with full state, the leave still stands, for Bob and Carol.
        assert await partial.sections_at_b(bob) == {"leave"}
        answer = await cb.ok(carol, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
        room = answer["rooms"]["join"][room_id]
        leaves = [
            event
            for event in room["timeline"]["events"] + room["state"]["events"]
            if event["type"] == "m.room.member" and event["state_key"] == bob.user_id
        ]
        assert leaves
        assert leaves[-1]["content"]["membership"] == "leave"


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


async def _finish_resync(partial: _Partial) -> None:
    partial.held.released.set()
    with trio.fail_after(20):
        await partial.servers.b.server.wait_for_full_state(partial.room_id)


async def test_the_public_room_list_counts_the_members_the_resync_brings(tmp_path: Path) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, b, _, cb, _, bob = partial.servers
        room_id = partial.room_id
        terry = await b.register_user("terry", admin=True)
        await cb.ok(terry, "POST", f"/rooms/{q(room_id)}/join", {})
        await cb.ok(terry, "PUT", f"/directory/list/room/{q(room_id)}", {"visibility": "public"})

        async def joined_listed() -> int:
            listed = await cb.ok(bob, "GET", "/publicRooms")
            (entry,) = [room for room in listed["chunk"] if room["room_id"] == room_id]
            count: int = entry["num_joined_members"]
            return count

        # Alice, her members, Bob and Terry are all in the room on A.
        everyone = 3 + _MEMBERS
        assert await joined_listed() < everyone
        await _finish_resync(partial)

        async def all_counted() -> bool:
            return await joined_listed() == everyone

        await eventually(all_counted, "every member counted in B's room list")


async def test_the_user_directory_finds_the_members_the_resync_brings(tmp_path: Path) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, _, _, cb, _, bob = partial.servers

        async def found(term: str) -> list[str]:
            answer = await cb.ok(bob, "POST", "/user_directory/search", {"search_term": term})
            return [result["user_id"] for result in answer["results"]]

        assert await found("bob") == [bob.user_id]
        # Members B does not know of yet are not found…
        assert await found("member") == []
        await _finish_resync(partial)
        wanted = sorted(member.user_id for member in partial.members)

        async def members_found() -> bool:
            return sorted(await found("member")) == wanted

        # …and are once their memberships arrived.
        await eventually(members_found, "A's members in B's user directory")


async def _lazy_sync_token(partial: _Partial) -> str:
    """Bob's lazy-loading sync token, the room in it."""
    _, _, _, cb, _, bob = partial.servers
    before = await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
    assert partial.room_id in before["rooms"]["join"]
    token: str = before["next_batch"]
    return token


async def _two_messages_at_b(partial: _Partial, txn_prefix: str) -> tuple[str, str]:
    """Two messages of the room's first member of A, once the last is at B."""
    _, _, ca, cb, _, bob = partial.servers
    room_id = partial.room_id
    sent = [
        await ca.ok(
            partial.members[0],
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/{txn_prefix}{n}",
            {"msgtype": "m.text", "body": f"message {n}"},
        )
        for n in range(2)
    ]
    first, last = (answer["event_id"] for answer in sent)

    async def last_at_b() -> bool:
        status, _ = await cb.call(bob, "GET", f"/rooms/{q(room_id)}/event/{q(last)}")
        return status == 200

    await eventually(last_at_b, "the last message at B")
    return first, last


async def _gappy_lazy_sync(partial: _Partial, since: str) -> dict[str, Any]:
    """The room in Bob's lazy-loading sync since ``since``, a timeline of one."""
    _, _, _, cb, _, bob = partial.servers
    gappy = '{"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}}'
    answer = await cb.ok(
        bob, "GET", "/sync", params={"since": since, "filter": gappy, "timeout": "0"}
    )
    room: dict[str, Any] = answer["rooms"]["join"][partial.room_id]
    return room


async def test_a_gappy_sync_after_the_resync_has_the_senders_membership(tmp_path: Path) -> None:
    async with _partially_joined(tmp_path) as partial:
        member = partial.members[0]
        since = await _lazy_sync_token(partial)
        await _finish_resync(partial)
        _, last = await _two_messages_at_b(partial, "g")
        room = await _gappy_lazy_sync(partial, since)
        assert [event["event_id"] for event in room["timeline"]["events"]] == [last]
        assert room["timeline"]["limited"] is True
        assert ("m.room.member", member.user_id) in _state_keys(room)


# --- Events whose prev events B lacks ----------------------------------------------
#
# A member of A "sends" messages that A writes to its own storage but never
# sends on, so that B hears of an event only when the test sends it, signed
# as A, and must fetch the events before it from A.


async def _written_at_a(
    partial: _Partial,
    prev_events: list[str],
    body: str,
    *,
    state_key: str | None = None,
    sender: TestUser | None = None,
    cited_membership: str | None = None,
) -> dict[str, Any]:
    """A message of ``sender`` (member0 unless given) after ``prev_events``,
    or a state event of a test type when ``state_key`` is given, signed and
    written by A alone; citing ``cited_membership`` as the sender's
    membership when given, whatever it is now (A checks nothing).
    """
    a = partial.servers.a
    storage, room_id = a.server.storage, partial.room_id
    version = await storage.get_room_version(room_id)
    assert version is not None
    prevs = [await storage.get_event(event_id) for event_id in prev_events]
    groups = await storage.get_event_state_groups(prev_events[0])
    assert groups is not None
    fields: dict[str, Any] = {
        "type": "m.room.message",
        "sender": (sender or partial.members[0]).user_id,
        "room_id": room_id,
        "content": {"msgtype": "m.text", "body": body},
        "prev_events": prev_events,
        "auth_events": [],
        "depth": max(row.depth for row in prevs if row is not None) + 1,
        "origin_server_ts": max(row.origin_server_ts for row in prevs if row is not None) + 1,
    }
    if state_key is not None:
        fields.update(type=_TEST_STATE, state_key=state_key, content={"body": body})
    state = await storage.get_state_ids(groups.after)
    draft = Pdu.from_json(
        hash_and_sign_event(fields, version, a.server_name, a.server.signing_key), version
    )
    if cited_membership is not None:
        state = {**state, ("m.room.member", draft.sender): cited_membership}
    fields["auth_events"] = [state[key] for key in auth_state_keys(draft) if key in state]
    signed = hash_and_sign_event(fields, version, a.server_name, a.server.signing_key)
    event = Pdu.from_json(signed, version)
    after = groups.after
    if state_key is not None:
        delta = {(_TEST_STATE, state_key): event.event_id}
        after = await storage.store_state_group(room_id, groups.after, delta)
    context = EventContext(state_group_before=groups.after, state_group_after=after)
    await storage.persist_events([event_to_persist(event, context)])
    return {**signed, "event_id": event.event_id}


async def _sent_as_a(partial: _Partial, events: list[dict[str, Any]], txn_id: str) -> None:
    """``events`` sent to B in one transaction signed by A, each accepted."""
    a, b = partial.servers.a, partial.servers.b
    pdus = [{key: value for key, value in event.items() if key != "event_id"} for event in events]
    body = {"origin": a.server_name, "origin_server_ts": pdus[0]["origin_server_ts"], "pdus": pdus}
    answer = await a.server.federation_client.put_json(
        b.server_name, f"/_matrix/federation/v1/send/{txn_id}", body
    )
    assert answer["pdus"] == {event["event_id"]: {} for event in events}, answer


async def _bobs_join(partial: _Partial) -> str:
    state = await partial.servers.a.server.storage.get_current_state_ids(partial.room_id)
    return state[("m.room.member", partial.servers.bob.user_id)]


async def _state_ids_status(partial: _Partial, event_id: str) -> int | None:
    """The status of A's ``/state_ids`` at ``event_id`` asked of B; None if
    B gave no answer within half a second.
    """
    a, b = partial.servers.a, partial.servers.b
    path = f"/_matrix/federation/v1/state_ids/{q(partial.room_id)}"
    with trio.move_on_after(0.5):
        try:
            await a.server.federation_client.get_json(
                b.server_name, path, query={"event_id": event_id}
            )
        except FederationRequestError as exc:
            return exc.status
        return 200
    return None


async def _received_during_the_resync(partial: _Partial, *events: dict[str, Any]) -> None:
    """Each of ``events`` reaches Bob's sync on B while the room is partial;
    B will not give the state at the last to another server until the
    resync is done, and then gives A's.
    """
    _, b, _, _, _, bob = partial.servers
    room_id, last = partial.room_id, events[-1]["event_id"]
    wanted = {event["event_id"] for event in events}
    seen: set[str] = set()

    def all_seen(answer: dict[str, Any]) -> bool:
        room = answer["rooms"]["join"].get(room_id, {})
        seen.update(event["event_id"] for event in room.get("timeline", {}).get("events", []))
        return wanted <= seen

    await _lazy_sync_until(partial, bob, all_seen, "the events in Bob's sync")
    assert await partial.still_partial()
    # Other servers are sent elsewhere (or kept waiting) while B lacks the state.
    assert await _state_ids_status(partial, last) in {403, None}
    await _finish_resync(partial)
    a = partial.servers.a
    answer = await a.server.federation_client.get_json(
        b.server_name, f"/_matrix/federation/v1/state_ids/{q(room_id)}", query={"event_id": last}
    )
    at_a = await a.server.storage.get_current_state_ids(room_id)
    assert sorted(answer["pdu_ids"]) == sorted(at_a.values())


async def test_an_event_whose_parent_is_missing_is_received_during_a_resync(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        # … <- M (Bob's join) <- A <- B; B alone is sent.
        joined = await _bobs_join(partial)
        event_a = await _written_at_a(partial, [joined], "A")
        event_b = await _written_at_a(partial, [event_a["event_id"]], "B")
        await _sent_as_a(partial, [event_b], "crafted-b")
        await _received_during_the_resync(partial, event_a, event_b)


async def test_an_event_with_one_of_two_parents_missing_is_received_during_a_resync(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        # … <- M <- A <- B, and B cites M too; B alone is sent.
        joined = await _bobs_join(partial)
        event_a = await _written_at_a(partial, [joined], "A")
        event_b = await _written_at_a(partial, [event_a["event_id"], joined], "B")
        await _sent_as_a(partial, [event_b], "crafted-b")
        await _received_during_the_resync(partial, event_a, event_b)


async def test_an_event_whose_grandparent_is_missing_from_the_gap_is_received_during_a_resync(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        # … <- M <- A <- B <- C, and B cites M too; C alone is sent, and A
        # asked for the events before C answers B alone: B fetches the
        # state at A instead.
        joined = await _bobs_join(partial)
        event_a = await _written_at_a(partial, [joined], "A")
        event_b = await _written_at_a(partial, [event_a["event_id"], joined], "B")
        event_c = await _written_at_a(partial, [event_b["event_id"]], "C")
        version = await partial.servers.a.server.storage.get_room_version(partial.room_id)
        assert version is not None
        partial.held.room_version = version
        partial.held.withheld.add(event_a["event_id"])
        partial.held.answered_at_once.add(event_a["event_id"])
        await _sent_as_a(partial, [event_c], "crafted-c")
        await _received_during_the_resync(partial, event_b, event_c)
        assert partial.held.left_out > 0
        assert any("/state_ids/" in path for path in partial.held.answered_gaps)


async def test_a_resync_completes_when_events_arrive_after_events_citing_them(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        alice = partial.servers.alice
        # … <- M <- L <- S0 <- … <- S9 <- T1 <- T2, the S state events of
        # Alice's. T2 is sent first; A asked for the events before it
        # answers T1 alone, so B takes the state at S9 from A and holds the
        # S events as outliers. Then L and the S events arrive as they are.
        joined = await _bobs_join(partial)
        late = await _written_at_a(partial, [joined], "late", sender=alice)
        outliers = []
        last = late["event_id"]
        for n in range(10):
            outlier = await _written_at_a(
                partial, [last], f"outlier {n}", state_key=f"s{n}", sender=alice
            )
            outliers.append(outlier)
            last = outlier["event_id"]
        first = await _written_at_a(partial, [last], "timeline 1", sender=alice)
        second = await _written_at_a(partial, [first["event_id"]], "timeline 2", sender=alice)
        version = await partial.servers.a.server.storage.get_room_version(partial.room_id)
        assert version is not None
        partial.held.room_version = version
        partial.held.withheld.update(event["event_id"] for event in [late, *outliers])
        partial.held.answered_at_once.add(last)
        await _sent_as_a(partial, [second], "timeline")
        await _lazy_sync_until(
            partial,
            partial.servers.bob,
            lambda answer: any(
                event["event_id"] == second["event_id"]
                for event in answer["rooms"]["join"]
                .get(partial.room_id, {})
                .get("timeline", {})
                .get("events", [])
            ),
            "the second timeline event in Bob's sync",
        )
        await _sent_as_a(partial, [late], "late")
        await _sent_as_a(partial, outliers, "outliers")
        assert await partial.still_partial()
        await _finish_resync(partial)
        _, b, _, cb, _, bob = partial.servers
        state = await cb.state(bob, partial.room_id)
        assert {(_TEST_STATE, f"s{n}") for n in range(10)} <= set(state)
        assert not await b.server.storage.get_partial_state_events(partial.room_id)
        for event in [late, *outliers, first, second]:
            await cb.ok(bob, "GET", f"/rooms/{q(partial.room_id)}/event/{q(event['event_id'])}")


async def test_verdicts_of_partial_state_are_redone_and_a_rejected_event_stays_hidden(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="public_chat", name="verdicts")
        demoted, plain = [await a.register_user(name) for name in ("demoted", "plain")]
        for member in (demoted, plain):
            await ca.ok(member, "POST", f"/rooms/{q(room_id)}/join", {})
        # Demoted may send state (level 50), then leaves before Bob joins.
        levels = await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/state/m.room.power_levels/")
        levels["users"][demoted.user_id] = 50
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels/", levels)
        at_a = await a.server.storage.get_current_state_ids(room_id)
        demoted_join = at_a[("m.room.member", demoted.user_id)]
        await ca.ok(demoted, "POST", f"/rooms/{q(room_id)}/leave", {})
        held = _HeldReads(a.server.federation_app.router)
        a.server.federation_app.router = held
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        partial = _Partial(servers, room_id, held, [plain])
        assert await partial.still_partial()
        joined = await _bobs_join(partial)
        at_a = await a.server.storage.get_current_state_ids(room_id)
        # Demoted's state event cites the join before the leave, which B's
        # partial state does not hold: accepted on it, rejected on the full.
        wrongly_accepted = await _written_at_a(
            partial,
            [joined],
            "from one who left",
            state_key="accepted",
            sender=demoted,
            cited_membership=demoted_join,
        )
        # Plain may not send state on either.
        rejected = await _written_at_a(
            partial, [wrongly_accepted["event_id"]], "not allowed", state_key="rejected"
        )
        sentinel = await _written_at_a(partial, [rejected["event_id"]], "sentinel", sender=alice)
        pdus = [
            {key: value for key, value in event.items() if key != "event_id"}
            for event in (wrongly_accepted, rejected, sentinel)
        ]
        body = {
            "origin": a.server_name,
            "origin_server_ts": pdus[0]["origin_server_ts"],
            "pdus": pdus,
        }
        await a.server.federation_client.put_json(
            b.server_name, "/_matrix/federation/v1/send/verdicts", body
        )

        async def status_at_b(event: dict[str, Any]) -> int:
            status, _ = await cb.call(
                bob, "GET", f"/rooms/{q(room_id)}/event/{q(event['event_id'])}"
            )
            return status

        async def sentinel_at_b() -> bool:
            return await status_at_b(sentinel) == 200

        await eventually(sentinel_at_b, "the sentinel at B")
        assert await partial.still_partial()
        assert await status_at_b(wrongly_accepted) == 200
        assert await status_at_b(rejected) == 404
        # The room's state event of that type reads at once: it is no member's.
        path = f"/rooms/{q(room_id)}/state/{_TEST_STATE}/accepted"
        assert (await cb.ok(bob, "GET", path))["body"] == "from one who left"
        await _finish_resync(partial)
        await cb.refused(bob, "GET", path, status=404, errcode="M_NOT_FOUND")
        assert await status_at_b(wrongly_accepted) == 404
        assert await status_at_b(rejected) == 404
        assert await status_at_b(sentinel) == 200
        state = await cb.state(bob, room_id)
        assert (_TEST_STATE, "accepted") not in state
        assert (_TEST_STATE, "rejected") not in state
        assert ("m.room.member", plain.user_id) in state


async def _waiting_for_full_state(partial: _Partial, count: int) -> bool:
    """Whether ``count`` tasks of B wait for the room's full state."""
    await trio.lowlevel.checkpoint()
    cleared = partial.servers.b.server.unpartial_stater._full_state.get(partial.room_id)
    return cleared is not None and cleared.statistics().tasks_waiting >= count


async def test_members_asked_at_a_sync_token_during_a_resync_wait_for_the_members(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, _, _, cb, alice, bob = partial.servers
        room_id = partial.room_id
        token = (await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"}))[
            "next_batch"
        ]
        answers: dict[str, Any] = {}

        async def ask(name: str, path: str, params: dict[str, str] | None = None) -> None:
            answers[name] = await cb.ok(bob, "GET", path, params=params)

        everyone = {alice.user_id, bob.user_id, *(member.user_id for member in partial.members)}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "members", f"/rooms/{q(room_id)}/members", {"at": token})
                nursery.start_soon(ask, "joined", f"/rooms/{q(room_id)}/joined_members")
                await eventually(lambda: _waiting_for_full_state(partial, 2), "both reads waiting")
                # Answered from the partial state, either would lack A's members.
                await _finish_resync(partial)
        chunk = answers["members"]["chunk"]
        assert {event["state_key"] for event in chunk} == everyone
        assert all(event["content"]["membership"] == "join" for event in chunk)
        assert set(answers["joined"]["joined"]) == everyone


# --- Outgoing device list updates --------------------------------------------------


async def _changed_for(client: Client, user: TestUser, since: str, wanted: str) -> str:
    """Long-poll ``user``'s syncs from ``since`` until ``wanted`` is listed
    in device_lists.changed; the token after it.
    """
    with trio.fail_after(20):
        while True:
            params = {"since": since, "timeout": "1000", "filter": _LAZY}
            answer = await client.ok(user, "GET", "/sync", params=params)
            since = answer["next_batch"]
            if wanted in answer.get("device_lists", {}).get("changed", []):
                return since


async def test_key_changes_of_a_partial_joiner_reach_every_server_of_the_room(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        open_test_homeserver(tmp_path / "c", federation=pki) as c,
        a.client() as http_a,
        b.client() as http_b,
        c.client() as http_c,
    ):
        ca, cb, cc = Client(a, http_a), Client(b, http_b), Client(c, http_c)
        alice, carol = await a.register_user("alice"), await c.register_user("carol")
        bob = await b.register_user("bob", password="bobs password")
        room_id = await ca.create_room(alice, preset="public_chat", name="named")
        # Carol of C is in the room before Bob of B joins it with partial state.
        await cc.ok(carol, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        with trio.fail_after(20):
            await c.server.wait_for_full_state(room_id)
        held = _HeldReads(a.server.federation_app.router)
        a.server.federation_app.router = held
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        assert await b.server.storage.is_partial_state_room(room_id)
        known_to_b = await b.server.storage.get_current_state_ids(room_id)
        assert ("m.room.member", carol.user_id) not in known_to_b
        tokens = {}
        for client, user in ((ca, alice), (cc, carol)):

            async def bob_joined(client: Client = client, user: TestUser = user) -> bool:
                members = await client.ok(user, "GET", f"/rooms/{q(room_id)}/joined_members")
                return bob.user_id in members["joined"]

            await eventually(bob_joined, f"Bob's join on {client.hs.server_name}")
            first = await client.ok(user, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
            tokens[user.user_id] = first["next_batch"]
        await cb.ok(bob, "POST", "/keys/upload", {"device_keys": device_keys(bob).body})
        for client, user in ((ca, alice), (cc, carol)):
            tokens[user.user_id] = await _changed_for(
                client, user, tokens[user.user_id], bob.user_id
            )
        assert await b.server.storage.is_partial_state_room(room_id)
        held.released.set()
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        # A second device of Bob's after the resync is heard of too.
        login = await cb.ok(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"},
                "password": "bobs password",
            },
        )
        second = dataclasses.replace(
            bob, access_token=login["access_token"], device_id=login["device_id"]
        )
        await cb.ok(second, "POST", "/keys/upload", {"device_keys": device_keys(second).body})
        for client, user in ((ca, alice), (cc, carol)):
            await _changed_for(client, user, tokens[user.user_id], bob.user_id)
        found = await cc.ok(carol, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
        assert set(found["device_keys"][bob.user_id]) == {bob.device_id, second.device_id}


# --- Lazy-loading syncs, presence and keys of members unseen during a resync ---------


def _state_keys(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(event["type"], event["state_key"]) for event in room["state"]["events"]}


async def test_lazy_initial_and_gappy_syncs_during_a_resync_carry_the_senders_membership(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, b, _, cb, _, bob = partial.servers
        room_id = partial.room_id
        member = partial.members[0]
        since = await _lazy_sync_token(partial)
        first, last = await _two_messages_at_b(partial, "lazy")
        # B's state still lacks the sender: the sync must find their membership elsewhere.
        current = await b.server.storage.get_current_state_ids(room_id)
        assert ("m.room.member", member.user_id) not in current
        key = ("m.room.member", member.user_id)
        initial = await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
        room = initial["rooms"]["join"][room_id]
        assert last in [event["event_id"] for event in room["timeline"]["events"]]
        assert key in _state_keys(room)
        room = await _gappy_lazy_sync(partial, since)
        assert [event["event_id"] for event in room["timeline"]["events"]] == [last]
        assert first != last
        assert room["timeline"]["limited"] is True
        assert key in _state_keys(room)
        assert await partial.still_partial()


def _presence_of(answer: dict[str, Any], user: TestUser) -> list[str]:
    return [
        event["content"]["presence"]
        for event in answer.get("presence", {}).get("events", [])
        if event["sender"] == user.user_id
    ]


async def test_presence_of_a_member_unseen_during_a_resync_reaches_a_lazy_syncer_after_it(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, _, ca, cb, _, bob = partial.servers
        member = partial.members[0]
        start = await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
        await ca.ok(
            member,
            "PUT",
            f"/presence/{q(member.user_id)}/status",
            {"presence": "online", "status_msg": "during the resync"},
        )

        async def heard_at_b() -> bool:
            await trio.lowlevel.checkpoint()
            changes = partial.servers.b.server.presence.changes_after(None).users
            return any(
                change.user_id == member.user_id and change.status_msg == "during the resync"
                for change in changes
            )

        # B takes the EDU, but cannot yet tell that Bob shares a room with
        # its user: Bob may not see it until the resync shows they do.
        await eventually(heard_at_b, "member0's presence at B")
        await cb.refused(
            bob, "GET", f"/presence/{q(member.user_id)}/status", status=403, errcode="M_FORBIDDEN"
        )
        during = await cb.ok(
            bob,
            "GET",
            "/sync",
            params={"filter": _LAZY, "timeout": "0", "since": start["next_batch"]},
        )
        assert await partial.still_partial()
        await _finish_resync(partial)
        assert _presence_of(during, member) == []
        # Bob synced past the change while it was hidden from him; once
        # the resync shows them in a room together, he hears of it.
        params = {"filter": _LAZY, "timeout": "0", "since": during["next_batch"]}
        answer = await cb.ok(bob, "GET", "/sync", params=params)
        assert _presence_of(answer, member) == ["online"]
        assert partial.room_id not in answer["rooms"]["join"]


async def test_cross_signing_keys_of_a_member_unseen_during_a_resync_are_found_after_it(
    tmp_path: Path,
) -> None:
    async with _partially_joined(tmp_path) as partial:
        _, _, ca, cb, _, bob = partial.servers
        member = partial.members[0]
        start = await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
        cross = cross_signing(member)
        # A tells B in an m.signing_key_update EDU, which B accepts.
        await ca.ok(member, "POST", "/keys/device_signing/upload", cross.body)
        await _finish_resync(partial)
        with trio.fail_after(20):
            since = start["next_batch"]
            while True:
                params = {"since": since, "timeout": "1000", "filter": _LAZY}
                answer = await cb.ok(bob, "GET", "/sync", params=params)
                since = answer["next_batch"]
                if member.user_id in answer.get("device_lists", {}).get("changed", []):
                    break
        found = await cb.ok(bob, "POST", "/keys/query", {"device_keys": {member.user_id: []}})
        assert found["master_keys"] == {member.user_id: cross.body["master_key"]}
        assert found["self_signing_keys"] == {member.user_id: cross.body["self_signing_key"]}


async def test_a_leave_of_the_last_local_member_stands_when_the_resync_gives_up(
    tmp_path: Path,
) -> None:
    """The leave does not wait for the resync, so A no longer answers B's
    reads of a room B has left: the resync stops, the room still partial,
    and Bob's syncs go on showing the room as left.
    """
    async with _partially_joined(tmp_path) as partial:
        _, b, _, cb, _, bob = partial.servers
        room_id = partial.room_id
        joined = await cb.ok(bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})

        async def left_at_a() -> bool:
            membership = await partial.membership_at_a(bob)
            return membership is not None and membership["membership"] == "leave"

        await eventually(left_at_a, "Bob's leave at A")
        stater = b.server.unpartial_stater
        stopped = stater.stopped_resyncs
        partial.held.released.set()

        async def given_up() -> bool:
            await trio.lowlevel.checkpoint()
            return room_id not in stater.status()

        await eventually(given_up, "the resync to stop")
        assert stater.stopped_resyncs == stopped + 1
        assert await partial.still_partial()
        assert await partial.sections_at_b(bob) == {"leave"}
        params = {"filter": _LAZY, "timeout": "0", "since": joined["next_batch"]}
        answer = await cb.ok(bob, "GET", "/sync", params=params)
        assert room_id in answer["rooms"]["leave"]
        assert room_id not in answer["rooms"]["join"]
        # An eager sync never showed the room, and does not now.
        eager = await cb.ok(bob, "GET", "/sync", params={"timeout": "0"})
        assert room_id not in eager["rooms"]["join"]
