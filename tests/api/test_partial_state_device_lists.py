"""Device lists in a room joined with partial state (MSC3902's cases).

Three real servers: A holds a public room, B (the server under test) joins
it with partial state, its resync held at A until a test lets it go, and
C has Elsie, who joins, leaves or is hidden from B. A may lie in its
``send_join`` answer, leaving servers out of ``servers_in_room``, or sign
a membership change the room's full state does not allow.

Outgoing: B's users' device-list updates must reach every server the join
named while the room is partial, and servers that join meanwhile; once the
resync is done, exactly the servers the full state has, with the updates
missed by those the partial state wrongly left out. B's decisions are
read where they are made (the EDUs B queues, each with its destination),
so that "not sent" is a fact, not a wait; what is sent is also seen
arriving.

Tracking: B's users hear of remote members' device-list changes
(``/sync``'s ``device_lists``, ``/keys/changes``) for the members B knows
of: new members at once, pre-existing ones once the resync brings them,
and hear in ``left`` of members who go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _client import Client, q
from _e2e import device_keys
from _federation import eventually

from ranvier.federation.server import SEND_PATH
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import get_room_version
from ranvier.testing.held_routes import HeldRoutes
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.web import Handler, Request, RouteMatch, Router

_SEND_JOIN = ("PUT", "/_matrix/federation/v2/send_join/{room_id}/{event_id}")
_KEYS_QUERY = ("POST", "/_matrix/federation/v1/user/keys/query")
_USER_DEVICES = ("GET", "/_matrix/federation/v1/user/devices/{user_id}")
_UPDATE = "m.device_list_update"
#: The state reads of a resync; single events are answered at once, for
#: the auth events of what A sends.
_STATE_READS = frozenset(
    ("GET", f"/_matrix/federation/v1/{pattern}")
    for pattern in ("state_ids/{room_id}", "state/{room_id}")
)
_PASSWORD = "ellie's password"
_LAZY = '{"room": {"include_leave": true, "state": {"lazy_load_members": true}}}'


class _Watched(HeldRoutes):
    """A server's federation routes, watched: the device-list updates that
    arrive, the users whose keys are asked for; ``send_join`` answers
    without :attr:`hidden` in ``servers_in_room``; the resync reads of
    ``held_routes`` held until :attr:`released` is set.
    """

    def __init__(self, inner: Router, held_routes: Collection[tuple[str, str]] = ()) -> None:
        super().__init__(inner, held_routes)
        self.updates: list[dict[str, Any]] = []
        self.arrived = trio.Event()
        self.keys_asked: list[str] = []
        self.hidden: set[str] = set()
        #: Transactions a test sent as this server.
        self.sent = 0

    def match(self, method: str, path: str) -> RouteMatch:
        found = super().match(method, path)
        key = (found.route.method, found.route.pattern)
        wrap = {
            ("PUT", SEND_PATH): self._recording_updates,
            _SEND_JOIN: self._hiding_servers,
            _KEYS_QUERY: self._counting_key_reads,
            _USER_DEVICES: self._counting_key_reads,
        }.get(key)
        if wrap is None:
            return found
        return RouteMatch(
            dataclasses.replace(found.route, handler=wrap(found.route.handler)), found.params
        )

    def _recording_updates(self, handler: Handler) -> Handler:
        async def recording(request: Request) -> Any:
            answer = await handler(request)
            for edu in (request.content or {}).get("edus", []):
                if edu.get("edu_type") == _UPDATE:
                    self.updates.append(edu["content"])
                    self.arrived.set()
                    self.arrived = trio.Event()
            return answer

        return recording

    def _hiding_servers(self, handler: Handler) -> Handler:
        async def hiding(request: Request) -> Any:
            answer = await handler(request)
            assert isinstance(answer, dict)
            if "servers_in_room" in answer:
                answer["servers_in_room"] = [
                    server for server in answer["servers_in_room"] if server not in self.hidden
                ]
            return answer

        return hiding

    def _counting_key_reads(self, handler: Handler) -> Handler:
        async def counting(request: Request) -> Any:
            user_id = request.path_params.get("user_id")
            if user_id is not None:
                self.keys_asked.append(user_id)
            else:
                self.keys_asked.extend(sorted((request.content or {}).get("device_keys", {})))
            return await handler(request)

        return counting

    async def update_with(self, stream_id: int) -> None:
        """Return once an update of that stream position has arrived."""
        with trio.fail_after(20):
            while not any(update["stream_id"] == stream_id for update in self.updates):
                await self.arrived.wait()


@dataclasses.dataclass
class _World:
    a: TestHomeserver
    b: TestHomeserver
    c: TestHomeserver
    ca: Client
    cb: Client
    cc: Client
    #: Of A: the room's creator.
    alice: TestUser
    #: Of B: the partial joiner.
    bob: TestUser
    #: Of C.
    elsie: TestUser
    at_a: _Watched
    at_c: _Watched
    room_id: str
    #: The device-list updates B queued, with their destination, in order.
    queued_by_b: list[tuple[str, dict[str, Any]]]

    async def join_via_a(self, client: Client, user: TestUser) -> None:
        await client.ok(
            user, "POST", f"/join/{q(self.room_id)}", {}, params={"server_name": self.a.server_name}
        )

    async def bob_joins(self) -> None:
        """Bob joins with partial state, the resync held at A."""
        await self.join_via_a(self.cb, self.bob)
        assert await self.still_partial()

    async def still_partial(self) -> bool:
        return await self.b.server.storage.is_partial_state_room(self.room_id)

    async def finish_resync(self) -> None:
        self.at_a.released.set()
        with trio.fail_after(20):
            await self.b.server.wait_for_full_state(self.room_id)

    async def membership_at_b(self, user: TestUser) -> str | None:
        state = await self.b.server.storage.get_current_state_ids(self.room_id)
        event_id = state.get(("m.room.member", user.user_id))
        if event_id is None:
            return None
        row = await self.b.server.storage.get_event(event_id)
        assert row is not None
        membership: str | None = msgspec.json.decode(row.json)["content"].get("membership")
        return membership

    async def wait_membership_at_b(self, user: TestUser, membership: str) -> None:
        async def there() -> bool:
            return await self.membership_at_b(user) == membership

        await eventually(there, f"{user.user_id}'s {membership} on B")

    async def member_event_at(self, hs: TestHomeserver, user: TestUser) -> str:
        state = await hs.server.storage.get_current_state_ids(self.room_id)
        return state[("m.room.member", user.user_id)]

    async def wait_event_at_b(self, event_id: str) -> None:
        async def there() -> bool:
            return await self.b.server.storage.get_event(event_id) is not None

        await eventually(there, f"{event_id} on B")

    async def auth_at_a(self, keys: list[tuple[str, str]], more: list[str]) -> list[str]:
        """Auth events for a forged event: the current state's events at
        ``keys`` on A, the create event where the room version cites it,
        and ``more``.
        """
        storage = self.a.server.storage
        state = await storage.get_current_state_ids(self.room_id)
        version = await storage.get_room_version(self.room_id)
        assert version is not None
        if get_room_version(version).create_event_in_auth_events:
            keys = [("m.room.create", ""), *keys]
        return [state[key] for key in keys] + more

    async def forged_by_a(
        self, sender: TestUser, state_key: str, content: dict[str, Any], auth: list[str]
    ) -> str:
        """A member event of ``sender`` signed by A with ``auth`` as its auth
        events, that A neither keeps nor would allow, sent to B alone; its ID.
        """
        storage = self.a.server.storage
        version = await storage.get_room_version(self.room_id)
        assert version is not None
        prev_events = sorted(await storage.get_forward_extremities(self.room_id))
        prevs = [await storage.get_event(event_id) for event_id in prev_events]
        fields = {
            "type": "m.room.member",
            "state_key": state_key,
            "sender": sender.user_id,
            "room_id": self.room_id,
            "content": content,
            "prev_events": prev_events,
            "auth_events": auth,
            "depth": max(row.depth for row in prevs if row is not None) + 1,
            "origin_server_ts": max(row.origin_server_ts for row in prevs if row is not None) + 1,
        }
        signed = hash_and_sign_event(fields, version, self.a.server_name, self.a.server.signing_key)
        event_id = Pdu.from_json(signed, version).event_id
        body = {"origin": self.a.server_name, "origin_server_ts": fields["origin_server_ts"]}
        answer = await self.a.server.federation_client.put_json(
            self.b.server_name,
            f"/_matrix/federation/v1/send/forged{event_id[1:9]}",
            {**body, "pdus": [signed]},
        )
        assert answer["pdus"] == {event_id: {}}, answer
        return event_id

    async def rename(self, name: str) -> tuple[int, set[str]]:
        """Rename Bob's device: the update's stream position and the
        servers B queued it for (all of them, once the rename is answered).
        """
        before = len(self.queued_by_b)
        await self.cb.ok(
            self.bob, "PUT", f"/devices/{q(self.bob.device_id)}", {"display_name": name}
        )
        queued = self.queued_by_b[before:]
        positions = {content["stream_id"] for _, content in queued}
        assert len(positions) == 1, queued
        return positions.pop(), {destination for destination, _ in queued}


@asynccontextmanager
async def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_World]:
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
        alice, bob, elsie = (
            await a.register_user("alice"),
            await b.register_user("bob"),
            await c.register_user("elsie"),
        )
        # Named, so that A's partial answer leaves every member out but the joiner.
        room_id = await ca.create_room(alice, preset="public_chat", name="partial")
        at_a = _Watched(a.server.federation_app.router, _STATE_READS)
        a.server.federation_app.router = at_a
        at_c = _Watched(c.server.federation_app.router)
        c.server.federation_app.router = at_c
        queued: list[tuple[str, dict[str, Any]]] = []
        sender = b.server.federation_sender
        send_edu = sender.send_edu

        def queue_and_note(destination: str, edu_type: str, content: Any) -> None:
            if edu_type == _UPDATE:
                queued.append((destination, dict(content)))
            send_edu(destination, edu_type, content)

        monkeypatch.setattr(sender, "send_edu", queue_and_note)
        world = _World(a, b, c, ca, cb, cc, alice, bob, elsie, at_a, at_c, room_id, queued)
        yield world
        at_a.released.set()


# --- Outgoing device list updates ------------------------------------------------
#
# "Device list updates reach all servers in partial state rooms" is
# test_key_changes_of_a_partial_joiner_reach_every_server_of_the_room in
# test_partial_state_federation.py.


async def test_device_list_updates_reach_servers_that_join_during_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        a, c = world.a.server_name, world.c.server_name
        await world.bob_joins()
        position, destinations = await world.rename("one")
        assert destinations == {a}
        await world.at_a.update_with(position)
        # Elsie of C joins (through A) while B's room is partial.
        await world.join_via_a(world.cc, world.elsie)
        await world.wait_membership_at_b(world.elsie, "join")
        position, destinations = await world.rename("two")
        assert destinations == {a, c}
        await world.at_c.update_with(position)
        assert await world.still_partial()
        await world.finish_resync()
        position, destinations = await world.rename("three")
        assert destinations == {a, c}
        await world.at_c.update_with(position)


async def test_device_list_updates_stop_reaching_a_departed_server_once_the_resync_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        a, c = world.a.server_name, world.c.server_name
        await world.join_via_a(world.cc, world.elsie)
        await world.bob_joins()
        await world.cc.ok(world.elsie, "POST", f"/rooms/{q(world.room_id)}/leave", {})
        await world.wait_membership_at_b(world.elsie, "leave")
        # B cannot tell that Elsie was C's last member: the join named C.
        position, destinations = await world.rename("one")
        assert destinations == {a, c}
        await world.at_c.update_with(position)
        await world.finish_resync()
        position, destinations = await world.rename("two")
        assert destinations == {a}
        await world.at_a.update_with(position)


async def _missed_update_sent_once_the_resync_is_done(world: _World, *, leave: bool) -> None:
    """B wrongly believes C out of the room: an update made meanwhile goes
    to A alone, and reaches C once the resync shows C was there. With
    ``leave``, Elsie has left the partial room by then, having joined
    another room of Bob's: the room's state at the end of the resync does
    not name C, the state when the update was made does.
    """
    a, c = world.a.server_name, world.c.server_name
    missed, destinations = await world.rename("missed")
    assert destinations == {a}
    await world.at_a.update_with(missed)
    if leave:
        other = await world.cb.create_room(world.bob, preset="public_chat")
        await world.cc.ok(
            world.elsie,
            "POST",
            f"/join/{q(other)}",
            {},
            params={"server_name": world.b.server_name},
        )
        await world.cc.ok(world.elsie, "POST", f"/rooms/{q(world.room_id)}/leave", {})
        await world.wait_event_at_b(await world.member_event_at(world.c, world.elsie))
    assert not [update for update in world.at_c.updates if update["stream_id"] == missed]
    await world.finish_resync()
    await world.at_c.update_with(missed)
    position, destinations = await world.rename("after")
    assert destinations == {a, c}
    await world.at_c.update_with(position)
    # Queued for C once, after the resync: C never heard of it before.
    assert [content["stream_id"] for server, content in world.queued_by_b if server == c].count(
        missed
    ) == 1


async def test_a_missed_device_list_update_reaches_a_server_absent_from_the_join_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        await world.join_via_a(world.cc, world.elsie)
        world.at_a.hidden.add(world.c.server_name)
        await world.bob_joins()
        await _missed_update_sent_once_the_resync_is_done(world, leave=False)


async def test_a_missed_device_list_update_reaches_an_absent_server_that_left_before_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        await world.join_via_a(world.cc, world.elsie)
        world.at_a.hidden.add(world.c.server_name)
        await world.bob_joins()
        await _missed_update_sent_once_the_resync_is_done(world, leave=True)


async def _wrongly_kicked(world: _World) -> None:
    """Derek of A, made an admin, leaves before Bob joins; Elsie of C joins
    after Bob, and B accepts on its partial state a kick of Elsie by Derek
    that the full state refuses (Derek had left): B wrongly believes C out.
    """
    a, c = world.a.server_name, world.c.server_name
    alice, room_id = world.alice, world.room_id
    derek = await world.a.register_user("derek")
    await world.ca.ok(derek, "POST", f"/rooms/{q(room_id)}/join", {})
    levels_path = f"/rooms/{q(room_id)}/state/m.room.power_levels"
    levels = await world.ca.ok(alice, "GET", levels_path)
    levels["users"][derek.user_id] = 100
    await world.ca.ok(alice, "PUT", levels_path, levels)
    derek_join = await world.member_event_at(world.a, derek)
    await world.ca.ok(derek, "POST", f"/rooms/{q(room_id)}/leave", {})
    await world.bob_joins()
    await world.join_via_a(world.cc, world.elsie)
    await world.wait_membership_at_b(world.elsie, "join")
    position, destinations = await world.rename("before the kick")
    assert destinations == {a, c}
    await world.at_c.update_with(position)
    auth = await world.auth_at_a([("m.room.power_levels", "")], [derek_join])
    await world.forged_by_a(derek, world.elsie.user_id, {"membership": "leave"}, auth)
    assert await world.membership_at_b(world.elsie) == "leave"


async def test_a_missed_device_list_update_reaches_a_wrongly_kicked_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        await _wrongly_kicked(world)
        await _missed_update_sent_once_the_resync_is_done(world, leave=False)


async def test_a_missed_device_list_update_reaches_a_wrongly_kicked_server_that_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        await _wrongly_kicked(world)
        await _missed_update_sent_once_the_resync_is_done(world, leave=True)


# --- Device list tracking -------------------------------------------------------
#
# B keeps other servers' users' device lists while its state shows them in
# a room with one of B's users (remote_device_lists). Complement's checks
# that a list is (or is not) "cached" are made against that: /keys/query
# asks A (GET /user/devices or /user/keys/query) when no kept list may
# answer, and answers from the kept list without asking otherwise. A change
# of the user's keys is listed in device_lists.changed (and /keys/changes)
# while B shares a room with them, and the user in device_lists.left when
# B stops.


async def _listed(world: _World, since: str, section: str, user: TestUser) -> str:
    """Long-poll Bob's syncs from ``since`` until ``user`` is in
    ``device_lists.<section>``; ``/keys/changes`` over the same range lists
    them there too. The token after.
    """
    token: str = since
    with trio.fail_after(20):
        while True:
            params = {"since": token, "timeout": "1000", "filter": _LAZY}
            answer = await world.cb.ok(world.bob, "GET", "/sync", params=params)
            token = str(answer["next_batch"])
            if user.user_id in answer.get("device_lists", {}).get(section, []):
                break
    changes = await world.cb.ok(
        world.bob, "GET", "/keys/changes", params={"from": since, "to": token}
    )
    assert user.user_id in changes[section], changes
    return token


async def _token(world: _World) -> str:
    answer = await world.cb.ok(world.bob, "GET", "/sync", params={"filter": _LAZY, "timeout": "0"})
    token: str = answer["next_batch"]
    return token


async def _keys_asked_of_a(world: _World, user: TestUser) -> None:
    """Bob's /keys/query about ``user`` is asked of A: no kept list answers."""
    before = world.at_a.keys_asked.count(user.user_id)
    await world.cb.ok(world.bob, "POST", "/keys/query", {"device_keys": {user.user_id: []}})
    assert world.at_a.keys_asked.count(user.user_id) == before + 1


