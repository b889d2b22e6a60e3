"""Joining a remote room, against a real resident server over HTTPS.

The resident (``127.0.0.1:<port>``) serves the membership routes from its
own storage; alice, its user, creates the room with the local event
creator. The joining server (b.test) has storage of its own, the real
federation client and the join client over it. Answers that do not check
out are made by a resident whose answers are altered on the way, as a
lying or broken server's would be.
"""

from __future__ import annotations

import contextlib
import sqlite3
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from _resident import start_resident

from ranvier.core.context import EventContext, event_to_persist
from ranvier.core.creation import EventCreator
from ranvier.core.ingest import RoomLocks
from ranvier.core.joins import RemoteJoin, RemoteJoiner, RemoteJoinError
from ranvier.errors import MatrixError
from ranvier.federation.membership import FederationJoinClient, add_membership_routes
from ranvier.federation.queries import add_query_routes
from ranvier.federation.room_access import PARTIAL_STATE_ERRCODE
from ranvier.federation.transport.client import FederationHttpClient, FederationRequestError
from ranvier.federation.transport.server import FederationApp
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import compute_event_id, hash_and_sign_event
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import NOW_MS, KnownKeys, Pki, free_port, ingest, serve, ticking_clock

JOINER = "b.test"
BOB = "@bob:b.test"
MEMBER = "m.room.member"
V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


def seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


Alter = Callable[[dict[str, Any]], None]


