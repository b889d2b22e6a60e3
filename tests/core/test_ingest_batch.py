"""A transaction's events of one room, judged as a run and written at once.

Every test runs against real storage. Where a test counts writes or reads,
or makes the room's partial state vanish under a write, it does so with a
thin wrapper that passes every call on to the real storage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import trio
from _races import finish_partial_state

from ranvier.core import compute_event_context
from ranvier.core.context import EventContext, compute_current_state_after, event_to_persist
from ranvier.core.event_auth import run_auth_checks
from ranvier.core.ingest import EventVerifier, FederationIngester, PduOutcome, TransactionAnswer
from ranvier.core.ingest_batch import NotInMemoryError, RoomRun
from ranvier.errors import MatrixError, PartialStateConflictError
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import EventToPersist, ReaderPool, ReadOperation, Storage
from ranvier.storage.records import ReceivedTransaction
from ranvier.storage.run_reads import RunReads
from ranvier.storage.write_marks import WriteMark
from ranvier.storage.writes import RunWritten
from ranvier.testing import KnownKeys, RemoteRooms, RoomBuilder, ingest, ingest_all

OURS = "ours.test"
REMOTE = "remote.test"
THIRD = "third.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"
CAROL = f"@carol:{THIRD}"

T = TypeVar("T")


class _CountingReaders(ReaderPool):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self.count = 0

    async def read(self, operation: ReadOperation[T]) -> T:
        self.count += 1
        return await super().read(operation)


class CountingStorage(Storage):
    """Storage that records each persist_events call and counts reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.readers = self.counting = _CountingReaders(path)
        #: The event IDs of each persist_events call, in order.
        self.persists: list[list[str]] = []

    async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> dict[str, int]:
        self.persists.append([event.event_id for event in events])
        return await super().persist_events(events, **kw)


class Room:
    """A room we are in with Bob (of the remote) and Carol (of a third server)."""

    def __init__(self) -> None:
        self.keys = {server: generate_signing_key("k1") for server in (OURS, REMOTE, THIRD)}
        self.builder = RoomBuilder(creator=ALICE, keys=self.keys)
        self.builder.public_room(BOB, CAROL)
        self.initial = list(self.builder.order)

    def ingester(
        self,
        storage: Storage,
        persister: Any = None,
        run_reader: RunReads | None = None,
        answers: Any = None,
    ) -> FederationIngester:
        return FederationIngester(
            store=storage,
            persister=storage if persister is None else persister,
            client=RemoteRooms(self.builder),
            verifier=EventVerifier(KnownKeys(self.keys)),
            run_reader=run_reader,
            answers=answers,
        )


async def _started(nursery: trio.Nursery, storage: Storage, room: Room) -> Storage:
    await nursery.start(storage.run)
    await ingest_all(storage, room.initial)
    return storage


@pytest.fixture
def room() -> Room:
    return Room()


@pytest.fixture
async def counting(tmp_path: Path, nursery: trio.Nursery, room: Room) -> CountingStorage:
    storage = CountingStorage(tmp_path / "counting.db")
    await _started(nursery, storage, room)
    storage.persists.clear()
    return storage


async def _open(tmp_path: Path, nursery: trio.Nursery, room: Room, name: str) -> Storage:
    storage = Storage(tmp_path / f"{name}.db", synchronous="NORMAL")
    return await _started(nursery, storage, room)


def _fine(outcomes: Sequence[PduOutcome]) -> bool:
    return all(
        outcome.error is None
        and outcome.result is not None
        and not outcome.result.soft_failed
        and not outcome.result.already_known
        for outcome in outcomes
    )


# --- One write per run ----------------------------------------------------------------


async def test_fifty_events_in_a_line_are_written_with_one_persist(
    counting: CountingStorage, room: Room
) -> None:
    ingester = room.ingester(counting)
    events = [room.builder.message(BOB, f"message {n}") for n in range(50)]
    counting.counting.count = 0
    outcomes = await ingester.receive_pdus(REMOTE, [event.raw for event in events])
    assert [outcome.event_id for outcome in outcomes] == [event.event_id for event in events]
    assert _fine(outcomes)
    assert counting.persists == [[event.event_id for event in events]]
    # A handful of reads for the whole run, not a dozen per event.
    assert counting.counting.count <= 8
    assert await counting.get_forward_extremities(room.builder.room_id) == {events[-1].event_id}
    stored = await counting.get_events([event.event_id for event in events])
    assert all(row.rejected_reason is None and not row.soft_failed for row in stored.values())

    # Events of a third server's user, relayed: the origin check reads the
    # whole state before them, once for the run.
    more = [room.builder.message(CAROL, f"more {n}") for n in range(50)]
    counting.counting.count = 0
    outcomes = await ingester.receive_pdus(REMOTE, [event.raw for event in more])
    assert _fine(outcomes)
    assert counting.persists[1:] == [[event.event_id for event in more]]
    assert counting.counting.count <= 9


