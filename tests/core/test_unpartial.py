"""The un-partial-state task against real storage.

A room lives in full at a resident: a second real Storage that took in
every event through core, and that the stand-in servers answer
``/state_ids``, ``/state`` and ``/event`` from (the servers are what a test
cannot start). Our storage holds the room as a partial join leaves it: the
non-member state and its auth chain as outliers, the room marked partial,
the join with the partial state, and later events taken in by federation
ingestion on partial state. After the resync, every event of ours must have
the state and verdict the resident gave it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _races import store_partial_join
from trio.testing import MockClock

from ranvier.core import compute_event_context, event_to_persist, run_auth_checks
from ranvier.core.ingest import EventVerifier, FederationIngester, RoomLocks
from ranvier.core.interfaces import (
    PartialStateStore,
    ResyncClient,
    RoomStateAtEvent,
    StateIdsAtEvent,
)
from ranvier.core.unpartial import ResyncStatus, UnpartialStater
from ranvier.errors import MatrixError, PartialStateConflictError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import EventToPersist, Storage
from ranvier.storage.records import PartialStateRoom, StoredEvent
from ranvier.testing import KnownKeys, RoomBuilder, ingest

OURS = "ours.test"
REMOTE = "remote.test"
THIRD = "third.test"
EVIL = "evil.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"
CAROL = f"@carol:{THIRD}"
MALLORY = f"@mallory:{EVIL}"
#: Members of the resident's server besides Bob: what a partial join leaves out.
CROWD = [f"@m{n}:{REMOTE}" for n in range(24)]


# --- The parts of other servers ---------------------------------------------------


def _unreachable(server: str) -> MatrixError:
    return MatrixError(f"{server}: connection refused", errcode="M_UNKNOWN", http_status=502)


class StandIn:
    """One server holding the whole room, as the resident's storage has it.

    ``down`` makes every request fail; ``garbage`` makes it serve events
    with broken signatures (``"signatures"``) or withhold the members it
    lists in ``/state_ids`` (``"missing"``); ``gate``, when set, holds every
    ``/state_ids`` until it is set, and ``state_gate`` every ``/state``.
    ``newest_first`` serves ``/state`` as
    one list, the newest events first, so that events come before their
    auth events. ``badly_signed`` names events served with broken
    signatures, whatever ``garbage`` says.
    """

    def __init__(self, name: str, room: RoomBuilder, resident: Storage) -> None:
        self.name = name
        self.room = room
        self.resident = resident
        self.down = False
        self.garbage: str | None = None
        self.gate: trio.Event | None = None
        self.newest_first = False
        self.badly_signed: set[str] = set()
        self.state_gate: trio.Event | None = None
        #: Requests answered.
        self.calls: list[tuple[str, str]] = []
        #: Requests made, answered or not, with the (mock) time of each.
        self.tried: list[tuple[str, str, float]] = []

    def _note(self, call: str, arg: str) -> None:
        self.tried.append((call, arg, trio.current_time()))
        if self.down:
            raise _unreachable(self.name)
        self.calls.append((call, arg))

    def called(self, name: str) -> list[str]:
        return [arg for call, arg in self.calls if call == name]

    def _served(self, event: Pdu) -> bytes:
        if self.garbage == "signatures" or event.event_id in self.badly_signed:
            broken = dict(event.json)
            broken["signatures"] = {
                server: dict.fromkeys(by_key, "A" * 86)
                for server, by_key in event.signatures.items()
            }
            return encode_canonical_json(broken)
        return event.raw

    def _withheld(self, event: Pdu) -> bool:
        return self.garbage == "missing" and event.type == "m.room.member"

    async def _state_before(self, event_id: str) -> tuple[list[str], list[str]]:
        groups = await self.resident.get_event_state_groups(event_id)
        if groups is None:
            raise MatrixError(f"no state at {event_id}", errcode="M_NOT_FOUND", http_status=404)
        state = sorted((await self.resident.get_state_ids(groups.before)).values())
        chain: set[str] = set()
        level = set(state)
        while level:
            level = {a for e in level for a in self.room.events[e].auth_event_ids} - chain
            chain |= level
        return state, sorted(chain)

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIdsAtEvent:
        self._note("state_ids", event_id)
        if self.gate is not None:
            await self.gate.wait()
        state, chain = await self._state_before(event_id)
        return StateIdsAtEvent(pdu_ids=tuple(state), auth_chain_ids=tuple(chain))

    async def get_state(self, destination: str, room_id: str, event_id: str) -> RoomStateAtEvent:
        if self.state_gate is not None:
            await self.state_gate.wait()
        self._note("state", event_id)
        state, chain = await self._state_before(event_id)
        events = self.room.events
        if self.newest_first:
            every = sorted((events[e] for e in {*state, *chain}), key=lambda e: -e.depth)
            return RoomStateAtEvent(pdus=tuple(e.raw for e in every), auth_chain=())
        return RoomStateAtEvent(
            pdus=tuple(self._served(events[e]) for e in state if not self._withheld(events[e])),
            auth_chain=tuple(
                self._served(events[e]) for e in chain if not self._withheld(events[e])
            ),
        )

    async def get_event(self, destination: str, event_id: str) -> bytes:
        await trio.lowlevel.checkpoint()
        self._note("event", event_id)
        event = self.room.events.get(event_id)
        if event is None or self._withheld(event):
            raise MatrixError(f"no event {event_id}", errcode="M_NOT_FOUND", http_status=404)
        return self._served(event)

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[bytes]:
        self._note("get_missing_events", ",".join(latest_events))
        return []


class Federation:
    """The other servers, reached by name, as the federation client reaches them."""

    def __init__(self, *servers: StandIn) -> None:
        self.servers = {server.name: server for server in servers}

    def _at(self, destination: str) -> StandIn:
        server = self.servers.get(destination)
        if server is None:
            raise _unreachable(destination)
        return server

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIdsAtEvent:
        return await self._at(destination).get_state_ids(destination, room_id, event_id)

    async def get_state(self, destination: str, room_id: str, event_id: str) -> RoomStateAtEvent:
        return await self._at(destination).get_state(destination, room_id, event_id)

    async def get_event(self, destination: str, event_id: str) -> bytes:
        return await self._at(destination).get_event(destination, event_id)

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[bytes]:
        return await self._at(destination).get_missing_events(
            destination,
            room_id,
            earliest_events=earliest_events,
            latest_events=latest_events,
            limit=limit,
            min_depth=min_depth,
        )


# --- The room -------------------------------------------------------------------------


class World:
    """The room in full at the resident, and a partial join of it here.

    Before the join: Bob creates a public room, gives Mallory power level
    50, Carol, Mallory and a crowd join, Bob bans Mallory. After it:

    - ``mallory_pl``: Mallory raises ``events_default`` to 50, citing her old
      join. On partial state her ban is unknown here: accepted. On full
      state: rejected.
    - ``carol_says``: Carol speaks, citing the power levels before Mallory's.
      On partial state Mallory's power levels are in force: rejected. On
      full state: accepted.
    """

    def __init__(self, version: str, ours: Storage, resident: Storage) -> None:
        self.version = version
        self.ours = ours
        self.resident = resident
        self.keys = {s: generate_signing_key("k1") for s in (OURS, REMOTE, THIRD, EVIL)}
        room = self.room = RoomBuilder(version, BOB, keys=self.keys)
        self.bob_join = room.member(BOB, "join")
        self.pl = room.power_levels(BOB, {BOB: 100, MALLORY: 50})
        room.join_rules(BOB, "public")
        room.topic(BOB, "before")
        self.carol_join = room.member(CAROL, "join")
        self.mallory_join = room.member(MALLORY, "join")
        for user in CROWD:
            room.member(user, "join")
        room.member(BOB, "ban", MALLORY)
        room.message(BOB, "the last word before the join")
        self.join = room.member(ALICE, "join")
        self.said = room.message(CAROL, "welcome")
        self.mallory_pl = room.send(
            "m.room.power_levels",
            MALLORY,
            dict(self.pl.content) | {"events_default": 50},
            state_key="",
            auth=self.auth_ids(self.pl, self.mallory_join),
        )
        self.carol_says = room.message(
            CAROL, "still here", auth=self.auth_ids(self.pl, self.carol_join)
        )
        self.bob_says = room.message(BOB, "indeed", auth=self.auth_ids(self.pl, self.bob_join))
        self.topic = room.topic(BOB, "after", auth=self.auth_ids(self.pl, self.bob_join))
        self.after_join = [self.said, self.mallory_pl, self.carol_says, self.bob_says, self.topic]
        self.servers = {name: StandIn(name, room, resident) for name in (REMOTE, THIRD)}
        self.federation = Federation(*self.servers.values())
        self.verifier = EventVerifier(KnownKeys(self.keys))
        self.locks = RoomLocks()

    def auth_ids(self, *events: Pdu) -> list[str]:
        ids = [event.event_id for event in events]
        return ids if self.version == "12" else [self.room.create.event_id, *ids]

    @property
    def room_id(self) -> str:
        return self.room.room_id

    def dag(self) -> list[str]:
        """Our events in the room's DAG, the join first."""
        return [self.join.event_id, *(event.event_id for event in self.after_join)]

    async def fill_resident(self) -> None:
        for event in self.room.order:
            await ingest(self.resident, event)

    async def join_partially(self, storage: Storage | None = None) -> None:
        """Store the room here as a partial join leaves it, then take in the
        events after the join through federation ingestion.
        """
        ours = storage or self.ours
        groups = await self.resident.get_event_state_groups(self.join.event_id)
        assert groups is not None
        full = await self.resident.get_state_ids(groups.before)
        await store_partial_join(ours, self.room, self.join, full)
        ingester = FederationIngester(
            store=ours,
            persister=ours,
            client=self.federation,
            verifier=self.verifier,
            room_locks=self.locks,
        )
        outcomes = await ingester.receive_pdus(REMOTE, [e.raw for e in self.after_join])
        assert all(outcome.result is not None for outcome in outcomes), outcomes

    def stater(self, storage: Storage | None = None, **kw: Any) -> UnpartialStater:
        return UnpartialStater(
            server_name=OURS,
            store=storage or self.ours,
            client=self.federation,
            verifier=self.verifier,
            room_locks=self.locks,
            **kw,
        )

    async def verdicts(self, storage: Storage | None = None) -> dict[str, bool]:
        """Whether each of our events after the join is accepted here."""
        rows = await (storage or self.ours).get_events([e.event_id for e in self.after_join])
        return {event_id: row.rejected_reason is None for event_id, row in rows.items()}

    async def resync_fully(self, stater: UnpartialStater) -> None:
        """Run ``stater`` until the room's state is complete, and check that
        it is the resident's.
        """
        async with running(stater):
            await stater.wait_for_full_state(self.room_id)
        await self.assert_full_state()

    async def assert_full_state(self, storage: Storage | None = None) -> None:
        """Our copy of the room is the resident's: every event's state and
        verdict, and current state; nothing partial is left.
        """
        ours = storage or self.ours
        assert not await ours.is_partial_state_room(self.room_id)
        assert await ours.get_partial_state_events(self.room_id) == []
        assert await ours.get_partial_state_event_ids(self.dag()) == frozenset()
        mine = await ours.get_events(self.dag())
        theirs = await self.resident.get_events(self.dag())
        for event_id in self.dag():
            assert mine[event_id].rejected_reason == theirs[event_id].rejected_reason, event_id
            our_groups = await ours.get_event_state_groups(event_id)
            their_groups = await self.resident.get_event_state_groups(event_id)
            assert our_groups is not None
            assert their_groups is not None
            assert await ours.get_state_ids(our_groups.before) == await self.resident.get_state_ids(
                their_groups.before
            ), event_id
            assert await ours.get_state_ids(our_groups.after) == await self.resident.get_state_ids(
                their_groups.after
            ), event_id
        current = await ours.get_current_state_ids(self.room_id)
        assert current == await self.resident.get_current_state_ids(self.room_id)
        assert ("m.room.member", CROWD[-1]) in current