class AlteringJoinClient:
    """The real join client, with each send_join answer altered by ``alter``
    on its way in (re-encoded, as a proxy would).
    """

    def __init__(self, client: FederationJoinClient, alter: Alter) -> None:
        self.client = client
        self.alter = alter

    async def make_join(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        return await self.client.make_join(destination, room_id, user_id, room_versions)

    async def send_join(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        omit_members: bool = False,
    ) -> bytes:
        answer = msgspec.json.decode(
            await self.client.send_join(
                destination, room_id, event_id, event, omit_members=omit_members
            )
        )
        self.alter(answer)
        return msgspec.json.encode(answer)


@dataclass
class World:
    resident_name: str
    resident_storage: Storage
    creator: EventCreator
    alice: str
    room_id: str
    joiner_storage: Storage
    http: FederationHttpClient
    keys: KnownKeys
    joiner_key: SigningKey
    pki: Pki
    tmp_path: Path

    def joiner(self, client: Any = None, **kwargs: Any) -> RemoteJoiner:
        """A joiner asking for full state, unless told otherwise."""
        clock = ticking_clock(NOW_MS + 10_000)
        kwargs.setdefault("partial_state", False)
        return RemoteJoiner(
            server_name=JOINER,
            signing_key=self.joiner_key,
            client=client or FederationJoinClient(self.http),
            keys=self.keys,
            store=self.joiner_storage,
            persister=self.joiner_storage,
            clock=clock,
            **kwargs,
        )

    def altered(self, alter: Alter, *, partial_state: bool = False) -> RemoteJoiner:
        return self.joiner(
            AlteringJoinClient(FederationJoinClient(self.http), alter),
            partial_state=partial_state,
        )

    async def join(self, joiner: RemoteJoiner | None = None) -> RemoteJoin:
        return await (joiner or self.joiner()).join_remote_room(
            BOB, self.room_id, [self.resident_name]
        )

    async def nothing_written(self) -> bool:
        return await self.joiner_storage.get_room_version(self.room_id) is None


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = Pki.create(tmp_path)
    return pki.server_context(), pki.client_context()


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    pki = Pki.create(tmp_path)
    client_context = pki.client_context()
    keys = KnownKeys()
    joiner_key = generate_signing_key("b1")
    keys.add(JOINER, joiner_key)
    resident = await start_resident(nursery, tmp_path, pki, keys)
    resident_name, resident_storage, creator = resident.name, resident.storage, resident.creator
    alice = f"@alice:{resident_name}"
    room_id = await creator.create_room(alice, preset="public_chat", topic="the topic")
    await creator.send_event(alice, room_id, "m.room.message", {"body": "hi"})

    joiner_storage = Storage(tmp_path / "joiner.db", synchronous="NORMAL")
    await nursery.start(joiner_storage.run)
    http = FederationHttpClient(JOINER, joiner_key, ssl_context=client_context)
    await nursery.start(http.run)
    return World(
        resident_name,
        resident_storage,
        creator,
        alice,
        room_id,
        joiner_storage,
        http,
        keys,
        joiner_key,
        pki,
        tmp_path,
    )


async def test_join_writes_the_room_as_the_resident_has_it(world: World) -> None:
    joined = await world.join()
    joiner, resident = world.joiner_storage, world.resident_storage

    assert joined.via == world.resident_name
    assert joined.room_version.identifier == "12"
    assert joined.servers_in_room == {world.resident_name}
    assert joined.event.sender == BOB
    assert joined.event.membership == "join"
    # The resident wrote the join too, and both see the same room now.
    assert await resident.get_event(joined.event.event_id) is not None
    assert await joiner.get_current_state_ids(world.room_id) == (
        await resident.get_current_state_ids(world.room_id)
    )
    assert await joiner.get_forward_extremities(world.room_id) == {joined.event.event_id}
    # The state came as outliers, the join in the DAG with that state before it.
    rows = await joiner.get_events(joined.state_ids.values())
    assert set(rows) == set(joined.state_ids.values())
    assert all(row.outlier for row in rows.values())
    groups = await joiner.get_event_state_groups(joined.event.event_id)
    assert groups is not None
    assert await joiner.get_state_ids(groups.before) == joined.state_ids
    stored = await joiner.get_event(joined.event.event_id)
    assert stored is not None
    assert not stored.outlier
    assert stored.json == joined.event.raw
    assert set(joined.event.signatures) == {JOINER, world.resident_name}


async def test_join_moves_past_a_server_that_cannot_be_reached(world: World) -> None:
    dead = f"127.0.0.1:{free_port()}"
    joined = await world.joiner().join_remote_room(
        BOB, world.room_id, [dead, JOINER, world.resident_name]
    )
    assert joined.via == world.resident_name


async def test_join_moves_past_a_server_that_does_not_know_the_room(
    world: World, nursery: trio.Nursery
) -> None:
    """A server named first that answers make_join with 404 M_NOT_FOUND, as
    one not in the room does, is passed over for the next one named."""
    elsewhere = world.tmp_path / "elsewhere"
    elsewhere.mkdir()
    stranger = await start_resident(nursery, elsewhere, world.pki, world.keys)
    joined = await world.joiner().join_remote_room(
        BOB, world.room_id, [stranger.name, world.resident_name]
    )
    assert joined.via == world.resident_name
    assert await stranger.storage.get_room_version(world.room_id) is None
    assert await world.resident_storage.get_event(joined.event.event_id) is not None


async def test_no_server_left_to_try(world: World) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(RemoteJoinError) as caught:
        await world.joiner().join_remote_room(BOB, world.room_id, [dead, JOINER])
    assert [server for server, _ in caught.value.failures] == [dead]
    assert caught.value.http_status == 502
    with pytest.raises(RemoteJoinError):
        await world.joiner().join_remote_room(BOB, world.room_id, [])
    assert await world.nothing_written()


async def test_a_banned_user_is_refused_by_the_room(world: World) -> None:
    await world.creator.ban(world.alice, world.room_id, BOB)
    with pytest.raises(MatrixError) as caught:
        await world.join()
    assert (caught.value.http_status, caught.value.errcode) == (403, "M_FORBIDDEN")
    assert await world.nothing_written()


async def test_a_room_of_a_version_not_offered(world: World) -> None:
    with pytest.raises(MatrixError) as caught:
        await world.join(world.joiner(room_versions=["10", "11"]))
    assert caught.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    assert caught.value.extra["room_version"] == "12"
    assert await world.nothing_written()


def _event_of_type(answer: dict[str, Any], event_type: str) -> dict[str, Any]:
    return next(e for e in answer["state"] if e["type"] == event_type)


def _break_signature(answer: dict[str, Any]) -> None:
    # Every copy: the state's events are in the auth chain too.
    for event in [*answer["state"], *answer["auth_chain"]]:
        if event["type"] == "m.room.join_rules":
            for by_key in event["signatures"].values():
                for name in by_key:
                    by_key[name] = "A" * 86


def _drop_power_levels(answer: dict[str, Any]) -> None:
    for events in (answer["state"], answer["auth_chain"]):
        events[:] = [e for e in events if e["type"] != "m.room.power_levels"]


def _other_event_returned(answer: dict[str, Any]) -> None:
    answer["event"] = _event_of_type(answer, "m.room.join_rules")


def _members_omitted(answer: dict[str, Any]) -> None:
    answer["members_omitted"] = True


def _state_of_another_room(answer: dict[str, Any]) -> None:
    event = _event_of_type(answer, "m.room.topic")
    event["room_id"] = "!" + "A" * 43


def _state_not_json(answer: dict[str, Any]) -> None:
    answer["state"] = "nothing"


def _no_create_event(answer: dict[str, Any]) -> None:
    answer["state"] = [e for e in answer["state"] if e["type"] != "m.room.create"]


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (_break_signature, "not validly signed"),
        (_drop_power_levels, "not authorised"),
        (_other_event_returned, "not our join"),
        (_members_omitted, "omits members"),
        (_state_of_another_room, "another room"),
        (_state_not_json, "not shaped"),
        (_no_create_event, "no m.room.create"),
    ],
)
async def test_an_answer_that_does_not_check_out_leaves_nothing(
    world: World, alter: Alter, reason: str
) -> None:
    with pytest.raises(RemoteJoinError) as caught:
        await world.join(world.altered(alter))
    ((server, message),) = caught.value.failures
    assert server == world.resident_name
    assert reason in message
    assert await world.nothing_written()


