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
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
import trustme

from ranvier.core.creation import EventCreator
from ranvier.core.joins import RemoteJoin, RemoteJoiner, RemoteJoinError
from ranvier.errors import InvalidSignatureError, MatrixError
from ranvier.federation.membership import FederationJoinClient, add_membership_routes
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.server import FederationApp
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import SigningKey, VerifyKeyLike, generate_signing_key, key_id
from ranvier.storage import Storage

JOINER = "b.test"
BOB = "@bob:b.test"
NOW_MS = 1_700_000_000_000
MEMBER = "m.room.member"


class Keys:
    """Servers' verify keys from a dict: both servers' key source."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], VerifyKeyLike] = {}

    def add(self, server_name: str, key: SigningKey) -> None:
        self.keys[(server_name, key_id(key))] = key.verify_key

    async def get_verify_key(
        self, server_name: str, key_id: str, *, at_ts: int | None = None
    ) -> VerifyKeyLike:
        await trio.lowlevel.checkpoint()
        found = self.keys.get((server_name, key_id))
        if found is None:
            raise InvalidSignatureError(f"{server_name} has no key {key_id}")
        return found


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
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> bytes:
        answer = msgspec.json.decode(
            await self.client.send_join(destination, room_id, event_id, event)
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
    keys: Keys
    joiner_key: SigningKey

    def joiner(self, client: Any = None, **kwargs: Any) -> RemoteJoiner:
        clock = itertools.count(NOW_MS + 10_000)
        return RemoteJoiner(
            server_name=JOINER,
            signing_key=self.joiner_key,
            client=client or FederationJoinClient(self.http),
            keys=self.keys,
            store=self.joiner_storage,
            persister=self.joiner_storage,
            clock=lambda: next(clock),
            **kwargs,
        )

    def altered(self, alter: Alter) -> RemoteJoiner:
        return self.joiner(AlteringJoinClient(FederationJoinClient(self.http), alter))

    async def join(self, joiner: RemoteJoiner | None = None) -> RemoteJoin:
        return await (joiner or self.joiner()).join_remote_room(
            BOB, self.room_id, [self.resident_name]
        )

    async def nothing_written(self) -> bool:
        return await self.joiner_storage.get_room_version(self.room_id) is None


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    return server, client_ssl_context(ca_file=ca_file)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    server_context, client_context = tls_contexts(tmp_path)
    keys = Keys()
    joiner_key = generate_signing_key("b1")
    keys.add(JOINER, joiner_key)
    resident_key = generate_signing_key("a1")

    resident_storage = Storage(tmp_path / "resident.db", synchronous="NORMAL")
    await nursery.start(resident_storage.run)
    app = FederationApp(server_name="127.0.0.1", key_lookup=keys)
    port = await nursery.start(
        HttpListener(app, host="127.0.0.1", port=0, ssl_context=server_context).run
    )
    resident_name = app.server_name = f"127.0.0.1:{port}"
    keys.add(resident_name, resident_key)
    clock = itertools.count(NOW_MS)
    add_membership_routes(
        app.router,
        server_name=resident_name,
        signing_key=resident_key,
        store=resident_storage,
        persister=resident_storage,
        keys=keys,
        clock=lambda: next(clock),
    )
    creator = EventCreator(
        server_name=resident_name,
        signing_key=resident_key,
        store=resident_storage,
        persister=resident_storage,
        clock=lambda: next(clock),
    )
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


async def test_only_local_users_join(world: World) -> None:
    with pytest.raises(MatrixError) as caught:
        await world.joiner().join_remote_room(world.alice, world.room_id, [world.resident_name])
    assert caught.value.errcode == "M_INVALID_PARAM"


async def test_joined_room_takes_events_after_the_join(world: World) -> None:
    """The joiner's copy works as a room: an event after the join has its
    context from the join's state and passes the auth checks."""
    from _rooms import ingest

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
    start = trio.current_time()
    joined = await world.join()
    elapsed = trio.current_time() - start
    assert len(joined.state_ids) > 150
    assert elapsed < 10


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