@asynccontextmanager
async def open_storage(path: Path) -> AsyncIterator[Storage]:
    async with trio.open_nursery() as nursery:
        storage = Storage(path, synchronous="OFF")
        await nursery.start(storage.run)
        yield storage
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(stater: UnpartialStater) -> AsyncIterator[UnpartialStater]:
    async with trio.open_nursery() as nursery:
        await nursery.start(stater.run)
        yield stater
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait until ``predicate()`` holds, letting every task run meanwhile;
    bounded in real time, since a mock clock may not move by itself.
    """
    give_up = time.monotonic() + 15
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


def tasks_named(name: str) -> int:
    """How many tasks of this run are called ``name``: a second task for a
    room shows here at once, where waiting for it to make a request could
    end before it got that far.
    """
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count = 0
    todo = [root]
    while todo:
        task = todo.pop()
        count += task.name == name
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count


def phase_is(stater: UnpartialStater, room_id: str, phase: str) -> Callable[[], bool]:
    def check() -> bool:
        status = stater.status().get(room_id)
        return status is not None and status.phase == phase

    return check


@pytest.fixture
async def resident(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    storage = Storage(tmp_path / "resident.db", synchronous="OFF")
    await nursery.start(storage.run)
    return storage


async def make_world(storage: Storage, resident: Storage, version: str = "10") -> World:
    world = World(version, storage, resident)
    await world.fill_resident()
    return world


@pytest.fixture
async def world(storage: Storage, resident: Storage) -> World:
    return await make_world(storage, resident)


# --- Tests ------------------------------------------------------------------------------


def test_storage_is_what_the_task_talks_to(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "unused.db")
    store: PartialStateStore = storage
    assert isinstance(store, PartialStateStore)
    assert not isinstance(object(), PartialStateStore)
    client: ResyncClient = Federation()
    assert isinstance(client, ResyncClient)


@pytest.mark.parametrize("version", ["10", "12"])
async def test_a_partial_room_gets_the_residents_full_state(
    storage: Storage, resident: Storage, version: str, autojump_clock: MockClock
) -> None:
    world = await make_world(storage, resident, version)
    await world.join_partially()
    mallory_pl, carol_says = world.mallory_pl.event_id, world.carol_says.event_id
    # Partial state misjudges both, the way round the resident does not.
    assert (await world.verdicts())[mallory_pl] is True
    assert (await world.verdicts())[carol_says] is False
    truth = await world.verdicts(resident)
    assert (truth[mallory_pl], truth[carol_says]) == (False, True)
    before = await storage.get_partial_state_events(world.room_id)
    assert before == world.dag()

    stater = world.stater()
    async with running(stater):
        await stater.wait_for_full_state(world.room_id)
        await until(lambda: not stater.status(), "the task to end")

    await world.assert_full_state()
    assert await world.verdicts() == truth
    remote = world.servers[REMOTE]
    # The state at the join's prev event, most of it in one /state request.
    (prev_id,) = world.join.prev_event_ids
    assert remote.called("state_ids") == [prev_id]
    assert remote.called("state") == [prev_id]
    assert world.servers[THIRD].calls == []
    members = await storage.get_events(
        [world.room.state_after[prev_id][("m.room.member", u)] for u in CROWD]
    )
    assert len(members) == len(CROWD)
    assert all(row.outlier for row in members.values())


async def test_few_missing_events_are_fetched_one_by_one(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.calls.clear()
    stater = world.stater(bulk_min_missing=100)
    await world.resync_fully(stater)
    assert remote.called("state") == []
    fetched = remote.called("event")
    (prev_id,) = world.join.prev_event_ids
    crowd = {world.room.state_after[prev_id][("m.room.member", user)] for user in CROWD}
    assert crowd <= set(fetched)
    assert prev_id in fetched
    assert len(set(fetched)) == len(fetched)  # each asked for once


async def test_a_state_answer_is_written_a_chunk_at_a_time_each_event_after_its_auth_events(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.newest_first = True
    logged = PersistLog(world.ours)
    stored_before = set(await world.ours.have_seen_events(list(world.room.events)))
    stater = world.stater(logged, state_chunk=4)
    await world.resync_fully(stater)
    (prev_id,) = world.join.prev_event_ids
    assert remote.called("state") == [prev_id]
    outliers = [[event_id for event_id, outlier in call if outlier] for call in logged.calls]
    outliers = [call for call in outliers if call]
    written = [event_id for call in outliers for event_id in call]
    missing = set(world.room.state_after[prev_id].values()) - stored_before
    assert missing <= set(written)
    assert len(written) == len(set(written))
    # Written as the answer was taken in, not all at once at its end…
    assert len(outliers) >= 3
    # …and never before the events it cites in auth_events.
    seen = set(stored_before)
    for event_id in written:
        assert set(world.room.events[event_id].auth_event_ids) <= seen, event_id
        seen.add(event_id)


async def test_most_expected_missing_at_the_join_asks_for_state_alongside_state_ids(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.calls.clear()
    remote.gate = trio.Event()
    (prev_id,) = world.join.prev_event_ids
    stater = world.stater(state_ahead_min=world.join.depth)
    async with running(stater):
        # /state is asked for while the answer to /state_ids is held.
        await until(lambda: remote.called("state") == [prev_id], "/state alongside /state_ids")
        remote.gate.set()
        await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()
    assert remote.called("state_ids") == [prev_id]
    assert remote.called("state") == [prev_id]
    assert remote.called("event") == [prev_id]


async def test_fewer_expected_missing_at_the_join_asks_for_state_after_state_ids(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.calls.clear()
    remote.gate = trio.Event()
    stater = world.stater(state_ahead_min=world.join.depth + 1)
    async with running(stater):
        await until(lambda: bool(remote.called("state_ids")), "/state_ids")
        await trio.testing.wait_all_tasks_blocked()
        assert remote.called("state") == []
        remote.gate.set()
        await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()
    assert remote.called("state") == list(world.join.prev_event_ids)


async def test_a_state_asked_for_ahead_and_not_needed_is_dropped(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.calls.clear()
    stater = world.stater(state_ahead_min=1, bulk_min_missing=100)
    await world.resync_fully(stater)
    (prev_id,) = world.join.prev_event_ids
    crowd = {world.room.state_after[prev_id][("m.room.member", user)] for user in CROWD}
    # Few were missing: the events came one by one, not from the /state asked ahead.
    assert crowd <= set(remote.called("event"))
    assert remote.called("state") in ([], [prev_id])


async def test_the_next_events_are_checked_while_the_last_are_written(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.newest_first = True
    held = HeldFirstWrite(world.ours)
    stored_before = set(await world.ours.have_seen_events(list(world.room.events)))
    stater = world.stater(held, state_chunk=2)
    async with running(stater):
        await held.reached.wait()
        # The first write is held: the next chunks are checked meanwhile,
        # and wait for it rather than being written beside it.
        await trio.testing.wait_all_tasks_blocked()
        assert len(held.calls) == 1
        held.gate.set()
        await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()
    outliers = [[event_id for event_id, outlier in call if outlier] for call in held.calls]
    outliers = [call for call in outliers if call]
    # What was checked while the first write was held went in one write.
    assert len(outliers[0]) <= 2
    assert len(outliers[1]) > 2
    written = [event_id for call in outliers for event_id in call]
    assert len(written) == len(set(written))
    seen = set(stored_before)
    for event_id in written:
        assert set(world.room.events[event_id].auth_event_ids) <= seen, event_id
        seen.add(event_id)


async def test_the_events_that_every_chunk_cites_are_read_once(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    reads = ReadLog(world.ours)
    stater = world.stater(reads, state_chunk=2)
    await world.resync_fully(stater)
    # Every member's join cites the create event: the chunks' checks read it
    # once between them, not once each.
    assert len([what for what, _ in reads.log if what == "outliers"]) >= 4
    assert reads.reads_while_writing_outliers(world.room.create.event_id) <= 1


async def test_the_event_at_a_gap_is_fetched_while_the_state_before_it_comes(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.calls.clear()
    remote.state_gate = trio.Event()
    (prev_id,) = world.join.prev_event_ids
    assert not await world.ours.have_seen_events([prev_id])
    stater = world.stater()
    async with running(stater):
        await until(lambda: remote.called("event") == [prev_id], "the event at the gap")
        assert remote.called("state") == []
        remote.state_gate.set()
        await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()
    assert remote.called("state") == [prev_id]
    assert remote.called("event") == [prev_id]


@pytest.mark.parametrize("garbage", ["signatures", "missing"])
async def test_a_server_answering_garbage_hands_over_to_the_next(
    world: World, garbage: str, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await world.join_partially()
    remote, third = world.servers[REMOTE], world.servers[THIRD]
    remote.garbage = garbage
    stater = world.stater()
    with caplog.at_level(logging.WARNING, logger="ranvier.core.unpartial"):
        async with running(stater):
            await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()
    (prev_id,) = world.join.prev_event_ids
    assert remote.called("state_ids") == [prev_id]
    assert third.called("state_ids") == [prev_id]
    assert any(f"resync from {REMOTE} failed" in r.getMessage() for r in caplog.records)
    # Only the true events were written: as the servers signed them.
    crowd_ids = [world.room.state_after[prev_id][("m.room.member", u)] for u in CROWD]
    stored = await world.ours.get_events(crowd_ids)
    assert {e: row.json for e, row in stored.items()} == {
        e: world.room.events[e].raw for e in crowd_ids
    }


@pytest.mark.parametrize("bulk_min_missing", [0, 100])
async def test_a_state_event_served_badly_signed_is_dropped_and_the_rest_completes_the_room(
    world: World, bulk_min_missing: int, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote, third = world.servers[REMOTE], world.servers[THIRD]
    (prev_id,) = world.join.prev_event_ids
    before = world.room.state_after[prev_id]
    # Badly signed in /state and in /event alike: the spec drops such an event.
    # (Only members are missing here: the partial join had the rest.)
    bad = {before[("m.room.member", CROWD[3])], before[("m.room.member", CROWD[7])]}
    assert not await world.ours.have_seen_events(bad)
    remote.badly_signed = bad
    stater = world.stater(bulk_min_missing=bulk_min_missing)
    async with running(stater):
        await stater.wait_for_full_state(world.room_id)
    # One server's answer sufficed: the bad events did not fail it.
    assert remote.called("state_ids") == [prev_id]
    assert third.calls == []
    assert not await world.ours.is_partial_state_room(world.room_id)
    assert not await world.ours.have_seen_events(bad)
    groups = await world.ours.get_event_state_groups(world.join.event_id)
    assert groups is not None
    expected = {
        key: event_id for key, event_id in before.items() if event_id not in remote.badly_signed
    }
    assert await world.ours.get_state_ids(groups.before) == expected
    assert ("m.room.member", CROWD[2]) in expected
    current = await world.ours.get_current_state_ids(world.room_id)
    assert ("m.room.member", CROWD[3]) not in current
    assert ("m.room.member", CROWD[7]) not in current
    assert ("m.room.member", CROWD[-1]) in current


async def test_the_event_at_the_gap_served_badly_signed_hands_over_to_the_next_server(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote, third = world.servers[REMOTE], world.servers[THIRD]
    (prev_id,) = world.join.prev_event_ids
    remote.badly_signed = {prev_id}
    await world.resync_fully(world.stater())
    assert remote.called("state_ids") == [prev_id]
    assert third.called("state_ids") == [prev_id]


def failed_attempts(stater: UnpartialStater, room_id: str, count: int) -> Callable[[], bool]:
    """Whether the task sleeps after its ``count``-th round failed.

    ``retry_in`` is set, without a checkpoint, just before the sleep begins
    and cleared as it ends, so with it the task is asleep and its deadline
    is ``retry_in`` ahead on the mock clock.
    """

    def check() -> bool:
        status = stater.status().get(room_id)
        return (
            status is not None
            and status.phase == "waiting"
            and status.attempts == count
            and status.retry_in is not None
        )

    return check


def retry_in(stater: UnpartialStater, room_id: str) -> float:
    """How far the mock clock must move to end the task's sleep."""
    wait = stater.status()[room_id].retry_in
    assert wait is not None, "the task is not asleep"
    return wait