def _no_signatures(event: dict[str, Any]) -> None:
    event["signatures"] = {}


def _bad_signatures(event: dict[str, Any]) -> None:
    for by_key in event["signatures"].values():
        for name in by_key:
            by_key[name] = "A" * 86


def _unknown_key(event: dict[str, Any]) -> None:
    for server, by_key in event["signatures"].items():
        event["signatures"][server] = {f"{name}x": value for name, value in by_key.items()}


def _every_copy(answer: dict[str, Any], event_id: str, alter: Alter) -> None:
    """``alter`` each copy of the event in the answer (state and auth chain)."""
    copies = [
        event
        for event in [*answer["state"], *answer["auth_chain"]]
        if compute_event_id(event, "12") == event_id
    ]
    assert copies
    for event in copies:
        alter(event)


@pytest.mark.parametrize("unsign", [_no_signatures, _bad_signatures, _unknown_key])
async def test_a_state_event_not_validly_signed_is_dropped_and_the_join_goes_on(
    world: World, unsign: Alter
) -> None:
    """An event the join does not rest on, failing its signature checks, is
    dropped as the spec says of any such event; the join still succeeds."""
    name_id = await world.creator.send_event(
        world.alice, world.room_id, "m.room.name", {"name": "unsigned"}, state_key=""
    )

    joined = await world.join(world.altered(lambda answer: _every_copy(answer, name_id, unsign)))

    assert ("m.room.name", "") not in joined.state_ids
    assert ("m.room.topic", "") in joined.state_ids
    assert await world.joiner_storage.get_event(name_id) is None
    assert await world.joiner_storage.get_event(joined.event.event_id) is not None


async def test_an_event_citing_one_not_validly_signed_is_rejected_and_the_join_goes_on(
    world: World,
) -> None:
    """Carol's leave cites her join, whose signature is broken: both go, and
    the state the join is written with has no membership of hers."""
    carol = f"@carol:{world.resident_name}"
    carol_join = await world.creator.send_event(
        carol, world.room_id, MEMBER, {"membership": "join"}, state_key=carol
    )
    carol_leave = await world.creator.send_event(
        carol, world.room_id, MEMBER, {"membership": "leave"}, state_key=carol
    )

    joined = await world.join(
        world.altered(lambda answer: _every_copy(answer, carol_join, _bad_signatures))
    )

    assert (MEMBER, carol) not in joined.state_ids
    stored = await world.joiner_storage.get_events([carol_join, carol_leave])
    assert stored == {}
    state = await world.joiner_storage.get_current_state_ids(world.room_id)
    assert state[(MEMBER, BOB)] == joined.event.event_id


async def test_an_event_whose_content_was_altered_is_kept_redacted(world: World) -> None:
    def change_topic(answer: dict[str, Any]) -> None:
        _event_of_type(answer, "m.room.topic")["content"]["topic"] = "a lie"

    joined = await world.join(world.altered(change_topic))
    topic_id = joined.state_ids[("m.room.topic", "")]
    row = await world.joiner_storage.get_event(topic_id)
    assert row is not None
    stored = msgspec.json.decode(row.json)
    assert stored["content"] == {}
    resident_row = await world.resident_storage.get_event(topic_id)
    assert resident_row is not None
    assert stored == redact(msgspec.json.decode(resident_row.json), "12")


async def test_a_template_for_someone_else_is_not_signed(world: World) -> None:
    class WrongTemplate(FederationJoinClient):
        async def make_join(
            self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
        ) -> Any:
            answer = await super().make_join(destination, room_id, user_id, room_versions)
            answer["event"]["state_key"] = "@mallory:b.test"
            return answer

    with pytest.raises(RemoteJoinError) as caught:
        await world.join(world.joiner(WrongTemplate(world.http)))
    assert "state_key" in caught.value.failures[0][1]
    assert await world.nothing_written()
    # The resident never saw a join.
    state = await world.resident_storage.get_current_state_ids(world.room_id)
    assert (MEMBER, BOB) not in state