async def _keys_kept(world: _World, user: TestUser) -> dict[str, Any]:
    """Bob's /keys/query about ``user`` is answered from B's kept list,
    without asking A; ``user``'s devices as answered.
    """
    before = world.at_a.keys_asked.count(user.user_id)
    answer = await world.cb.ok(
        world.bob, "POST", "/keys/query", {"device_keys": {user.user_id: []}}
    )
    assert world.at_a.keys_asked.count(user.user_id) == before
    assert answer["failures"] == {}
    devices: dict[str, Any] = answer["device_keys"][user.user_id]
    return devices


async def _message_at_b(world: _World, user: TestUser, body: str) -> None:
    sent = await world.ca.ok(
        user,
        "PUT",
        f"/rooms/{q(world.room_id)}/send/m.room.message/{body}",
        {"msgtype": "m.text", "body": body},
    )
    await world.wait_event_at_b(sent["event_id"])


async def test_device_lists_of_members_there_before_the_join_are_listed_once_the_resync_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        charlie, derek = (
            await world.a.register_user("charlie"),
            await world.a.register_user("derek"),
        )
        for member in (charlie, derek):
            await world.join_via_a(world.ca, member)
        await world.bob_joins()
        for member in (charlie, derek, charlie, derek):
            await _keys_asked_of_a(world, member)
        await _message_at_b(world, charlie, "first")
        since = await _token(world)
        await world.ca.ok(
            charlie, "POST", "/keys/upload", {"device_keys": device_keys(charlie).body}
        )
        # A's update goes before the message: once B has the message, it had the update.
        await _message_at_b(world, charlie, "second")
        await world.finish_resync()
        await _listed(world, since, "changed", charlie)
        # Fetched once now that the state shows them, then kept.
        for member in (charlie, derek):
            await _keys_asked_of_a(world, member)
        for member in (charlie, derek):
            await _keys_kept(world, member)


