"""core.timestamps against real storage and a stand-in for the room's other
server: when the history held here has a gap where the nearest event should
be, the other server is asked, and the event it names is fetched and taken
in, behind the history held (older) or as a pulled event (newer).

The room is Bob's on remote.test: three messages before Alice (ours)
joined; here, the state at the join as outliers and the join. A message
Bob sent after the join has not reached us.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest
import trio

from ranvier.core.ingest import EventVerifier, FederationIngester
from ranvier.core.timestamps import EventsByTimestamp
from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import KnownKeys, RemoteRooms, RoomBuilder, ingest

OURS = "ours.test"
REMOTE = "remote.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"


class _OtherServer:
    """The remote's answers: its nearest event from what the builder holds,
    or a canned (possibly wrong) one; ``/event`` from :class:`RemoteRooms`.
    """

    def __init__(self, room: RoomBuilder, rooms: RemoteRooms) -> None:
        self.room = room
        self.rooms = rooms
        self.canned: tuple[str, int] | None = None
        self.asked: list[tuple[int, str]] = []

    async def timestamp_to_event(
        self, destination: str, room_id: str, ts: int, direction: Literal["b", "f"]
    ) -> tuple[str, int]:
        await trio.lowlevel.checkpoint()
        self.asked.append((ts, direction))
        if self.canned is not None:
            return self.canned
        events = [
            event
            for event in self.room.order
            if (event.origin_server_ts <= ts if direction == "b" else event.origin_server_ts >= ts)
        ]
        if not events:
            raise MatrixError("nothing", errcode="M_NOT_FOUND", http_status=404)
        pick = max if direction == "b" else min
        found = pick(events, key=lambda event: event.origin_server_ts)
        return found.event_id, found.origin_server_ts

    async def get_event(self, destination: str, event_id: str) -> bytes:
        return await self.rooms.get_event(destination, event_id)


class _Servers:
    async def joined_servers(self, room_id: str) -> frozenset[str]:
        await trio.lowlevel.checkpoint()
        return frozenset({OURS, REMOTE})


class World:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        keys = {server: generate_signing_key("k1") for server in (OURS, REMOTE)}
        self.room = RoomBuilder(creator=BOB, keys=keys)
        self.room.public_room()
        self.old = [self.room.message(BOB, f"old {n}") for n in range(3)]
        self.join = self.room.member(ALICE, "join")
        self.later = self.room.message(BOB, "later")
        rooms = RemoteRooms(self.room)
        self.remote = _OtherServer(self.room, rooms)
        self.rooms = rooms
        ingester = FederationIngester(
            store=storage,
            persister=storage,
            client=rooms,
            verifier=EventVerifier(KnownKeys(keys)),
        )
        self.lookup = EventsByTimestamp(
            server_name=OURS,
            store=storage.sync,
            timestamps=storage.timestamps,
            remote=self.remote,
            servers=_Servers(),
            versions=storage,
            ingester=ingester,
            backfill=storage.backfill,
        )

    async def write_ours(self) -> None:
        state = self.room.state_before(self.join.event_id)
        at_join = sorted((self.room.events[e] for e in state.values()), key=lambda e: e.depth)
        for event in at_join:
            await ingest(self.storage, event, outlier=True)
        await ingest(self.storage, self.join, state_ids_before=state)

    async def find(self, ts: int, direction: Literal["b", "f"]) -> str:
        answer = await self.lookup.find(ALICE, self.room.room_id, ts, direction)
        found = answer["origin_server_ts"]
        assert found <= ts if direction == "b" else found >= ts
        event_id: str = answer["event_id"]
        return event_id

    async def in_dag(self, events: Sequence[Pdu]) -> set[str]:
        stored = await self.storage.get_events([event.event_id for event in events])
        return {event_id for event_id, row in stored.items() if not row.outlier}


@pytest.fixture
async def world(storage: Storage) -> World:
    world = World(storage)
    await world.write_ours()
    return world


async def test_an_older_event_is_fetched_behind_the_history_held(world: World) -> None:
    tips = await world.storage.get_forward_extremities(world.room.room_id)
    old = world.old[1]
    assert await world.find(old.origin_server_ts, "b") == old.event_id
    assert await world.in_dag([old]) == {old.event_id}
    assert await world.storage.get_forward_extremities(world.room.room_id) == tips
    assert world.rooms.called("event")[0] == old.event_id


async def test_a_newer_event_missed_is_pulled_in(world: World) -> None:
    later = world.later
    assert await world.find(later.origin_server_ts, "f") == later.event_id
    assert await world.in_dag([later]) == {later.event_id}
    # Taken as a pulled event: it is the room's tip here now.
    assert await world.storage.get_forward_extremities(world.room.room_id) == {later.event_id}


async def test_a_nearer_event_held_here_is_not_replaced(world: World) -> None:
    # The join cites a prev event not held: it sits next to a gap, so the
    # remote is asked, and names the join itself, no nearer: it stands.
    join = world.join
    assert await world.find(join.origin_server_ts, "b") == join.event_id
    assert world.remote.asked == [(join.origin_server_ts, "b")]
    # Forwards from the last old message, the remote names the first, in
    # the wrong direction: it is not taken at its word.
    world.remote.canned = (world.old[0].event_id, world.old[0].origin_server_ts)
    assert await world.find(world.old[2].origin_server_ts, "f") == join.event_id
    assert world.rooms.called("event") == []


async def test_a_farther_event_is_not_fetched_and_an_unknown_one_is_not_taken(
    world: World,
) -> None:
    join = world.join
    ts = world.old[2].origin_server_ts
    # Backwards from the join, the remote names the first message: farther
    # than the join itself, so it is not even fetched.
    world.remote.canned = (world.old[0].event_id, world.old[0].origin_server_ts)
    assert await world.find(join.origin_server_ts, "b") == join.event_id
    # Backwards from the last old message nothing is held; the remote names
    # an event it cannot give: 404 stays 404.
    world.remote.canned = ("$nothing:remote.test", ts)
    with pytest.raises(MatrixError) as caught:
        await world.lookup.find(ALICE, world.room.room_id, ts, "b")
    assert (caught.value.http_status, caught.value.errcode) == (404, "M_NOT_FOUND")
    assert world.rooms.called("event") == ["$nothing:remote.test"]
