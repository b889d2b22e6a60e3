"""Parts for the tests of the race between writing events and finishing a
room's partial state.

Every writer of a room's events and the un-partial-state task meet only in
storage, so the races between them are reproduced there: each of them is
given a :class:`ProbedStorage`, the running storage with hook points at the
reads and writes where the race is decided, and a :class:`Turnstile` parks
a task at a hook point until the test lets it on. Which task reached a hook
is told by :data:`ACTOR`, set by each task the test starts and inherited by
the tasks it starts (the un-partial-state task's room tasks).

The room (:class:`RaceRoom`) lives in full at a resident server; ours joined
it with partial state. The resident's answers come from the room as built
(:class:`StateServer`), and what our copy must end up as is told by a
reference storage that took in the same events with full state from the
start (:func:`fill_reference`, :func:`assert_matches_reference`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from ranvier.core import EventContext, event_to_persist
from ranvier.core.creation import EventCreator
from ranvier.core.ingest import EventVerifier, FederationIngester, RoomLocks
from ranvier.core.interfaces import RoomStateAtEvent
from ranvier.core.unpartial import UnpartialStater
from ranvier.errors import PartialStateConflictError, PartialStateEventsRemainError
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import EventStateGroups, EventToPersist, Storage
from ranvier.testing import KnownKeys, RemoteRooms, RoomBuilder, ingest, ticking_clock

OURS = "ours.test"
REMOTE = "remote.test"
THIRD = "third.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"
CAROL = f"@carol:{THIRD}"
DAN = f"@dan:{THIRD}"
#: Members a partial join leaves out, and that full state must bring back.
CROWD = [f"@m{n}:{REMOTE}" for n in range(12)]

#: Which task reached a hook point: "remote", "client", "stater", ...
ACTOR: ContextVar[str] = ContextVar("ACTOR", default="test")


# --- Hook points ---------------------------------------------------------------------


@dataclass
class Parked:
    """A task waiting at a hook point."""

    actor: str
    label: str
    go: trio.Event


async def finish_partial_state(storage: Storage, room_id: str) -> None:
    """Give every partial-state event of the room the state it already has
    and clear the room's partial state, as a resync that found nothing
    missing would: the race's other side, without fetching anything.
    """
    for event_id in await storage.get_partial_state_events(room_id):
        groups = await storage.get_event_state_groups(event_id)
        assert groups is not None
        await storage.update_state_for_partial_event(event_id, groups.before, None)
    assert await storage.clear_partial_state(room_id)


async def store_partial_join(
    ours: Storage, room: RoomBuilder, join: Pdu, full_state: Mapping[tuple[str, str], str]
) -> None:
    """Store ``room`` as a partial join through ``join`` leaves it here: the
    non-member part of ``full_state`` (the state before the join) and its
    auth chain as outliers, the room partial (joined through REMOTE, with
    THIRD and us in it), and the join with partial state.
    """
    partial = {key: event_id for key, event_id in full_state.items() if key[0] != "m.room.member"}
    wanted = set(partial.values()) | set(join.auth_event_ids)
    chain: set[str] = set()
    level = set(wanted)
    while level:
        level = {a for e in level for a in room.events[e].auth_event_ids} - chain
        chain |= level
    outliers = sorted((room.events[e] for e in wanted | chain), key=lambda e: (e.depth, e.event_id))
    await ours.store_room(room.room_id, room.version)
    await ours.persist_events(
        [event_to_persist(event, EventContext.for_outlier()) for event in outliers]
    )
    await ours.store_partial_join(
        room.room_id, room.version, join.event_id, REMOTE, {REMOTE, THIRD, OURS}
    )
    outcome = await ingest(ours, join, state_ids_before=partial, partial_state=True)
    assert outcome.failure is None
    assert outcome.context.partial_state


class Turnstile:
    """Hook points where tasks park until the test lets them on.

    ``arm(actor, kind)`` parks the next arrival of ``actor`` at a point of
    ``kind`` (and of ``subject``, when given); ``hold``, when given, parks
    every arrival it says yes to (by actor and kind), for a test that
    decides each step itself. Every arrival is logged, parked or not, in
    :attr:`log`.
    """

    def __init__(self, *, hold: Callable[[str, str], bool] | None = None) -> None:
        self.hold = hold
        self.parked: dict[str, Parked] = {}
        #: Tasks waiting for a room's lock.
        self.lock_waiting: set[str] = set()
        #: ``"actor: kind subject"`` for every arrival, in order.
        self.log: list[str] = []
        self._armed: list[tuple[str, str, str | None]] = []

    def arm(self, actor: str, kind: str, subject: str | None = None) -> None:
        self._armed.append((actor, kind, subject))

    def _take_arm(self, actor: str, kind: str, subjects: Collection[str]) -> bool:
        for index, (who, what, subject) in enumerate(self._armed):
            if who == actor and what == kind and (subject is None or subject in subjects):
                del self._armed[index]
                return True
        return False

    async def point(self, kind: str, subjects: Collection[str] = (), note: str = "") -> None:
        actor = ACTOR.get()
        label = f"{kind} {','.join(short(s) for s in subjects)}{note}".strip()
        self.log.append(f"{actor}: {label}")
        if actor == "test":
            return
        held = self.hold is not None and self.hold(actor, kind)
        if not (held or self._take_arm(actor, kind, subjects)):
            return
        parked = Parked(actor, label, trio.Event())
        self.parked[actor] = parked
        try:
            await parked.go.wait()
        finally:
            if self.parked.get(actor) is parked:
                del self.parked[actor]

    def release(self, actor: str) -> str:
        """Let ``actor`` on from where it is parked; its label.

        It counts as parked no more from now on, not from when it next
        runs: a test waiting for every task to settle must wait for it.
        """
        parked = self.parked.pop(actor)
        parked.go.set()
        return f"{actor}: {parked.label}"

    async def wait_parked(self, actor: str) -> str:
        """Wait until ``actor`` is parked; its label."""
        await until(lambda: actor in self.parked, f"{actor} to reach a hook point")
        return self.parked[actor].label


def short(event_id: str) -> str:
    """An event ID short enough for a schedule to stay readable."""
    return event_id[:9]


@dataclass(frozen=True)
class Write:
    """One attempt to write events: by whom, which, with what, and how it went."""

    actor: str
    event_ids: tuple[str, ...]
    partial: tuple[bool, ...]
    outcome: str


class ProbedStorage(Storage):
    """The running ``storage`` itself (its actor and readers), with hook
    points where a writer and the un-partial-state task race:

    - ``groups``: a writer reads the state groups of events (prev events,
      for a context);
    - ``partial?``: a writer asks which of some events (prev events, for a
      context) have partial state;
    - ``persist``: events of the room's DAG about to be written;
    - ``redo``: a partial-state event about to get its full state;
    - ``clear``: a room's partial state about to be cleared.

    Every write of DAG events is recorded in :attr:`writes`, and every
    clear in :attr:`clears`.
    """

    def __init__(self, storage: Storage, turnstile: Turnstile) -> None:
        # Not a second database: the same actor and readers, seen anew.
        self.__dict__.update(vars(storage))
        self.turnstile = turnstile
        self.writes: list[Write] = []
        self.clears: list[str] = []

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        await self.turnstile.point("groups", [event_id])
        return await super().get_event_state_groups(event_id)

    async def get_events_state_groups(
        self, event_ids: Collection[str]
    ) -> dict[str, EventStateGroups]:
        await self.turnstile.point("groups", sorted(event_ids))
        return await super().get_events_state_groups(event_ids)

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> frozenset[str]:
        await self.turnstile.point("partial?", sorted(event_ids))
        return await super().get_partial_state_event_ids(event_ids)

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        in_dag = [event for event in events if event.context is not None]
        if not in_dag:
            return await super().persist_events(events, current_state_groups=current_state_groups)
        ids = tuple(event.event_id for event in in_dag)
        partial = tuple(bool(e.context and e.context.partial_state) for e in in_dag)
        note = " (partial)" if any(partial) else " (full)"
        await self.turnstile.point("persist", ids, note)
        try:
            orderings = await super().persist_events(
                events, current_state_groups=current_state_groups
            )
        except PartialStateConflictError:
            self.writes.append(Write(ACTOR.get(), ids, partial, "conflict"))
            raise
        self.writes.append(Write(ACTOR.get(), ids, partial, "written"))
        return orderings

    async def update_state_for_partial_event(
        self,
        event_id: str,
        state_group_before: int,
        state_group_after: int | None,
        rejected_reason: str | None = None,
    ) -> None:
        await self.turnstile.point("redo", [event_id])
        await super().update_state_for_partial_event(
            event_id, state_group_before, state_group_after, rejected_reason
        )

    async def clear_partial_state(self, room_id: str) -> bool:
        await self.turnstile.point("clear")
        try:
            cleared = await super().clear_partial_state(room_id)
        except PartialStateEventsRemainError:
            self.clears.append("events remain")
            raise
        self.clears.append("cleared" if cleared else "not partial")
        return cleared

    def writes_of(self, event_id: str) -> list[tuple[bool, str]]:
        """``(partial, outcome)`` of each attempt to write ``event_id``."""
        return [
            (write.partial[write.event_ids.index(event_id)], write.outcome)
            for write in self.writes
            if event_id in write.event_ids
        ]


class ProbedRoomLocks(RoomLocks):
    """The room locks, telling the turnstile which tasks wait for one."""

    def __init__(self, turnstile: Turnstile) -> None:
        super().__init__()
        self.turnstile = turnstile

    @asynccontextmanager
    async def hold(self, room_id: str) -> AsyncIterator[None]:
        actor = ACTOR.get()
        self.turnstile.lock_waiting.add(actor)
        try:
            async with super().hold(room_id):
                self.turnstile.lock_waiting.discard(actor)
                yield
        finally:
            self.turnstile.lock_waiting.discard(actor)


# --- The other servers ----------------------------------------------------------------


class StateServer(RemoteRooms):
    """The servers in the room, answering from the room as built: nothing
    in its history is rejected, so that is the state the resident has.
    """

    async def get_state(self, destination: str, room_id: str, event_id: str) -> RoomStateAtEvent:
        ids = await self.get_state_ids(destination, room_id, event_id)
        return RoomStateAtEvent(
            pdus=tuple(self.event(e).raw for e in ids.pdu_ids),
            auth_chain=tuple(self.event(e).raw for e in ids.auth_chain_ids),
        )


# --- The room ------------------------------------------------------------------------


class RaceRoom:
    """Bob's public room, with Carol, a crowd and Alice (power 50) in it;
    Alice, a user of ours, joined it through Bob's server with partial state.

    :attr:`after_join` were taken in with partial state as part of the
    join; :attr:`later` are Bob's events built for the test to push.
    """

    def __init__(self, version: str = "10") -> None:
        self.version = version
        self.keys = {server: generate_signing_key("k1") for server in (OURS, REMOTE, THIRD)}
        room = self.room = RoomBuilder(version, BOB, keys=self.keys)
        room.public_room(users={BOB: 100, ALICE: 50})
        room.member(CAROL, "join")
        for user in CROWD:
            room.member(user, "join")
        room.topic(BOB, "before the join")
        self.join = room.member(ALICE, "join")
        self.history = room.order[: room.order.index(self.join)]
        self.after_join = [room.message(BOB, "welcome"), room.message(CAROL, "hello")]
        self.later = [
            room.message(BOB, "pushed 1"),
            room.topic(BOB, "pushed 2"),
            room.message(BOB, "pushed 3"),
        ]
        self.remote = StateServer(room)
        self.verifier = EventVerifier(KnownKeys(self.keys))

    @property
    def room_id(self) -> str:
        return self.room.room_id

    @property
    def tip(self) -> Pdu:
        """Our last event once joined."""
        return self.after_join[-1]

    async def join_partially(self, ours: Storage) -> None:
        """Store the room as a partial join leaves it (the non-member state
        and its auth chain as outliers, the room partial, the join with
        partial state), then take in :attr:`after_join` by federation.
        """
        full = self.room.state_before(self.join.event_id)
        await store_partial_join(ours, self.room, self.join, full)
        outcomes = await self.ingester(ours).receive_pdus(
            REMOTE, [event.raw for event in self.after_join]
        )
        assert all(o.result is not None and o.error is None for o in outcomes), outcomes
        partial_ids = await ours.get_partial_state_events(self.room_id)
        assert partial_ids == [self.join.event_id, *(e.event_id for e in self.after_join)]

    def ingester(self, store: Storage, locks: RoomLocks | None = None) -> FederationIngester:
        return FederationIngester(
            store=store,
            persister=store,
            client=self.remote,
            verifier=self.verifier,
            room_locks=locks,
        )

    def creator(self, store: Storage, locks: RoomLocks, **kw: Any) -> EventCreator:
        return EventCreator(
            server_name=OURS,
            signing_key=self.keys[OURS],
            store=store,
            persister=store,
            room_locks=locks,
            clock=ticking_clock(),
            **kw,
        )

    def stater(self, store: Storage, locks: RoomLocks) -> UnpartialStater:
        return UnpartialStater(
            server_name=OURS,
            store=store,
            client=self.remote,
            verifier=self.verifier,
            room_locks=locks,
        )


# --- Running and waiting ------------------------------------------------------------------


async def as_actor(actor: str, call: Callable[[], Awaitable[Any]], results: list[Any]) -> None:
    """Run ``call`` as ``actor``, keeping what it returns or raises."""
    ACTOR.set(actor)
    try:
        results.append(await call())
    except Exception as exc:
        results.append(exc)


@asynccontextmanager
async def running_stater(stater: UnpartialStater) -> AsyncIterator[UnpartialStater]:
    """The un-partial-state task running as the ``stater`` actor."""

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ACTOR.set("stater")
        await stater.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        yield stater
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait until ``predicate()`` holds, letting every task run meanwhile;
    bounded in real time, since a mock clock may not move by itself.
    """
    give_up = time.monotonic() + 30
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