async def test_a_member_there_before_the_join_is_listed_on_joining_another_shared_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        charlie = await world.a.register_user("charlie")
        await world.join_via_a(world.ca, charlie)
        await world.bob_joins()
        await _message_at_b(world, charlie, "first")
        since = await _token(world)
        await world.ca.ok(
            charlie, "POST", "/keys/upload", {"device_keys": device_keys(charlie).body}
        )
        other = await world.cb.create_room(world.bob, preset="public_chat")
        await world.ca.ok(
            charlie, "POST", f"/join/{q(other)}", {}, params={"server_name": world.b.server_name}
        )
        await _listed(world, since, "changed", charlie)
        assert await world.still_partial()


async def _new_member(world: _World) -> tuple[TestUser, str]:
    """Ellie of A joins while B's room is partial: listed at once. Ellie
    and the token after.
    """
    await world.bob_joins()
    since = await _token(world)
    ellie = await world.a.register_user("ellie", password=_PASSWORD)
    await world.join_via_a(world.ca, ellie)
    await world.wait_membership_at_b(ellie, "join")
    since = await _listed(world, since, "changed", ellie)
    await _keys_asked_of_a(world, ellie)
    await _keys_kept(world, ellie)
    return ellie, since


async def test_the_device_list_of_a_member_who_joins_during_the_resync_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        ellie, since = await _new_member(world)
        await world.ca.ok(ellie, "POST", "/keys/upload", {"device_keys": device_keys(ellie).body})
        since = await _listed(world, since, "changed", ellie)
        # A's first update of Ellie's names no earlier one: nothing links it
        # to the list kept, which is fetched again, then kept.
        await _keys_asked_of_a(world, ellie)
        assert list(await _keys_kept(world, ellie)) == [ellie.device_id]
        assert await world.still_partial()
        await world.finish_resync()
        assert list(await _keys_kept(world, ellie)) == [ellie.device_id]
        # A second device of Ellie's, after the resync, is heard of too.
        login = await world.ca.ok(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "ellie"},
                "password": _PASSWORD,
            },
        )
        second = dataclasses.replace(
            ellie, access_token=login["access_token"], device_id=login["device_id"]
        )
        await world.ca.ok(second, "POST", "/keys/upload", {"device_keys": device_keys(second).body})
        await _listed(world, since, "changed", ellie)
        # That update follows the one kept: applied, and the list still kept.
        assert sorted(await _keys_kept(world, ellie)) == sorted([ellie.device_id, second.device_id])