async def test_a_templates_origin_is_not_copied_into_the_join(world: World) -> None:
    """Spec v1.12: PDUs have no ``origin``. A resident that still puts one
    in its template (naming itself) does not get it into our join."""

    class TemplateWithOrigin(FederationJoinClient):
        async def make_join(
            self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
        ) -> Any:
            answer = await super().make_join(destination, room_id, user_id, room_versions)
            answer["event"]["origin"] = destination
            return answer

    joined = await world.join(world.joiner(TemplateWithOrigin(world.http)))
    assert "origin" not in joined.event.json
    row = await world.resident_storage.get_event(joined.event.event_id)
    assert row is not None
    assert b'"origin"' not in row.json


async def test_only_local_users_join(world: World) -> None:
    with pytest.raises(MatrixError) as caught:
        await world.joiner().join_remote_room(world.alice, world.room_id, [world.resident_name])
    assert caught.value.errcode == "M_INVALID_PARAM"


async def test_joined_room_takes_events_after_the_join(world: World) -> None:
    """The joiner's copy works as a room: an event after the join has its
    context from the join's state and passes the auth checks."""
    joined = await world.join()
    event_id = await world.creator.send_event(
        world.alice, world.room_id, "m.room.message", {"body": "welcome bob"}
    )
    row = await world.resident_storage.get_event(event_id)
    assert row is not None
    message = Pdu.from_json(row.json, "12")
    assert message.prev_event_ids == (joined.event.event_id,)
    outcome = await ingest(world.joiner_storage, message)
    assert outcome.failure is None
    assert await world.joiner_storage.get_forward_extremities(world.room_id) == {event_id}


async def test_many_state_events_are_checked_in_one_go(world: World) -> None:
    """A room with a few hundred members: the join still checks every one."""
    for index in range(150):
        await world.creator.send_event(
            world.alice, world.room_id, "m.room.custom", {"n": index}, state_key=str(index)
        )
    joined = await world.join()
    assert len(joined.state_ids) > 150


async def test_the_join_is_written_under_the_rooms_lock(world: World) -> None:
    lock = trio.Lock()
    held_for: list[str] = []
    wanted = trio.Event()

    @contextlib.asynccontextmanager
    async def hold(room_id: str) -> AsyncIterator[None]:
        wanted.set()
        async with lock:
            held_for.append(room_id)
            yield

    joined: list[RemoteJoin] = []

    async def join() -> None:
        joined.append(await world.join(world.joiner(room_lock=hold)))

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        nursery.start_soon(join)
        with trio.fail_after(10):
            await wanted.wait()
        await trio.testing.wait_all_tasks_blocked()
        # The handshake needed no lock: the resident has the join already.
        state = await world.resident_storage.get_current_state_ids(world.room_id)
        assert (MEMBER, BOB) in state
        assert not joined
        assert await world.nothing_written()
        lock.release()
    assert held_for == [world.room_id]
    assert await world.joiner_storage.get_event(joined[0].event.event_id) is not None


# --- Partial-state joins between two real servers --------------------------------
#
# Both sides are servers on loopback HTTPS with storage of their own, the
# membership and query routes, and a signed client: the resident holds the
# room, the joiner joins it with partial state and then answers other
# servers about it. A big room's members are servers of their own
# (m0.test ... m9.test), never contacted, whose keys both sides know.

MEMBER_SERVERS = tuple(f"m{index}.test" for index in range(10))


@dataclass
class Side:
    name: str
    storage: Storage
    key: SigningKey
    http: FederationHttpClient
    locks: RoomLocks
    db_path: Path


@dataclass
class SendJoinAsked:
    omit_members: bool
    body: bytes