def phase_is(stater: UnpartialStater, room_id: str, phase: str) -> Callable[[], bool]:
    def check() -> bool:
        status = stater.status().get(room_id)
        return status is not None and status.phase == phase

    return check


# --- What our copy must end up as ---------------------------------------------------------


def dag_events(db_path: Path, room_id: str) -> list[tuple[str, bytes]]:
    """``(event ID, JSON)`` of the room's events in the DAG, in the order written."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        return list(
            conn.execute(
                "SELECT event_id, json FROM events WHERE room_id = ? AND outlier = 0"
                " ORDER BY stream_ordering",
                (room_id,),
            )
        )


def count_events_saying(db_path: Path, text: str) -> int:
    """How many stored events hold ``text``: a send written twice shows here."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM events WHERE instr(json, ?) > 0", (text,)
        ).fetchone()
    return int(count)


async def fill_reference(race: RaceRoom, reference: Storage, ours_path: Path) -> list[str]:
    """Take into ``reference`` what ours holds of the room, with full state
    from the start: the history before the join (unless it has it), then
    our events in the order we wrote them. Returns our events' IDs.
    """
    if await reference.get_room_version(race.room_id) is None:
        for event in race.history:
            await ingest(reference, event)
    ours = dag_events(ours_path, race.room_id)
    for _, raw in ours:
        await ingest(reference, Pdu.from_json(raw, race.room.room_version))
    return [event_id for event_id, _ in ours]