async def test_a_member_who_joins_and_leaves_during_the_resync_is_listed_as_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        ellie, since = await _new_member(world)
        await world.ca.ok(ellie, "POST", f"/rooms/{q(world.room_id)}/leave", {})
        await world.wait_membership_at_b(ellie, "leave")
        await _listed(world, since, "left", ellie)
        await _keys_asked_of_a(world, ellie)
        await _keys_asked_of_a(world, ellie)


async def test_leaving_the_room_during_the_resync_lists_its_members_as_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        ellie, since = await _new_member(world)
        await world.cb.ok(world.bob, "POST", f"/rooms/{q(world.room_id)}/leave", {})
        await _listed(world, since, "left", ellie)
        await _keys_asked_of_a(world, ellie)
        await _keys_asked_of_a(world, ellie)


async def _updates_from_a(world: _World, *users: TestUser) -> None:
    """A tells B, in one transaction and in this order, that ``users``'
    device lists changed: each at a position of A's device-list stream (so
    that a list fetched afterwards covers it) and naming no earlier update,
    so that B cannot tell what it follows.
    """
    edus = [
        {
            "edu_type": _UPDATE,
            "content": {
                "user_id": user.user_id,
                "device_id": user.device_id,
                "stream_id": await world.a.server.storage.e2e_keys.mark_device_list_changed(
                    user.user_id
                ),
                "prev_id": [],
                "deleted": False,
            },
        }
        for user in users
    ]
    world.at_a.sent += 1
    await world.a.server.federation_client.put_json(
        world.b.server_name,
        f"/_matrix/federation/v1/send/updates{world.at_a.sent}",
        {"origin": world.a.server_name, "origin_server_ts": 1, "pdus": [], "edus": edus},
    )