class RecordingJoinClient:
    """The real join client, keeping each send_join's question and answer.

    ``full_state`` asks for the full state whatever the joiner wants, as
    against a resident that does not know ``omit_members``.
    """

    def __init__(self, http: FederationHttpClient, *, full_state: bool = False) -> None:
        self.client = FederationJoinClient(http)
        self.full_state = full_state
        self.asked: list[SendJoinAsked] = []

    async def make_join(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        return await self.client.make_join(destination, room_id, user_id, room_versions)

    async def send_join(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        omit_members: bool = False,
    ) -> bytes:
        omit_members = omit_members and not self.full_state
        body = await self.client.send_join(
            destination, room_id, event_id, event, omit_members=omit_members
        )
        self.asked.append(SendJoinAsked(omit_members, body))
        return body


@dataclass
class Pair:
    resident: Side
    joiner: Side
    keys: KnownKeys
    creator: EventCreator
    member_keys: dict[str, SigningKey]

    @property
    def alice(self) -> str:
        return f"@alice:{self.resident.name}"

    def local(self, name: str) -> str:
        return f"@{name}:{self.joiner.name}"

    def remote_joiner(self, client: Any = None, **kwargs: Any) -> RemoteJoiner:
        clock = ticking_clock(NOW_MS + 10_000)
        kwargs.setdefault("room_lock", self.joiner.locks.hold)
        return RemoteJoiner(
            server_name=self.joiner.name,
            signing_key=self.joiner.key,
            client=client or FederationJoinClient(self.joiner.http),
            keys=self.keys,
            store=self.joiner.storage,
            persister=self.joiner.storage,
            clock=clock,
            **kwargs,
        )

    async def join(self, name: str, room_id: str, client: Any = None) -> RemoteJoin:
        joiner = self.remote_joiner(client)
        return await joiner.join_remote_room(self.local(name), room_id, [self.resident.name])

    async def add_members(self, room_id: str, count: int) -> list[Pdu]:
        """``count`` users of the member servers joined to the resident's room,
        written in one request with a state group each, as cheaply as the
        room can be grown with every state right.
        """
        storage = self.resident.storage
        (prev,) = await storage.get_forward_extremities(room_id)
        prev_row = await storage.get_event(prev)
        groups = await storage.get_event_state_groups(prev)
        assert prev_row is not None
        assert groups is not None
        state = await storage.get_state_ids(groups.after)
        auth = [state[("m.room.power_levels", "")], state[("m.room.join_rules", "")]]
        group, depth, ts = groups.after, prev_row.depth, prev_row.origin_server_ts
        rows = []
        members = []
        for index in range(count):
            server = MEMBER_SERVERS[index % len(MEMBER_SERVERS)]
            user = f"@u{index}:{server}"
            depth, ts = depth + 1, ts + 1
            fields = {
                "type": MEMBER,
                "state_key": user,
                "sender": user,
                "room_id": room_id,
                "content": {"membership": "join"},
                "prev_events": [prev],
                "auth_events": auth,
                "depth": depth,
                "origin_server_ts": ts,
            }
            signed = hash_and_sign_event(fields, "12", server, self.member_keys[server])
            event = Pdu.from_json(signed, "12")
            after = await storage.store_state_group(
                room_id, group, {(MEMBER, user): event.event_id}
            )
            context = EventContext(state_group_before=group, state_group_after=after)
            rows.append(event_to_persist(event, context))
            members.append(event)
            group, prev = after, event.event_id
        await storage.persist_events(rows)
        return members

    async def membership(self, side: Side, room_id: str, user: str) -> str | None:
        event_id = (await side.storage.get_current_state_ids(room_id)).get((MEMBER, user))
        row = None if event_id is None else await side.storage.get_event(event_id)
        version = await side.storage.get_room_version(room_id)
        assert version is not None or row is None
        return (
            None if row is None or version is None else Pdu.from_json(row.json, version).membership
        )

    async def resync(self, room_id: str) -> None:
        """What the un-partial-state task does when it is done, cut short:
        every partial-state event given its (here: the same) state as full,
        then the room's partial state cleared.
        """
        storage = self.joiner.storage
        for event_id in await storage.get_partial_state_events(room_id):
            groups = await storage.get_event_state_groups(event_id)
            assert groups is not None
            await storage.update_state_for_partial_event(event_id, groups.before, groups.after)
        assert await storage.clear_partial_state(room_id)


@pytest.fixture
async def pair(tmp_path: Path, nursery: trio.Nursery) -> Pair:
    server_context, client_context = tls_contexts(tmp_path)
    keys = KnownKeys()
    clock = ticking_clock(NOW_MS)

    async def side(label: str) -> Side:
        db_path = tmp_path / f"{label}.db"
        storage = Storage(db_path, synchronous="NORMAL")
        await nursery.start(storage.run)
        app = FederationApp(server_name="127.0.0.1", key_lookup=keys)
        port = await serve(nursery, app, server_context)
        name = app.server_name = f"127.0.0.1:{port}"
        key = generate_signing_key(label)
        keys.add(name, key)
        http = FederationHttpClient(name, key, ssl_context=client_context)
        await nursery.start(http.run)
        locks = RoomLocks()
        add_membership_routes(
            app.router,
            server_name=name,
            signing_key=key,
            store=storage,
            persister=storage,
            keys=keys,
            room_lock=locks.hold,
            clock=clock,
        )
        add_query_routes(app.router, server_name=name, store=storage)
        return Side(name, storage, key, http, locks, db_path)

    resident, joiner = await side("resident"), await side("joiner")
    member_keys = {server: generate_signing_key("m1") for server in MEMBER_SERVERS}
    for server, key in member_keys.items():
        keys.add(server, key)
    creator = EventCreator(
        server_name=resident.name,
        signing_key=resident.key,
        store=resident.storage,
        persister=resident.storage,
        room_locks=resident.locks,
        clock=clock,
    )
    return Pair(resident, joiner, keys, creator, member_keys)


def decoded(body: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = msgspec.json.decode(body)
    return answer


async def test_a_big_room_is_joined_with_partial_state(pair: Pair) -> None:
    room_id = await pair.creator.create_room(
        pair.alice, preset="public_chat", name="Big room", topic="many people"
    )
    members = await pair.add_members(room_id, 2_000)
    client = RecordingJoinClient(pair.joiner.http)
    joined = await pair.join("bob", room_id, client)
    joiner, resident = pair.joiner.storage, pair.resident.storage
    join_id = joined.event.event_id

    # The room is partial here, with what the resident said of its servers.
    assert joined.partial_state
    assert await joiner.is_partial_state_room(room_id)
    record = (await joiner.get_partial_state_rooms())[room_id]
    assert (record.join_event_id, record.joined_via) == (join_id, pair.resident.name)
    assert record.servers == {pair.resident.name, *MEMBER_SERVERS}
    assert joined.servers_in_room == record.servers
    # The join has the resident's state before it, less every membership
    # (a named room keeps none), and partial state.
    resident_groups = await resident.get_event_state_groups(join_id)
    groups = await joiner.get_event_state_groups(join_id)
    assert resident_groups is not None
    assert groups is not None
    full_state = await resident.get_state_ids(resident_groups.before)
    assert len(full_state) == 2_001 + 7
    assert await joiner.get_state_ids(groups.before) == {
        key: event_id for key, event_id in full_state.items() if key[0] != MEMBER
    }
    assert await joiner.get_partial_state_event_ids([join_id]) == {join_id}
    assert await joiner.get_forward_extremities(room_id) == {join_id}
    assert await pair.membership(pair.joiner, room_id, pair.local("bob")) == "join"
    assert not await joiner.get_events([event.event_id for event in members])

    # What went over the wire: no membership in the state, a fraction of
    # the full answer (asked again here for the same join).
    (asked,) = client.asked
    assert asked.omit_members
    answer = decoded(asked.body)
    assert answer["members_omitted"] is True
    assert [e for e in answer["state"] if e["type"] == MEMBER] == []
    full = await FederationJoinClient(pair.joiner.http).send_join(
        pair.resident.name, room_id, join_id, joined.event.json
    )
    assert len([e for e in decoded(full)["state"] if e["type"] == MEMBER]) == 2_001
    assert len(full) > 50 * len(asked.body)


async def test_an_unnamed_room_is_joined_with_its_heroes(pair: Pair) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat")
    members = await pair.add_members(room_id, 8)
    joined = await pair.join("bob", room_id)
    assert joined.partial_state
    kept = {key[1] for key in joined.state_ids if key[0] == MEMBER}
    assert kept == {pair.alice, *(str(event.state_key) for event in members[:4])}
    groups = await pair.joiner.storage.get_event_state_groups(joined.event.event_id)
    assert groups is not None
    assert await pair.joiner.storage.get_state_ids(groups.before) == joined.state_ids


async def test_a_restricted_room_is_joined_with_partial_state(pair: Pair) -> None:
    """The join cites alice, who vouches for it; the partial state leaves
    her membership out, so the join is checked with it taken from the
    join's own auth events."""
    first = await pair.creator.create_room(pair.alice, preset="public_chat", name="First")
    await pair.join("bob", first)
    rules = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": first}]}
    room_id = await pair.creator.create_room(
        pair.alice,
        preset="public_chat",
        name="Restricted",
        room_version="10",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": rules}],
    )
    joined = await pair.join("bob", room_id)
    assert joined.partial_state
    assert joined.room_version.identifier == "10"
    assert joined.event.content["join_authorised_via_users_server"] == pair.alice
    assert (MEMBER, pair.alice) not in joined.state_ids
    alice_join = (await pair.resident.storage.get_current_state_ids(room_id))[(MEMBER, pair.alice)]
    assert alice_join in joined.event.auth_event_ids
    assert await pair.membership(pair.joiner, room_id, pair.local("bob")) == "join"


async def test_a_resident_that_answers_with_full_state_gives_a_full_join(pair: Pair) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Full")
    await pair.add_members(room_id, 20)
    client = RecordingJoinClient(pair.joiner.http, full_state=True)
    joined = await pair.join("bob", room_id, client)
    joiner = pair.joiner.storage
    assert [asked.omit_members for asked in client.asked] == [False]
    assert not joined.partial_state
    assert not await joiner.is_partial_state_room(room_id)
    assert await joiner.get_partial_state_event_ids([joined.event.event_id]) == frozenset()
    assert await joiner.get_current_state_ids(room_id) == (
        await pair.resident.storage.get_current_state_ids(room_id)
    )
    assert joined.servers_in_room == {pair.resident.name, *MEMBER_SERVERS}


def _break_join_rules_signature(answer: dict[str, Any]) -> None:
    for event in answer["state"]:
        if event["type"] == "m.room.join_rules":
            for by_key in event["signatures"].values():
                for name in by_key:
                    by_key[name] = "A" * 86


def _drop_alices_join(answer: dict[str, Any]) -> None:
    # Power levels cite it; the state omits it, so only the chain has it.
    answer["auth_chain"] = [e for e in answer["auth_chain"] if e["type"] != MEMBER]


def _no_servers_in_room(answer: dict[str, Any]) -> None:
    del answer["servers_in_room"]


def _not_a_server(answer: dict[str, Any]) -> None:
    answer["servers_in_room"].append("not a server!")


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (_break_join_rules_signature, "not validly signed"),
        (_drop_alices_join, "is not authorised"),
        (_no_servers_in_room, "no servers_in_room"),
        (_not_a_server, "not a server name"),
    ],
)
async def test_a_partial_answer_that_does_not_check_out_leaves_nothing(
    pair: Pair, alter: Alter, reason: str
) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    await pair.add_members(room_id, 5)
    client = AlteringJoinClient(FederationJoinClient(pair.joiner.http), alter)
    with pytest.raises(RemoteJoinError) as caught:
        await pair.join("bob", room_id, client)
    ((server, message),) = caught.value.failures
    assert server == pair.resident.name
    assert reason in message
    joiner = pair.joiner.storage
    assert await joiner.get_room_version(room_id) is None
    assert not await joiner.is_partial_state_room(room_id)
    assert await joiner.get_partial_state_rooms() == {}