async def test_every_server_down_backs_off_until_one_comes_back(
    world: World, mock_clock: MockClock
) -> None:
    await world.join_partially()
    remote, third = world.servers[REMOTE], world.servers[THIRD]
    remote.calls.clear()
    remote.tried.clear()
    remote.down = third.down = True
    stater = world.stater(backoff_initial=1.0, backoff_max=8.0)
    async with running(stater):
        waits = []
        for attempt in range(1, 7):
            await until(failed_attempts(stater, world.room_id, attempt), f"attempt {attempt}")
            status = stater.status()[world.room_id]
            wait = retry_in(stater, world.room_id)
            waits.append(wait)
            assert status.last_error is not None
            assert THIRD in status.last_error
            # Each round asks each server once, the one joined through first.
            assert [call[0] for call in remote.tried[-1:] + third.tried[-1:]] == [
                "state_ids",
                "state_ids",
            ]
            assert remote.tried[-1][2] <= third.tried[-1][2]
            assert (len(remote.tried), len(third.tried)) == (attempt, attempt)
            # Waiting means waiting: nothing is asked until the clock moves.
            mock_clock.jump(wait - 0.01)
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            assert failed_attempts(stater, world.room_id, attempt)()
            assert retry_in(stater, world.room_id) == pytest.approx(0.01)
            assert (len(remote.tried), len(third.tried)) == (attempt, attempt)
            mock_clock.jump(0.02)
        assert waits == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
        await until(failed_attempts(stater, world.room_id, 7), "attempt 7")
        assert retry_in(stater, world.room_id) == pytest.approx(8.0)
        assert remote.calls == []
        assert third.calls == []

        third.down = False
        mock_clock.jump(8.0)
        await stater.wait_for_full_state(world.room_id)
        await until(lambda: not stater.status(), "the task to end")
    await world.assert_full_state()
    assert third.called("state_ids") == list(world.join.prev_event_ids)