async def _listed_alone(world: _World, since: str, listed: TestUser, unlisted: TestUser) -> str:
    """Long-poll from ``since`` until ``listed`` is in device_lists.changed,
    ``unlisted`` never having been; the token after.
    """
    token = since
    with trio.fail_after(20):
        while True:
            params = {"since": token, "timeout": "1000", "filter": _LAZY}
            answer = await world.cb.ok(world.bob, "GET", "/sync", params=params)
            token = str(answer["next_batch"])
            changed = answer.get("device_lists", {}).get("changed", [])
            assert unlisted.user_id not in changed, answer["device_lists"]
            if listed.user_id in changed:
                break
    changes = await world.cb.ok(
        world.bob, "GET", "/keys/changes", params={"from": since, "to": token}
    )
    assert listed.user_id in changes["changed"], changes
    assert unlisted.user_id not in changes["changed"], changes
    return token


async def _wrongly_believed_in(
    world: _World, *, rejoin: bool = False
) -> tuple[TestUser, TestUser, str]:
    """Ellie of A, banned before Bob joins, is said by A (lying) to have
    joined again: B believes her in the room until the resync shows the
    join was refused. Charlie of A is a member throughout. Ellie, Charlie
    and a token once the resync is done. With ``rejoin``, Alice unbans her
    and she joins for real before the resync is done.
    """
    alice, room_id = world.alice, world.room_id
    charlie = await world.a.register_user("charlie")
    ellie = await world.a.register_user("ellie", password=_PASSWORD)
    for member in (charlie, ellie):
        await world.join_via_a(world.ca, member)
    await world.ca.ok(alice, "POST", f"/rooms/{q(room_id)}/ban", {"user_id": ellie.user_id})
    await world.bob_joins()
    since = await _token(world)
    auth = await world.auth_at_a([("m.room.power_levels", ""), ("m.room.join_rules", "")], [])
    await world.forged_by_a(ellie, ellie.user_id, {"membership": "join"}, auth)
    assert await world.membership_at_b(ellie) == "join"
    # Followed while she is thought to be in the room.
    since = await _listed(world, since, "changed", ellie)
    await _updates_from_a(world, ellie)
    since = await _listed(world, since, "changed", ellie)
    await _keys_asked_of_a(world, ellie)
    await _keys_kept(world, ellie)
    if rejoin:
        await world.ca.ok(alice, "POST", f"/rooms/{q(room_id)}/unban", {"user_id": ellie.user_id})
        await world.ca.ok(ellie, "POST", f"/rooms/{q(room_id)}/join", {})
        await world.wait_event_at_b(await world.member_event_at(world.a, ellie))
        # Her real join is newer than the list kept: fetched again, then kept.
        await _keys_asked_of_a(world, ellie)
        await _keys_kept(world, ellie)
    await world.finish_resync()
    assert await world.membership_at_b(ellie) == ("join" if rejoin else "ban")
    return ellie, charlie, await _listed(world, since, "changed", charlie)