async def test_a_join_whose_write_fails_leaves_no_partial_room(pair: Pair) -> None:
    """The partial-state row is written, then writing the join fails (a
    trigger in the joiner's database refuses it): the row is removed."""
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    bob = pair.local("bob")
    with contextlib.closing(sqlite3.connect(pair.joiner.db_path)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_bob BEFORE INSERT ON events"
            f" WHEN NEW.sender = '{bob}' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
        conn.commit()
    with pytest.raises(sqlite3.IntegrityError, match="refused by a trigger"):
        await pair.join("bob", room_id)
    joiner = pair.joiner.storage
    assert not await joiner.is_partial_state_room(room_id)
    assert await joiner.get_partial_state_rooms() == {}
    assert await joiner.get_forward_extremities(room_id) == frozenset()
    assert await pair.membership(pair.joiner, room_id, bob) is None

    with contextlib.closing(sqlite3.connect(pair.joiner.db_path)) as conn:
        conn.execute("DROP TRIGGER refuse_bob")
        conn.commit()
    joined = await pair.join("bob", room_id)
    assert joined.partial_state
    assert await pair.membership(pair.joiner, room_id, bob) == "join"


async def test_a_partial_join_that_never_completed_is_replaced(pair: Pair) -> None:
    """A crash between the partial-state row and the join's write leaves a
    partial room without its join; the next join starts it afresh."""
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    joiner = pair.joiner.storage
    await joiner.store_partial_join(room_id, "12", "$lost", pair.resident.name, [])
    joined = await pair.join("bob", room_id)
    assert joined.partial_state
    record = (await joiner.get_partial_state_rooms())[room_id]
    assert record.join_event_id == joined.event.event_id


async def test_a_second_join_into_a_partial_room_keeps_what_is_known(pair: Pair) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    await pair.add_members(room_id, 10)
    bob = await pair.join("bob", room_id)
    carol = await pair.join("carol", room_id)
    joiner = pair.joiner.storage
    # Carol's join follows bob's, whose membership the resident's partial
    # answer leaves out: her join's state comes from his here.
    assert carol.event.prev_event_ids == (bob.event.event_id,)
    assert carol.partial_state
    assert await joiner.get_partial_state_event_ids([carol.event.event_id]) == {
        carol.event.event_id
    }
    assert await pair.membership(pair.joiner, room_id, pair.local("bob")) == "join"
    assert await pair.membership(pair.joiner, room_id, pair.local("carol")) == "join"
    record = (await joiner.get_partial_state_rooms())[room_id]
    assert record.join_event_id == bob.event.event_id


async def _join_while_resyncing(
    pair: Pair, room_id: str, client: RecordingJoinClient
) -> RemoteJoin:
    """Carol's join, while the un-partial-state task holds the room's lock
    and finishes the room: her join is written only after."""
    waiting = trio.Event()

    @contextlib.asynccontextmanager
    async def watched(room: str) -> AsyncIterator[None]:
        waiting.set()
        async with pair.joiner.locks.hold(room):
            yield

    joiner = pair.remote_joiner(client, room_lock=watched)
    joined: list[RemoteJoin] = []

    async def join() -> None:
        joined.append(
            await joiner.join_remote_room(pair.local("carol"), room_id, [pair.resident.name])
        )

    # The lock is let go before the nursery waits for the join.
    async with trio.open_nursery() as nursery, pair.joiner.locks.hold(room_id):
        nursery.start_soon(join)
        with trio.fail_after(10):
            await waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert not joined
        assert client.asked[0].omit_members
        await pair.resync(room_id)
    (result,) = joined
    return result


async def test_a_join_never_makes_a_resynced_room_partial_again(pair: Pair) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    await pair.add_members(room_id, 10)
    await pair.join("bob", room_id)
    client = RecordingJoinClient(pair.joiner.http)
    carol = await _join_while_resyncing(pair, room_id, client)

    joiner = pair.joiner.storage
    # The partial answer was placed on the state here, now full.
    assert [asked.omit_members for asked in client.asked] == [True]
    assert not carol.partial_state
    assert not await joiner.is_partial_state_room(room_id)
    assert await joiner.get_partial_state_event_ids([carol.event.event_id]) == frozenset()
    assert await pair.membership(pair.joiner, room_id, pair.local("bob")) == "join"
    assert await pair.membership(pair.joiner, room_id, pair.local("carol")) == "join"
    # A room joined with full state is not asked for partial state again.
    dave = await pair.join("dave", room_id, client)
    assert [asked.omit_members for asked in client.asked] == [True, False]
    assert not dave.partial_state
    assert not await joiner.is_partial_state_room(room_id)


async def test_a_join_the_full_state_here_cannot_place_asks_again(pair: Pair) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    await pair.add_members(room_id, 10)
    await pair.join("bob", room_id)
    # A message the joiner has not received: carol's join will follow it.
    message_id = await pair.creator.send_event(
        pair.alice, room_id, "m.room.message", {"body": "unseen"}
    )
    client = RecordingJoinClient(pair.joiner.http)
    carol = await _join_while_resyncing(pair, room_id, client)

    joiner = pair.joiner.storage
    assert carol.event.prev_event_ids == (message_id,)
    # The same join sent again, asking for the full state this time.
    assert [asked.omit_members for asked in client.asked] == [True, False]
    assert not carol.partial_state
    assert not await joiner.is_partial_state_room(room_id)
    assert await joiner.get_partial_state_event_ids([carol.event.event_id]) == frozenset()
    assert await pair.membership(pair.joiner, room_id, pair.local("carol")) == "join"
    assert len([key for key in carol.state_ids if key[0] == MEMBER]) == 12  # alice, 10, bob


async def test_a_partial_room_sends_other_servers_elsewhere(pair: Pair) -> None:
    room_id = await pair.creator.create_room(pair.alice, preset="public_chat", name="Named")
    joined = await pair.join("bob", room_id)
    http, joiner = pair.resident.http, pair.joiner.name
    room, eve = seg(room_id), seg(f"@eve:{pair.resident.name}")
    event = seg(joined.event.event_id)

    for method, path, ver in [
        ("GET", f"{V1}/make_join/{room}/{eve}", ["12"]),
        ("PUT", f"{V2}/send_join/{room}/{event}", None),
        ("GET", f"{V1}/make_leave/{room}/{eve}", None),
        ("PUT", f"{V2}/send_leave/{room}/{event}", None),
        ("GET", f"{V1}/make_knock/{room}/{eve}", ["12"]),
        ("PUT", f"{V1}/send_knock/{room}/{event}", None),
    ]:
        with pytest.raises(FederationRequestError) as caught:
            await http.request(method, joiner, path, query=None if ver is None else {"ver": ver})
        assert (caught.value.status, caught.value.errcode) == (404, "M_NOT_FOUND"), path
    for path, query in [
        (f"{V1}/state_ids/{room}", {"event_id": joined.event.event_id}),
        (f"{V1}/state/{room}", {"event_id": joined.event.event_id}),
        (f"{V1}/event_auth/{room}/{event}", None),
    ]:
        with pytest.raises(FederationRequestError) as caught:
            await http.request("GET", joiner, path, query=query)
        assert (caught.value.status, caught.value.errcode) == (403, PARTIAL_STATE_ERRCODE), path