async def test_a_restarted_server_resumes_the_resync(
    tmp_path: Path, resident: Storage, autojump_clock: MockClock
) -> None:
    path = tmp_path / "ours.db"
    async with open_storage(path) as ours:
        world = await make_world(ours, resident)
        await world.join_partially()
        remote = world.servers[REMOTE]
        remote.gate = trio.Event()
        stater = world.stater()
        async with running(stater):
            await until(lambda: bool(remote.called("state_ids")), "the resync to start")
            assert stater.status()[world.room_id].phase == "fetching"
        # Stopped mid-way, storage and all.
        assert await ours.is_partial_state_room(world.room_id)

    remote.gate = None
    async with open_storage(path) as reopened:
        stater = world.stater(reopened)
        async with running(stater):
            assert set(stater.status()) == {world.room_id}
            await stater.wait_for_full_state(world.room_id)
        await world.assert_full_state(reopened)


async def test_a_resync_waits_until_the_server_is_serving(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    asked_before = [list(server.calls) for server in world.servers.values()]
    serving = trio.Event()
    stater = world.stater(serving=serving)
    async with running(stater):
        stater.start_resync(world.room_id)
        await until(lambda: tasks_named(f"resync {world.room_id}") == 1, "the room's task")
        # Turns enough for a resync let go to ask its first server (reads
        # go through threads, which Trio's clock does not wait for).
        for _ in range(20):
            await world.ours.is_partial_state_room(world.room_id)
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
        assert [server.calls for server in world.servers.values()] == asked_before
        assert set(stater.status()) == {world.room_id}
        assert await world.ours.is_partial_state_room(world.room_id)

        serving.set()

        await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()


async def test_one_task_per_room_however_often_asked(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.gate = trio.Event()
    stater = world.stater()
    with pytest.raises(RuntimeError, match="not running"):
        stater.start_resync(world.room_id)
    async with running(stater):
        # Resumed at start-up, then asked for again, as a join would.
        for _ in range(3):
            stater.start_resync(world.room_id)
        await until(lambda: bool(remote.called("state_ids")), "the resync to start")
        assert list(stater.status()) == [world.room_id]
        assert tasks_named(f"resync {world.room_id}") == 1
        assert len(remote.called("state_ids")) == 1
        remote.gate.set()
        await stater.wait_for_full_state(world.room_id)
        await until(lambda: not stater.status(), "the task to end")
        # A room with full state needs nothing more.
        stater.start_resync(world.room_id)
        await until(lambda: not stater.status(), "the task to end")
    assert len(remote.called("state_ids")) == 1
    await world.assert_full_state()


async def test_an_event_written_with_partial_state_before_the_clear_is_redone(
    world: World, resident: Storage, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # In the room at both ends, but written here only during the resync, with
    # a context computed on partial state: a writer racing the task.
    late = world.room.message(BOB, "late", auth=world.auth_ids(world.pl, world.bob_join))
    await ingest(resident, late)
    await world.join_partially()
    context = await compute_event_context(late, world.ours, world.ours)
    outcome = await run_auth_checks(late, context, world.ours)
    assert outcome.context.partial_state
    assert outcome.failure is None
    world.after_join.append(late)

    stater = world.stater()
    with caplog.at_level(logging.INFO, logger="ranvier.core.unpartial"):
        async with running(stater):
            async with world.locks.hold(world.room_id):
                await until(phase_is(stater, world.room_id, "clearing"), "the task to clear")
                # All redone, yet the room stays partial while its lock is held.
                assert await world.ours.get_partial_state_events(world.room_id) == []
                assert await world.ours.is_partial_state_room(world.room_id)
                assert stater.status()[world.room_id].passes == 1
                await world.ours.persist_events([event_to_persist(late, outcome.context)])
                assert await world.ours.get_partial_state_events(world.room_id) == [late.event_id]
            await stater.wait_for_full_state(world.room_id)
    passes = [r.getMessage() for r in caplog.records if "to do, from" in r.getMessage()]
    assert len(passes) == 2
    assert "; 1 to do" in passes[1]
    await world.assert_full_state()


async def test_a_partial_context_computed_before_the_clear_conflicts_after_it(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    stale = world.room.message(CAROL, "too late", auth=world.auth_ids(world.pl, world.carol_join))
    context = await compute_event_context(stale, world.ours, world.ours)
    assert context.partial_state
    stater = world.stater()
    async with running(stater):
        await stater.wait_for_full_state(world.room_id)
    with pytest.raises(PartialStateConflictError):
        await world.ours.persist_events([event_to_persist(stale, context)])
    await world.assert_full_state()


async def test_the_task_stops_when_the_last_local_user_leaves(
    world: World, mock_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await world.join_partially()
    for server in world.servers.values():
        server.down = True
    stater = world.stater(backoff_initial=5.0)
    with caplog.at_level(logging.INFO, logger="ranvier.core.unpartial"):
        async with running(stater):
            await until(failed_attempts(stater, world.room_id, 1), "the first failure")
            leave = world.room.member(ALICE, "leave")
            outcome = await ingest(world.ours, leave)
            assert outcome.failure is None
            assert outcome.context.partial_state
            assert retry_in(stater, world.room_id) == pytest.approx(5.0)
            mock_clock.jump(5.0)
            await until(lambda: not stater.status(), "the task to stop")
            assert stater.status() == {}
    assert await world.ours.is_partial_state_room(world.room_id)
    assert any("no user of ours.test" in r.getMessage() for r in caplog.records)


async def test_status_is_a_struct_per_room(world: World, autojump_clock: MockClock) -> None:
    await world.join_partially()
    gate = world.servers[REMOTE].gate = trio.Event()
    stater = world.stater()
    async with running(stater):
        await until(lambda: bool(world.servers[REMOTE].called("state_ids")), "the resync")
        status = stater.status()[world.room_id]
        assert isinstance(status, ResyncStatus)
        assert status.server == REMOTE
        assert (status.events_resynced, status.events_total) == (0, len(world.dag()))
        assert (status.attempts, status.passes, status.retry_in) == (1, 1, None)
        gate.set()
        await stater.wait_for_full_state(world.room_id)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"backoff_initial": 0.0}, "backoff_initial must be positive"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "must be at least backoff_initial"),
        ({"bulk_missing_share": 1.5}, "bulk_missing_share"),
        ({"fetch_concurrency": 0}, "fetch_concurrency"),
        ({"state_ahead_min": 0}, "state_ahead_min"),
    ],
)
async def test_settings_that_make_no_sense_are_refused(
    world: World, settings: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        world.stater(**settings)


# --- Progress recorded for other processes ----------------------------------------------


class HeldStorage(Storage):
    """The running storage itself (its actor and readers, not a second
    database), where the redo of chosen events and the writes of progress
    can be held until the test lets them on.

    Every write of progress asked for is logged in :attr:`recorded` before
    it is held, and in :attr:`written` once storage has it.
    """

    def __init__(self, storage: Storage) -> None:
        self.__dict__.update(vars(storage))
        self.held_redos: dict[str, trio.Event] = {}
        self.redos_reached: set[str] = set()
        self.progress_gate: trio.Event | None = None
        self.recorded: list[dict[str, Any]] = []
        self.written: list[dict[str, Any]] = []
        #: When set, a look at the partial-state rooms waits for it, and
        #: ``rooms_looked_at`` is set on the way in.
        self.rooms_gate: trio.Event | None = None
        self.rooms_looked_at = trio.Event()

    async def get_partial_state_rooms(self) -> dict[str, PartialStateRoom]:
        if self.rooms_gate is not None:
            self.rooms_looked_at.set()
            await self.rooms_gate.wait()
        return dict(await super().get_partial_state_rooms())

    async def update_state_for_partial_event(
        self,
        event_id: str,
        state_group_before: int,
        state_group_after: int | None,
        rejected_reason: str | None = None,
    ) -> None:
        gate = self.held_redos.get(event_id)
        if gate is not None:
            self.redos_reached.add(event_id)
            await gate.wait()
        await super().update_state_for_partial_event(
            event_id, state_group_before, state_group_after, rejected_reason
        )

    async def store_resync_progress(self, room_id: str, **progress: Any) -> bool:
        self.recorded.append(progress)
        if self.progress_gate is not None:
            await self.progress_gate.wait()
        kept = await super().store_resync_progress(room_id, **progress)
        self.written.append(progress)
        return kept


class PersistLog(Storage):
    """The running storage itself, noting each persist_events call."""

    def __init__(self, storage: Storage) -> None:
        self.__dict__.update(vars(storage))
        #: The event IDs of each call, and whether each was an outlier.
        self.calls: list[list[tuple[str, bool]]] = []

    async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> dict[str, int]:
        self.calls.append([(event.event_id, event.outlier) for event in events])
        return dict(await super().persist_events(events, **kw))


class ReadLog(Storage):
    """The running storage itself, logging in order the events each
    get_events call asks for and each write of outliers.
    """

    def __init__(self, storage: Storage) -> None:
        self.__dict__.update(vars(storage))
        self.log: list[tuple[str, list[str]]] = []

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        self.log.append(("read", list(event_ids)))
        return await super().get_events(event_ids)

    async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> dict[str, int]:
        if any(event.outlier for event in events):
            self.log.append(("outliers", [event.event_id for event in events]))
        return dict(await super().persist_events(events, **kw))

    def reads_while_writing_outliers(self, event_id: str) -> int:
        """Reads of ``event_id`` from the first write of outliers to the last."""
        writes = [n for n, (what, _) in enumerate(self.log) if what == "outliers"]
        window = self.log[writes[0] : writes[-1]]
        return sum(what == "read" and event_id in ids for what, ids in window)


class HeldFirstWrite(PersistLog):
    """:class:`PersistLog`, holding the first write of outliers until ``gate`` is set."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage)
        self.gate = trio.Event()
        self.reached = trio.Event()

    async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> dict[str, int]:
        if any(event.outlier for event in events) and not self.reached.is_set():
            self.calls.append([(event.event_id, event.outlier) for event in events])
            self.reached.set()
            await self.gate.wait()
            return dict(await Storage.persist_events(self, events, **kw))
        return await super().persist_events(events, **kw)


class BrokenRecords:
    """A progress store that fails every write."""

    def __init__(self) -> None:
        self.tried = 0

    async def store_resync_progress(self, room_id: str, **progress: Any) -> bool:
        self.tried += 1
        await trio.lowlevel.checkpoint()
        raise MatrixError("the disk is full", errcode="M_UNKNOWN", http_status=500)


def recorded(storage: Storage, room_id: str, **wanted: object) -> Callable[[], Awaitable[bool]]:
    """Whether the room's recorded progress has the ``wanted`` values."""

    async def check() -> bool:
        row = (await storage.get_resync_progress()).get(room_id)
        return row is not None and all(getattr(row, k) == v for k, v in wanted.items())

    return check


async def test_progress_is_recorded_beside_the_resync_and_goes_with_the_partial_state(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    remote = world.servers[REMOTE]
    remote.gate = trio.Event()
    stater = world.stater(progress_store=world.ours)
    wall_before = int(time.time() * 1000)
    async with running(stater):
        await until(phase_is(stater, world.room_id, "fetching"), "the resync to fetch")
        await until(recorded(world.ours, world.room_id, phase="fetching"), "the fetch recorded")
        row = (await world.ours.get_resync_progress())[world.room_id]
        assert (row.server, row.attempts, row.last_error) == (REMOTE, 1, None)
        assert (row.events_resynced, row.events_total) == (0, len(world.dag()))
        assert wall_before <= row.updated_ts <= int(time.time() * 1000)
        assert stater.completed_resyncs == 0

        remote.gate.set()
        await stater.wait_for_full_state(world.room_id)
        await until(lambda: not stater.status(), "the task to end")
    assert await world.ours.get_resync_progress() == {}
    assert (stater.completed_resyncs, stater.stopped_resyncs) == (1, 0)
    await world.assert_full_state()


async def test_a_slow_progress_write_holds_up_no_resync_and_the_newest_progress_goes_next(
    world: World, autojump_clock: MockClock
) -> None:
    await world.join_partially()
    held = HeldStorage(world.ours)
    held.progress_gate = trio.Event()
    stater = world.stater(held, progress_store=held)
    async with running(stater):
        async with world.locks.hold(world.room_id):
            # Every event redone while the first write of progress hangs.
            await until(phase_is(stater, world.room_id, "clearing"), "the task to clear")
            assert stater.status()[world.room_id].events_resynced == len(world.dag())
            assert len(held.recorded) == 1
            assert held.recorded[0]["events_resynced"] == 0
            # Once it is through, the next write is of the progress as it is
            # now: the changes in between are not written one by one.
            held.progress_gate.set()
            await until(recorded(held, world.room_id, phase="clearing"), "the clear recorded")
            assert len(held.recorded) == 2
            assert held.recorded[1]["events_resynced"] == len(world.dag())
            assert held.recorded[1]["events_total"] == len(world.dag())
        await stater.wait_for_full_state(world.room_id)
    assert await held.get_resync_progress() == {}


def recorder_idle(held: HeldStorage, **wanted: object) -> Callable[[], Awaitable[bool]]:
    """Whether the last write of progress storage finished has the
    ``wanted`` values and the recorder has nothing more to write for now.

    Only trio is left to run once no write is on its way to storage: when
    every task is then blocked, the recorder is too, waiting for a change or
    for its interval to be up.
    """

    async def check() -> bool:
        await trio.testing.wait_all_tasks_blocked()
        return (
            len(held.written) == len(held.recorded)
            and bool(held.written)
            and all(held.written[-1][k] == v for k, v in wanted.items())
        )

    return check


@pytest.mark.parametrize("every", [1, 100])
async def test_counts_are_written_at_most_every_interval_and_every_so_many_events(
    world: World, mock_clock: MockClock, every: int
) -> None:
    await world.join_partially()
    held = HeldStorage(world.ours)
    dag = world.dag()
    # The walk is held twice: at the second event, past the join (whose gap
    # is the last fetch, so the last change of phase), and at the fourth,
    # when only the counts have changed since.
    first_stop, parked_at = dag[1], dag[3]
    held.held_redos[first_stop] = trio.Event()
    held.held_redos[parked_at] = trio.Event()
    held.progress_gate = trio.Event()
    stater = world.stater(held, progress_store=held, progress_interval=10.0, progress_every=every)
    async with running(stater):
        await until(lambda: first_stop in held.redos_reached, "the walk to reach the second event")
        assert stater.status()[world.room_id].events_resynced == 1
        # Writes were held until now, so what goes through is the walk as it
        # stands, and the interval after it runs from here: the mock clock
        # has not moved.
        held.progress_gate.set()
        await until(
            recorder_idle(held, phase="walking", events_resynced=1), "the walk to be recorded"
        )
        writes = len(held.recorded)
        held.held_redos[first_stop].set()
        await until(lambda: parked_at in held.redos_reached, "the walk to reach the fourth event")
        assert stater.status()[world.room_id].events_resynced == 3
        # The counts changed but no phase did: nothing is written until the
        # interval is up, and then only if enough events were redone.
        mock_clock.jump(9.9)
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        assert len(held.recorded) == writes
        assert await recorded(held, world.room_id, phase="walking", events_resynced=1)()
        mock_clock.jump(0.2)
        if every == 1:
            await until(recorded(held, world.room_id, events_resynced=3), "the counts written")
            assert len(held.recorded) == writes + 1
        else:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            assert len(held.recorded) == writes
            assert await recorded(held, world.room_id, events_resynced=1)()
        held.held_redos[parked_at].set()
        await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()


async def test_a_wait_and_a_stop_are_recorded_with_why(world: World, mock_clock: MockClock) -> None:
    await world.join_partially()
    for server in world.servers.values():
        server.down = True
    stater = world.stater(backoff_initial=5.0, progress_store=world.ours)
    async with running(stater):
        await until(failed_attempts(stater, world.room_id, 1), "the first failure")
        await until(recorded(world.ours, world.room_id, phase="waiting"), "the wait recorded")
        row = (await world.ours.get_resync_progress())[world.room_id]
        assert (row.server, row.attempts) == (THIRD, 1)
        assert row.last_error is not None
        assert THIRD in row.last_error
        outcome = await ingest(world.ours, world.room.member(ALICE, "leave"))
        assert outcome.failure is None
        assert retry_in(stater, world.room_id) == pytest.approx(5.0)
        mock_clock.jump(5.0)
        await until(lambda: not stater.status(), "the task to stop")
    # Written before the task ended, and kept: the room is still partial.
    row = (await world.ours.get_resync_progress())[world.room_id]
    assert (row.phase, row.attempts) == ("stopped", 1)
    assert row.last_error == f"no user of {OURS} is in the room any more"
    assert (stater.completed_resyncs, stater.stopped_resyncs) == (0, 1)


async def test_a_round_after_a_wait_says_it_is_starting_not_waiting(
    world: World, mock_clock: MockClock
) -> None:
    await world.join_partially()
    for server in world.servers.values():
        server.down = True
    held = HeldStorage(world.ours)
    stater = world.stater(held, backoff_initial=5.0, progress_store=held)
    async with running(stater):
        await until(failed_attempts(stater, world.room_id, 1), "the first failure")
        await until(recorded(world.ours, world.room_id, phase="waiting"), "the wait recorded")
        held.rooms_gate = trio.Event()
        mock_clock.jump(retry_in(stater, world.room_id))
        await held.rooms_looked_at.wait()
        # The sleep is over and the next round reads storage: not waiting.
        status = stater.status()[world.room_id]
        assert (status.phase, status.retry_in, status.attempts) == ("starting", None, 1)
        await until(recorded(world.ours, world.room_id, phase="starting"), "the start recorded")
        held.rooms_gate.set()
        await until(failed_attempts(stater, world.room_id, 2), "the second failure")


async def test_a_progress_store_that_fails_stops_no_resync(
    world: World, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await world.join_partially()
    broken = BrokenRecords()
    stater = world.stater(progress_store=broken)
    with caplog.at_level(logging.WARNING, logger="ranvier.core.unpartial"):
        async with running(stater):
            await stater.wait_for_full_state(world.room_id)
    await world.assert_full_state()
    assert broken.tried >= 1
    assert any("could not record the resync's progress" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"progress_interval": 0.0}, "progress_interval must be positive"),
        ({"progress_every": 0}, "progress_every must be at least 1"),
    ],
)
async def test_progress_settings_that_make_no_sense_are_refused(
    world: World, settings: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        world.stater(**settings)