async def test_a_user_wrongly_believed_in_the_room_is_no_longer_followed_after_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        ellie, charlie, since = await _wrongly_believed_in(world)
        await _updates_from_a(world, ellie, charlie)
        await _listed_alone(world, since, charlie, ellie)
        # Her kept list answers no more: she shares no room with B.
        await _keys_asked_of_a(world, ellie)
        await _keys_asked_of_a(world, ellie)


async def test_a_user_wrongly_believed_in_the_room_is_followed_again_on_joining_after_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _world(tmp_path, monkeypatch) as world:
        ellie, _, since = await _wrongly_believed_in(world)
        room_id = world.room_id
        await world.ca.ok(
            world.alice, "POST", f"/rooms/{q(room_id)}/unban", {"user_id": ellie.user_id}
        )
        await world.ca.ok(ellie, "POST", f"/rooms/{q(room_id)}/join", {})
        await world.wait_membership_at_b(ellie, "join")
        since = await _listed(world, since, "changed", ellie)
        # The list kept from before is older than her join: fetched again.
        await _keys_asked_of_a(world, ellie)
        await _keys_kept(world, ellie)
        await _updates_from_a(world, ellie)
        await _listed(world, since, "changed", ellie)
        await _keys_asked_of_a(world, ellie)


async def test_a_user_wrongly_believed_in_the_room_who_rejoins_during_the_resync_stays_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Complement skips this case, expecting the list fetched again once the
    resync is done. Here the list fetched after her real join covers every
    update A made until then, and A has sent B each one since (B was in the
    room): it stays kept, and what A sends next is followed.
    """
    async with _world(tmp_path, monkeypatch) as world:
        ellie, _, since = await _wrongly_believed_in(world, rejoin=True)
        assert await _keys_kept(world, ellie) == {}
        await world.ca.ok(ellie, "POST", "/keys/upload", {"device_keys": device_keys(ellie).body})
        await _listed(world, since, "changed", ellie)
        # A's update names the one before it, which the kept list covers: it
        # is applied, and the new device is answered without asking A.
        assert list(await _keys_kept(world, ellie)) == [ellie.device_id]