async def assert_matches_reference(
    race: RaceRoom, ours: Storage, ours_path: Path, reference: Storage
) -> None:
    """Nothing of the room is partial here any more, and every event of ours
    has the state and verdict it has in the reference, as has current state.
    """
    assert not await ours.is_partial_state_room(race.room_id)
    assert await ours.get_partial_state_events(race.room_id) == []
    event_ids = await fill_reference(race, reference, ours_path)
    assert await ours.get_partial_state_event_ids(event_ids) == frozenset()
    mine = await ours.get_events(event_ids)
    theirs = await reference.get_events(event_ids)
    for event_id in event_ids:
        assert mine[event_id].rejected_reason == theirs[event_id].rejected_reason, event_id
        our_groups = await ours.get_event_state_groups(event_id)
        their_groups = await reference.get_event_state_groups(event_id)
        assert our_groups is not None
        assert their_groups is not None
        for mine_group, their_group in (
            (our_groups.before, their_groups.before),
            (our_groups.after, their_groups.after),
        ):
            assert await ours.get_state_ids(mine_group) == await reference.get_state_ids(
                their_group
            ), f"the state at {event_id} differs from the reference's"
    current = await ours.get_current_state_ids(race.room_id)
    assert current == await reference.get_current_state_ids(race.room_id)
    assert all(("m.room.member", user) in current for user in CROWD)