async def test_a_run_reads_what_it_starts_from_in_one_read(
    counting: CountingStorage, room: Room
) -> None:
    reads_per_transaction = []
    for run_reader in (None, RunReads(counting.counting)):
        ingester = room.ingester(counting, run_reader=run_reader)
        events = [room.builder.message(BOB, f"message {n}") for n in range(50)]
        counting.counting.count = 0
        outcomes = await ingester.receive_pdus(REMOTE, [event.raw for event in events])
        assert _fine(outcomes)
        assert counting.persists[-1] == [event.event_id for event in events]
        reads_per_transaction.append(counting.counting.count)
    separate, together = reads_per_transaction
    # The start's six reads (in a room without partial state; five of them
    # side by side, one of them which events a stored redaction names) and
    # the first auth checks' reads of the state before the first event and
    # of the current state become one; the room's version is the other read.
    assert together == 2
    assert separate == 8
    extremities = await counting.get_forward_extremities(room.builder.room_id)
    assert extremities == {room.builder.last}


async def test_state_events_in_a_run_give_the_events_after_them_their_state(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    first = builder.topic(ALICE, "first")
    between = builder.message(BOB, "between")
    second = builder.topic(ALICE, "second")
    dave = f"@dave:{REMOTE}"
    join = builder.member(dave, "join")
    says = builder.message(dave, "dave speaks")
    events = [first, between, second, join, says]
    outcomes = await room.ingester(counting).receive_pdus(REMOTE, [e.raw for e in events])
    assert _fine(outcomes)
    assert len(counting.persists) == 1
    for event in events:
        groups = await counting.get_event_state_groups(event.event_id)
        assert groups is not None
        assert dict(await counting.get_state_ids(groups.before)) == builder.state_before(
            event.event_id
        )
        assert (
            dict(await counting.get_state_ids(groups.after)) == builder.state_after[event.event_id]
        )
    current = await counting.get_current_state_ids(builder.room_id)
    assert dict(current) == builder.state_after[says.event_id]


# --- The same outcome as one event at a time ------------------------------------------


async def _snapshot(storage: Storage, room_id: str, event_ids: Sequence[str]) -> dict[str, Any]:
    """What storage holds of the room and of ``event_ids``, without the
    numbers (stream orderings, state group IDs) that differ between databases.
    """
    rows = await storage.get_events(event_ids)
    events: dict[str, Any] = {}
    for event_id, row in rows.items():
        groups = await storage.get_event_state_groups(event_id)
        states = None
        if groups is not None:
            states = (
                dict(await storage.get_state_ids(groups.before)),
                dict(await storage.get_state_ids(groups.after)),
            )
        events[event_id] = (
            row.json,
            row.outlier,
            row.soft_failed,
            row.rejected_reason,
            states,
        )
    return {
        "events": events,
        "partial": set(await storage.get_partial_state_event_ids(event_ids)),
        "extremities": set(await storage.get_forward_extremities(room_id)),
        "current": dict(await storage.get_current_state_ids(room_id)),
    }


def _verdict(outcome: PduOutcome) -> tuple[Any, ...]:
    result = outcome.result
    return (
        outcome.event_id,
        None if outcome.error is None else (outcome.error.errcode, outcome.error.http_status),
        None if result is None else (result.rejected_reason, result.soft_failed),
        None if result is None else result.already_known,
    )


async def test_a_run_ends_as_its_events_one_at_a_time_do(
    tmp_path: Path, nursery: trio.Nursery, room: Room
) -> None:
    one_by_one = await _open(tmp_path, nursery, room, "one-by-one")
    batched = CountingStorage(tmp_path / "batched.db")
    await _started(nursery, batched, room)
    batched.persists.clear()
    builder = room.builder

    m1 = builder.message(BOB, "one")
    topic = builder.topic(ALICE, "a topic, relayed by the remote")
    m2 = builder.message(BOB, "two")
    # Bob may not raise himself: rejected, and the room goes on without it.
    grab = builder.draft("m.room.power_levels", BOB, {"users": {BOB: 100}}, state_key="")
    # Signed with a key nobody knows: dropped before it is judged.
    forged = builder.draft(
        "m.room.message", BOB, {"body": "forged"}, key=generate_signing_key("k1")
    )
    m3 = builder.message(CAROL, "three")
    ban = builder.member(ALICE, "ban", CAROL)
    # Carol speaks from before her ban: fine there, not against the current state.
    late = builder.message(CAROL, "from before the ban", prev=[m3.event_id], apply=False)
    m4 = builder.message(BOB, "four")
    # A fork in the transaction, merged again: resolved in the run.
    fork_point = m4.event_id
    left = builder.message(BOB, "left", prev=[fork_point])
    right = builder.topic(ALICE, "right", prev=[fork_point])
    merge = builder.message(BOB, "merge", prev=[left.event_id, right.event_id])
    # A gap: the event before this one is not sent and must be fetched.
    hidden = builder.message(BOB, "never pushed")
    after_gap = builder.message(BOB, "after the gap")
    tail = [builder.message(BOB, f"tail {n}") for n in range(3)]
    pushed = [
        *(m1, topic, m2, grab, forged, m3, ban, late, m1),
        *(m4, left, right, merge, after_gap, *tail),
    ]

    batched_outcomes = await room.ingester(batched).receive_pdus(
        REMOTE, [event.raw for event in pushed]
    )
    single = room.ingester(one_by_one)
    single_outcomes = []
    for event in pushed:
        try:
            result = await single.on_receive_pdu(REMOTE, event)
        except MatrixError as exc:
            single_outcomes.append(PduOutcome(event.event_id, error=exc))
        else:
            single_outcomes.append(PduOutcome(event.event_id, result=result, error=result.error))

    assert [_verdict(o) for o in batched_outcomes] == [_verdict(o) for o in single_outcomes]
    by_id = {outcome.event_id: outcome.result for outcome in batched_outcomes[:8]}
    grab_result, late_result = by_id[grab.event_id], by_id[late.event_id]
    assert grab_result is not None
    assert grab_result.rejected_reason is not None
    assert late_result is not None
    assert late_result.soft_failed
    refused = batched_outcomes[4].error
    assert refused is not None
    assert refused.errcode == "M_UNAUTHORIZED"
    repeat = batched_outcomes[8].result
    assert repeat is not None
    assert repeat.already_known
    every_id = [event.event_id for event in pushed] + [hidden.event_id]
    expected = await _snapshot(one_by_one, builder.room_id, every_id)
    assert await _snapshot(batched, builder.room_id, every_id) == expected
    assert expected["extremities"] == {tail[-1].event_id}
    assert expected["current"][("m.room.topic", "")] == right.event_id
    assert not expected["events"][hidden.event_id][1]  # fetched into the DAG
    # Written in runs: up to the gap, the fetched event, then the rest.
    assert len(batched.persists) < len(pushed) // 2
    assert batched.persists[0][:3] == [m1.event_id, topic.event_id, m2.event_id]


# --- Partial state cleared under a run's write ----------------------------------------


async def _partial_room(storage: Storage, builder: RoomBuilder) -> Pdu:
    """Mark the room partial, and write Bob's next message with partial state."""
    await storage.store_partial_join(
        builder.room_id, builder.version, builder.last, joined_via=REMOTE, servers_in_room=[REMOTE]
    )
    message = builder.message(BOB, "written with partial state")
    context = await compute_event_context(
        message,
        storage,
        storage,
        state_ids_before=builder.state_before(message.event_id),
        partial_state=True,
    )
    await storage.persist_events([event_to_persist(message, context)])
    return message


class ClearsPartialStateFirst:
    """Storage, with the room's partial state finished just before the
    first write that holds ``watched``: the race with the un-partial-state
    task, made to happen. ``writes`` records, for each write holding
    ``watched``, the events written and whether each had partial state.
    """

    def __init__(self, storage: Storage, room_id: str, watched: str) -> None:
        self.storage = storage
        self.room_id = room_id
        self.watched = watched
        self.writes: list[list[tuple[str, bool]]] = []

    async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> Any:
        if any(event.event_id == self.watched for event in events):
            self.writes.append(
                [(e.event_id, e.context is not None and e.context.partial_state) for e in events]
            )
            if len(self.writes) == 1:
                await finish_partial_state(self.storage, self.room_id)
        return await self.storage.persist_events(events, **kw)

    async def store_room(self, room_id: str, room_version: str) -> None:
        await self.storage.store_room(room_id, room_version)

    async def store_state_group(self, room_id: str, prev: int | None, delta: Any) -> int:
        return await self.storage.store_state_group(room_id, prev, delta)


async def test_events_sharing_their_auth_inputs_get_the_verdicts_they_get_one_by_one(
    tmp_path: Path, nursery: trio.Nursery, room: Room
) -> None:
    # Runs of messages from one sender citing the same auth events in the
    # same state share their first two checks; whatever changes one of
    # those (the state, the sender, the auth events cited) is checked anew.
    one_by_one = await _open(tmp_path, nursery, room, "one-by-one")
    batched = await _open(tmp_path, nursery, room, "batched")
    builder = room.builder
    pushed = [builder.message(BOB, f"before {n}") for n in range(3)]
    pushed.append(
        builder.power_levels(ALICE, content={"users": {ALICE: 100}, "events_default": 50})
    )
    # Bob may no longer send: each of these is rejected, and so is one that
    # cites the auth events of his messages before, in the state after.
    pushed += [builder.draft("m.room.message", BOB, {"body": f"muted {n}"}) for n in range(3)]
    old_auth = list(pushed[0].auth_event_ids)
    pushed.append(builder.draft("m.room.message", BOB, {"body": "stale"}, auth=old_auth))
    pushed.append(builder.draft("m.room.message", CAROL, {"body": "carol is muted too"}))
    pushed.append(builder.power_levels(ALICE, {ALICE: 100, BOB: 50}))
    pushed += [builder.message(BOB, f"after {n}") for n in range(3)]

    batched_outcomes = await room.ingester(batched).receive_pdus(
        REMOTE, [event.raw for event in pushed]
    )
    single = room.ingester(one_by_one)
    single_outcomes = []
    for event in pushed:
        try:
            result = await single.on_receive_pdu(REMOTE, event)
        except MatrixError as exc:
            single_outcomes.append(PduOutcome(event.event_id, error=exc))
        else:
            single_outcomes.append(PduOutcome(event.event_id, result=result, error=result.error))
    verdicts = [_verdict(o) for o in batched_outcomes]
    assert verdicts == [_verdict(o) for o in single_outcomes]
    rejected = [o.event_id for o in batched_outcomes if o.result and o.result.rejected_reason]
    assert rejected == [event.event_id for event in pushed[4:9]]
    assert all(batched_outcomes[n].error is None for n in (0, 1, 2, 10, 11, 12))
    every_id = [event.event_id for event in pushed]
    assert await _snapshot(batched, builder.room_id, every_id) == await _snapshot(
        one_by_one, builder.room_id, every_id
    )


async def test_a_run_conflicting_with_partial_state_is_judged_again_once(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    await _partial_room(counting, builder)
    events = [builder.message(BOB, f"after the partial one {n}") for n in range(5)]
    ids = [event.event_id for event in events]
    persister = ClearsPartialStateFirst(counting, builder.room_id, ids[0])
    outcomes = await room.ingester(counting, persister).receive_pdus(
        REMOTE, [event.raw for event in events]
    )
    assert _fine(outcomes)
    # The whole run, with partial state, refused; then the whole run again,
    # judged with the full state.
    assert persister.writes == [[(i, True) for i in ids], [(i, False) for i in ids]]
    assert not await counting.is_partial_state_room(builder.room_id)
    assert await counting.get_partial_state_events(builder.room_id) == []
    assert await counting.get_forward_extremities(builder.room_id) == {ids[-1]}
    for outcome in outcomes:
        assert outcome.result is not None
        assert outcome.result.context is not None
        assert not outcome.result.context.partial_state


async def test_a_run_conflicting_twice_is_taken_one_event_at_a_time(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    # Side by side, so that none needs another written first.
    start = builder.last
    events = [builder.message(BOB, f"message {n}", prev=[start]) for n in range(3)]
    ids = [event.event_id for event in events]

    class AlwaysConflicting(ClearsPartialStateFirst):
        """Storage whose room keeps losing its partial state under writes."""

        async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> Any:
            self.writes.append([(event.event_id, False) for event in events])
            raise PartialStateConflictError()

    persister = AlwaysConflicting(counting, builder.room_id, ids[0])
    outcomes = await room.ingester(counting, persister).receive_pdus(
        REMOTE, [event.raw for event in events]
    )
    written = [[event_id for event_id, _ in write] for write in persister.writes]
    # The run twice, then each event alone, twice: the error of a lone event
    # conflicting twice.
    assert written == [ids, ids, *([event_id] for event_id in ids for _ in range(2))]
    for outcome in outcomes:
        assert outcome.error is not None
        assert outcome.error.http_status == 503
        assert "changed under it twice" in outcome.error.message
    assert await counting.get_events(ids) == {}


# --- The transaction's answer, written with the run ----------------------------------


class Answers:
    """A transaction's answer as the transaction handler makes it: the
    outcomes it was made from, each time, and the record."""

    def __init__(self, transaction_id: str = "t1") -> None:
        self.made: list[list[PduOutcome]] = []
        self.answer = TransactionAnswer(self.record)
        self.transaction_id = transaction_id

    def record(self, outcomes: Sequence[PduOutcome]) -> ReceivedTransaction:
        self.made.append(list(outcomes))
        body = {
            "pdus": {
                outcome.event_id: {} if outcome.error is None else {"error": outcome.error.errcode}
                for outcome in outcomes
                if outcome.event_id is not None
            }
        }
        return ReceivedTransaction(
            origin=REMOTE,
            transaction_id=self.transaction_id,
            response_code=200,
            response_json=msgspec.json.encode(body),
            received_ts=len(self.made),
        )


async def test_the_answer_is_written_with_the_run_that_takes_every_pdu(
    counting: CountingStorage, room: Room
) -> None:
    events = [room.builder.message(BOB, f"message {n}") for n in range(5)]
    pdus = [b"not json", *(event.raw for event in events)]
    answers = Answers()
    requests = counting.actor.stats.requests
    outcomes = await room.ingester(counting, answers=counting).receive_pdus(
        REMOTE, pdus, answer=answers.answer
    )
    assert _fine(outcomes[1:])
    assert outcomes[0].error is not None
    # Made from every PDU's outcome, the unreadable one's too, once.
    assert answers.made == [outcomes]
    assert counting.actor.stats.requests == requests + 1
    assert counting.persists == []
    recorded = await counting.get_received_transaction(REMOTE, "t1")
    assert recorded is not None
    assert recorded == answers.answer.recorded
    assert set(msgspec.json.decode(recorded.response_json)["pdus"]) == {e.event_id for e in events}


async def test_no_answer_is_written_where_one_write_does_not_take_every_pdu(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    # Without storage that records answers, none is.
    answers = Answers("plain")
    message = builder.message(BOB, "plain")
    ingester = room.ingester(counting)
    assert _fine(await ingester.receive_pdus(REMOTE, [message.raw], answer=answers.answer))
    assert answers.answer.recorded is None
    # A redaction is written alone, and the run after it on its own.
    answers = Answers("split")
    redaction = builder.send("m.room.redaction", BOB, extra={"redacts": message.event_id})
    after = builder.message(BOB, "after")
    ingester = room.ingester(counting, answers=counting)
    outcomes = await ingester.receive_pdus(
        REMOTE, [redaction.raw, after.raw], answer=answers.answer
    )
    assert _fine(outcomes)
    assert (answers.made, answers.answer.recorded) == ([], None)
    # Nothing but messages, and not one of them new: nothing to write.
    answers = Answers("known")
    outcomes = await ingester.receive_pdus(REMOTE, [after.raw], answer=answers.answer)
    assert outcomes[0].result is not None
    assert outcomes[0].result.already_known
    assert answers.answer.recorded is None
    for transaction_id in ("plain", "split", "known"):
        assert await counting.get_received_transaction(REMOTE, transaction_id) is None


async def test_an_answer_refused_with_its_run_is_made_again_with_the_run(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    await _partial_room(counting, builder)
    events = [builder.message(BOB, f"after the partial one {n}") for n in range(3)]

    class FinishesPartialStateFirst:
        """Storage recording answers, with the room's partial state
        finished just before the first write: the race, made to happen."""

        def __init__(self) -> None:
            self.writes: list[list[bool]] = []

        async def persist_run(
            self, room_id: str, events: Sequence[EventToPersist], **kw: Any
        ) -> RunWritten:
            self.writes.append([e.context is not None and e.context.partial_state for e in events])
            if len(self.writes) == 1:
                await finish_partial_state(counting, builder.room_id)
            return await counting.persist_run(room_id, events, **kw)

        def room_mark(self, room_id: str) -> WriteMark | None:
            return counting.room_mark(room_id)

    racing = FinishesPartialStateFirst()
    answers = Answers()
    outcomes = await room.ingester(counting, answers=racing).receive_pdus(
        REMOTE, [event.raw for event in events], answer=answers.answer
    )
    assert _fine(outcomes)
    # Refused with partial state, answer and all; then judged and made again.
    assert racing.writes == [[True] * 3, [False] * 3]
    assert len(answers.made) == 2
    recorded = await counting.get_received_transaction(REMOTE, "t1")
    assert recorded is not None
    assert recorded == answers.answer.recorded
    assert recorded.received_ts == 2


# --- The run as storage will be -------------------------------------------------------


async def _hold(run: RoomRun, event: Pdu, context: EventContext | None = None) -> None:
    """Hold ``event`` in ``run`` as ingestion does: with its context (worked
    out against the run unless given), naming the current state after it."""
    if context is None:
        context = await compute_event_context(event, run, run)
    current = await compute_current_state_after(event, context, run, run)
    await run.persist_events(
        [event_to_persist(event, context)],
        current_state_groups=None if current is None else {run.room_id: current},
    )


@pytest.mark.parametrize("one_read", [False, True])
async def test_a_run_answers_as_storage_does_once_it_is_written(
    counting: CountingStorage, room: Room, one_read: bool
) -> None:
    builder = room.builder
    room_id = builder.room_id
    start = builder.last
    events = [
        builder.topic(ALICE, "one"),
        builder.message(BOB, "after the topic"),
        builder.message(CAROL, "a fork", prev=[start]),
        builder.topic(ALICE, "two", prev=[start]),
    ]
    events.append(builder.message(BOB, "merge", prev=[events[1].event_id, events[3].event_id]))
    run_reader = RunReads(counting.counting) if one_read else None
    run = RoomRun(counting, counting, room_id, builder.room_version, run_reader=run_reader)
    await run.load(events)
    for event in events:
        await _hold(run, event)
    assert run.held == len(events)
    ids = [event.event_id for event in events]
    keys = [("m.room.topic", ""), ("m.room.member", BOB), ("m.room.power_levels", "")]

    async def answers(store: Any) -> dict[str, Any]:
        groups = await store.get_events_state_groups(ids)
        return {
            "extremities": set(await store.get_forward_extremities(room_id)),
            "current": dict(await store.get_current_state_ids(room_id)),
            "current at keys": dict(await store.get_current_state_ids_for_keys(room_id, keys)),
            "rows": {
                event_id: (row.json, row.rejected_reason, row.soft_failed, row.outlier)
                for event_id, row in (await store.get_events(ids)).items()
            },
            "states": {
                event_id: (
                    dict(await store.get_state_ids(groups[event_id].before)),
                    dict(await store.get_state_ids_for_keys(groups[event_id].after, keys)),
                )
                for event_id in ids
            },
            "cited": set(await store.get_events_with_accepted_children(ids)),
        }

    in_memory = await answers(run)
    assert counting.persists == []
    await run.write()
    assert counting.persists == [ids]
    assert await answers(counting) == in_memory
    # Carol's branch is left open: the current state is the resolution of
    # both branches, which the merge's write named.
    assert in_memory["extremities"] == {ids[2], ids[4]}
    assert in_memory["current"][("m.room.topic", "")] in (ids[0], ids[3])


@pytest.mark.parametrize("one_read", [False, True])
async def test_the_current_state_a_run_gives_moves_with_each_event_it_holds(
    counting: CountingStorage, room: Room, one_read: bool
) -> None:
    builder = room.builder
    room_id = builder.room_id
    topic = ("m.room.topic", "")
    events = [
        builder.message(BOB, "before any topic"),
        builder.topic(ALICE, "one"),
        builder.message(BOB, "after the first topic"),
        builder.topic(ALICE, "two"),
        builder.message(CAROL, "after the second"),
    ]
    run_reader = RunReads(counting.counting) if one_read else None
    run = RoomRun(counting, counting, room_id, builder.room_version, run_reader=run_reader)
    await run.load(events)
    seen = [(await run.get_current_state_ids_for_keys(room_id, [topic])).get(topic)]
    for event in events:
        await _hold(run, event)
        # Read after every event, as the policy check does: what was read
        # before a state event must not stand in for the state after it.
        seen.append((await run.get_current_state_ids_for_keys(room_id, [topic])).get(topic))
    first, second = events[1].event_id, events[3].event_id
    assert seen == [None, None, first, first, second, second]
    await run.write()
    assert (await counting.get_current_state_ids_for_keys(room_id, [topic])).get(topic) == second


async def test_a_run_holds_only_events_of_its_room_it_read(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    read = builder.message(BOB, "read when the run started")
    unread = builder.message(BOB, "not read", prev=[read.event_id])
    run = RoomRun(counting, counting, builder.room_id, builder.room_version)
    await run.load([read])
    context = await compute_event_context(read, run, run)
    with pytest.raises(NotInMemoryError, match="outlier"):
        await run.persist_events([event_to_persist(read, context.for_outlier())])
    with pytest.raises(NotInMemoryError, match="not read"):
        await run.persist_events([event_to_persist(unread, context)])
    await run.persist_events([event_to_persist(read, context)])
    with pytest.raises(NotInMemoryError, match="held already"):
        await run.persist_events([event_to_persist(read, context)])
    assert run.held == 1


async def test_a_run_holds_hundreds_of_state_events_in_a_line(
    counting: CountingStorage, room: Room
) -> None:
    # Each held state event's group sits on the one before: looking a key
    # up through 600 of them walks the chain without nesting a call each.
    builder = room.builder
    room_id = builder.room_id
    events = [builder.topic(ALICE, f"topic {n}") for n in range(600)]
    run = RoomRun(counting, counting, room_id, builder.room_version)
    await run.load(events)
    for event in events:
        context = await compute_event_context(event, run, run)
        outcome = await run_auth_checks(event, context, run)
        assert outcome.failure is None, outcome.failure
        await _hold(run, event, outcome.context)
    last = events[-1].event_id
    groups = await run.get_event_state_groups(last)
    assert groups is not None
    keys = [("m.room.topic", ""), ("m.room.member", BOB), ("m.room.create", "")]
    expected = {key: builder.state_after[last][key] for key in keys}
    assert dict(await run.get_state_ids_for_keys(groups.after, keys)) == expected
    await run.write()
    assert counting.persists == [[event.event_id for event in events]]
    assert dict(await counting.get_current_state_ids(room_id)) == builder.state_after[last]
    stored = await counting.get_event_state_groups(last)
    assert stored is not None
    assert dict(await counting.get_state_ids(stored.after)) == builder.state_after[last]


# --- Redactions ------------------------------------------------------------------------

#: Power levels under which Bob (at 10) may change them but not the
#: notification level of 20, which redacting them drops.
_LEVELS: dict[str, Any] = {
    "users": {ALICE: 100, BOB: 10},
    "events": {"m.room.power_levels": 10},
    "state_default": 50,
    "notifications": {"room": 20},
}
_LOWERED: dict[str, Any] = {**_LEVELS, "notifications": {"room": 5}}


def _run_reader(counting: CountingStorage, together: bool) -> RunReads | None:
    return RunReads(counting.counting) if together else None


@pytest.mark.parametrize("together", [False, True], ids=["separate", "together"])
async def test_a_redaction_applies_to_the_events_after_it_in_a_transaction(
    counting: CountingStorage, room: Room, together: bool
) -> None:
    # The auth checks read a redacted auth event redacted: Bob's change,
    # refused by the levels as they were, passes by the levels redacted,
    # which the redaction before it in the transaction makes them.
    builder = room.builder
    levels = builder.power_levels(ALICE, content=_LEVELS)
    await ingest_all(counting, [levels])
    redaction = builder.send("m.room.redaction", ALICE, extra={"redacts": levels.event_id})
    lowered = builder.power_levels(BOB, content=_LOWERED)
    counting.persists.clear()
    ingester = room.ingester(counting, run_reader=_run_reader(counting, together))
    outcomes = await ingester.receive_pdus(REMOTE, [redaction.raw, lowered.raw])
    assert _fine(outcomes)
    # The redaction is written alone, so that the run after it reads it.
    assert counting.persists == [[redaction.event_id], [lowered.event_id]]
    current = await counting.get_current_state_ids(builder.room_id)
    assert current[("m.room.power_levels", "")] == lowered.event_id


@pytest.mark.parametrize("together", [False, True], ids=["separate", "together"])
async def test_an_event_redacted_before_it_arrived_is_read_redacted_after_it(
    counting: CountingStorage, room: Room, together: bool
) -> None:
    # The redaction comes first, on a branch of its own; the levels it
    # names and Bob's change come after, in one transaction.
    builder = room.builder
    fork = builder.last
    levels = builder.power_levels(ALICE, content=_LEVELS, apply=False)
    redaction = builder.send(
        "m.room.redaction", ALICE, extra={"redacts": levels.event_id}, prev=[fork]
    )
    lowered = builder.power_levels(
        BOB,
        content=_LOWERED,
        prev=[levels.event_id],
        state=builder.state_after[levels.event_id],
    )
    ingester = room.ingester(counting, run_reader=_run_reader(counting, together))
    assert _fine(await ingester.receive_pdus(REMOTE, [redaction.raw]))
    outcomes = await ingester.receive_pdus(REMOTE, [levels.raw, lowered.raw])
    assert _fine(outcomes)
    # The levels are written alone: once written, storage reads them
    # redacted, and so does the run that judges Bob's change.
    assert counting.persists == [
        [redaction.event_id],
        [levels.event_id],
        [lowered.event_id],
    ]


# --- Runs that follow their room's last write ------------------------------------------


class _CountingRunReads(RunReads):
    """The run reader, counting the runs that read."""

    def __init__(self, readers: ReaderPool) -> None:
        super().__init__(readers)
        self.reads = 0

    async def read_room_run(self, room_id: str, **kw: Any) -> Any:
        self.reads += 1
        return await super().read_room_run(room_id, **kw)


class _Runs:
    """An ingester whose runs may follow the room's last write, as the
    server's do: storage writes its runs and hands out marks."""

    def __init__(self, room: Room, storage: Storage, answers: Any = None) -> None:
        self.run_reads = _CountingRunReads(storage.readers)
        self.ingester = room.ingester(
            storage, run_reader=self.run_reads, answers=storage if answers is None else answers
        )

    async def send(self, events: Sequence[Pdu]) -> list[PduOutcome]:
        return await self.ingester.receive_pdus(REMOTE, [event.raw for event in events])


async def test_the_next_transaction_of_a_room_is_judged_without_reading_it(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    runs = _Runs(room, counting)
    first = [builder.message(BOB, f"first {n}") for n in range(10)]
    assert _fine(await runs.send(first))
    assert runs.run_reads.reads == 1
    counting.counting.count = 0
    mark = counting.room_mark(builder.room_id)
    second = [builder.message(BOB, f"second {n}") for n in range(10)]
    assert _fine(await runs.send(second))
    # Not one read: what the first run's write left was all it needed.
    assert (runs.run_reads.reads, counting.counting.count) == (1, 0)
    assert counting.room_mark(builder.room_id) != mark
    assert await counting.get_forward_extremities(builder.room_id) == {second[-1].event_id}
    assert set(await counting.get_events([e.event_id for e in second])) == {
        e.event_id for e in second
    }


async def test_a_write_since_the_last_run_makes_the_next_one_read(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    runs = _Runs(room, counting)
    assert _fine(await runs.send([builder.message(BOB, "first")]))
    # A write that may touch any room, then one of the room itself.
    await counting.store_room("!elsewhere:ours.test", builder.version)
    assert _fine(await runs.send([builder.message(BOB, "second")]))
    await ingest_all(counting, [builder.message(ALICE, "written here meanwhile")])
    assert _fine(await runs.send([builder.message(BOB, "third")]))
    assert runs.run_reads.reads == 3
    assert await counting.get_forward_extremities(builder.room_id) == {builder.last}


async def test_a_run_the_room_changed_under_is_judged_again_by_one_that_reads(
    counting: CountingStorage, room: Room
) -> None:
    builder = room.builder
    start = builder.message(BOB, "first")
    # A message of ours beside the remote's next ones, written just before
    # their run's write: the race, made to happen.
    local = builder.message(ALICE, "ours, meanwhile", prev=[start.event_id])
    after = [builder.message(BOB, "after 0", prev=[start.event_id])]
    after += [builder.message(BOB, f"after {n}") for n in range(1, 4)]

    class WritesFirst:
        """Storage, with the local message written before the first run
        that follows a mark."""

        def __init__(self) -> None:
            self.since: list[WriteMark | None] = []

        async def persist_run(
            self, room_id: str, events: Sequence[EventToPersist], **kw: Any
        ) -> RunWritten:
            self.since.append(kw.get("since"))
            if kw.get("since") is not None and len(self.since) == 2:
                await ingest_all(counting, [local])
            return await counting.persist_run(room_id, events, **kw)

        def room_mark(self, room_id: str) -> WriteMark | None:
            return counting.room_mark(room_id)

    racing = WritesFirst()
    runs = _Runs(room, counting, answers=racing)
    assert _fine(await runs.send([start]))
    outcomes = await runs.send(after)
    assert _fine(outcomes)
    # Refused as stale, then read and written.
    assert [since is not None for since in racing.since] == [False, True, False]
    assert runs.run_reads.reads == 2
    assert await counting.get_forward_extremities(builder.room_id) == {
        local.event_id,
        after[-1].event_id,
    }
    assert set(await counting.get_events([e.event_id for e in after])) == {
        e.event_id for e in after
    }


async def test_runs_that_follow_their_room_end_as_runs_that_read_do(
    tmp_path: Path, nursery: trio.Nursery, room: Room
) -> None:
    reading = await _open(tmp_path, nursery, room, "reading")
    following = await _open(tmp_path, nursery, room, "following")
    builder = room.builder
    m = [builder.message(BOB, f"message {n}") for n in range(3)]
    topic = builder.topic(ALICE, "a topic")
    after_topic = builder.message(BOB, "after the topic")
    last_topic = builder.topic(ALICE, "a topic to end a transaction with")
    m4, m5, m6 = (builder.message(BOB, name) for name in ("four", "five", "six"))
    carol = builder.message(CAROL, "relayed")
    m7 = builder.message(BOB, "seven")
    # Stored before any run, as an outlier, then pushed in the DAG.
    outlier = builder.message(BOB, "seen before as an outlier")
    transactions = [
        list(m),
        [topic, after_topic],
        [last_topic],
        [m4, m5],
        # Stored by the run before: known.
        [m5, m6],
        [carol],
        [m7],
        [outlier],
    ]
    for storage in (reading, following):
        await ingest(storage, outlier, outlier=True)
    plain = room.ingester(reading)
    runs = _Runs(room, following)
    for events in transactions:
        expected = await plain.receive_pdus(REMOTE, [event.raw for event in events])
        outcomes = await runs.send(events)
        assert [_verdict(o) for o in outcomes] == [_verdict(o) for o in expected]
    every_id = [event.event_id for events in transactions for event in events]
    expected_state = await _snapshot(reading, builder.room_id, every_id)
    assert await _snapshot(following, builder.room_id, every_id) == expected_state
    assert expected_state["extremities"] == {outlier.event_id}
    assert not expected_state["events"][outlier.event_id][1]
    # Read at the start, for events citing what the run before did not hold
    # (Alice's membership; Bob's after Alice's topic, which left no state
    # to follow from anyway; Carol's, then Bob's again), and after a run
    # was refused (an event stored before the mark): six times in eight.
    assert runs.run_reads.reads == 6
