"""The race between writing a room's events and finishing its partial state,
made to happen at each point where it can, on every path an event takes.

Our server joined Bob's room with partial state (:class:`RaceRoom`). A
writer (federation ingestion, a local client, a remote membership through
us) is parked at a hook point of the real storage (:class:`ProbedStorage`)
while the real un-partial-state task runs, then let on. Whatever the order,
each event must end written once, with full state, and our copy of the room
must be what a server that had the full state from the start makes of the
same events (:func:`assert_matches_reference`).

Every writer of this server shares the task's room locks, so the task
cannot clear a room while a writer holds a context computed on partial
state: it waits, and redoes what the writer wrote. A writer that does not
share them (another process's, say) meets the conflict in storage instead,
and computes its context again; both are shown. Last, hypothesis draws
the order in which parked writers and the task go on, over many runs.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _races import (
    ACTOR,
    ALICE,
    BOB,
    CAROL,
    CROWD,
    DAN,
    OURS,
    REMOTE,
    THIRD,
    ProbedRoomLocks,
    ProbedStorage,
    RaceRoom,
    Turnstile,
    as_actor,
    assert_matches_reference,
    count_events_saying,
    dag_events,
    phase_is,
    running_stater,
    until,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from ranvier.core.ingest import PduOutcome, RoomLocks
from ranvier.errors import LimitExceededError, MatrixError
from ranvier.federation.membership import add_membership_routes
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.events import Pdu
from ranvier.storage import EventToPersist, Storage
from ranvier.testing import KnownKeys, ingest


@pytest.fixture
async def reference(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    """A server that has had the room's full state all along."""
    store = Storage(tmp_path / "reference.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


def redone(turnstile: Turnstile, event_id: str) -> int:
    """How often the task gave ``event_id`` its full state."""
    return turnstile.log.count(f"stater: redo {event_id[:9]}")


# --- Federation ingestion ---------------------------------------------------------------


async def test_a_pushed_event_held_before_its_write_holds_the_clear_back(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    autojump_clock: MockClock,
) -> None:
    pushed = race.later[0]
    locks = RoomLocks()
    turnstile.arm("remote", "persist", pushed.event_id)
    results: list[Any] = []
    ingester = race.ingester(probed, locks)
    async with trio.open_nursery() as nursery:
        receive = functools.partial(ingester.receive_pdus, REMOTE, [pushed.raw])
        nursery.start_soon(as_actor, "remote", receive, results)
        assert "(partial)" in await turnstile.wait_parked("remote")
        stater = race.stater(probed, locks)
        async with running_stater(stater):
            await until(phase_is(stater, race.room_id, "clearing"), "the task to reach the lock")
            # Everything written before is redone, and the room stays
            # partial while the held writer has its lock.
            assert await storage.get_partial_state_events(race.room_id) == []
            assert await storage.is_partial_state_room(race.room_id)
            assert probed.clears == []
            turnstile.release("remote")
            await stater.wait_for_full_state(race.room_id)

    ((outcome,),) = results
    assert outcome.error is None
    assert outcome.result is not None
    assert outcome.result.context.partial_state
    # Written once, as it was computed; the task found it and redid it.
    assert probed.writes_of(pushed.event_id) == [(True, "written")]
    assert redone(turnstile, pushed.event_id) == 1
    assert probed.clears == ["cleared"]
    assert count_events_saying(db_path, "pushed 1") == 1
    await assert_matches_reference(race, storage, db_path, reference)


@pytest.mark.parametrize("path", ["pushed", "pulled", "gap"])
async def test_an_event_whose_room_is_cleared_under_it_is_written_again_with_full_state(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    path: str,
    autojump_clock: MockClock,
) -> None:
    """An ingester that does not share the task's room locks: the task
    finishes while the event waits with its partial context, storage refuses
    the write, and the context is computed again, now on full state.
    ``gap``: the held event is one ingestion pulled with
    ``get_missing_events`` to fill the gap before a pushed one.
    """
    held, pushed_after = race.later[0], race.later[1]
    ingester = race.ingester(probed, RoomLocks())
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "pushed": functools.partial(ingester.on_receive_pdu, REMOTE, held),
        "pulled": functools.partial(ingester.on_pulled_events, REMOTE, [held]),
        "gap": functools.partial(ingester.on_receive_pdu, REMOTE, pushed_after),
    }
    turnstile.arm("remote", "persist", held.event_id)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(as_actor, "remote", calls[path], results)
        assert "(partial)" in await turnstile.wait_parked("remote")
        stater = race.stater(probed, RoomLocks())
        async with running_stater(stater):
            await stater.wait_for_full_state(race.room_id)
        assert not await storage.is_partial_state_room(race.room_id)
        turnstile.release("remote")

    (result,) = results
    assert not isinstance(result, Exception), result
    (outcome,) = result if path == "pulled" else [result]
    assert outcome.error is None
    assert probed.writes_of(held.event_id) == [(True, "conflict"), (False, "written")]
    if path == "gap":
        assert race.remote.called("get_missing_events") == [REMOTE]
        assert probed.writes_of(pushed_after.event_id) == [(False, "written")]
    assert redone(turnstile, held.event_id) == 0
    assert count_events_saying(db_path, "pushed 1") == 1
    await assert_matches_reference(race, storage, db_path, reference)


async def test_the_task_goes_round_again_for_an_event_written_before_its_clear(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    autojump_clock: MockClock,
) -> None:
    """Without a shared lock, an event with partial state can be written
    after the task's last look and before its clear: storage refuses the
    clear and the task redoes the event first.
    """
    pushed = race.later[0]
    turnstile.arm("remote", "persist", pushed.event_id)
    turnstile.arm("stater", "clear")
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        ingester = race.ingester(probed, RoomLocks())
        receive = functools.partial(ingester.on_receive_pdu, REMOTE, pushed)
        nursery.start_soon(as_actor, "remote", receive, results)
        assert "(partial)" in await turnstile.wait_parked("remote")
        stater = race.stater(probed, RoomLocks())
        async with running_stater(stater):
            await turnstile.wait_parked("stater")
            assert await storage.get_partial_state_events(race.room_id) == []
            turnstile.release("remote")
            await until(lambda: bool(results), "the event to be written")
            assert await storage.get_partial_state_events(race.room_id) == [pushed.event_id]
            turnstile.release("stater")
            await stater.wait_for_full_state(race.room_id)

    assert not isinstance(results[0], Exception), results
    assert probed.clears == ["events remain", "cleared"]
    assert probed.writes_of(pushed.event_id) == [(True, "written")]
    assert redone(turnstile, pushed.event_id) == 1
    await assert_matches_reference(race, storage, db_path, reference)


# --- Local clients ------------------------------------------------------------------------


async def test_a_client_event_cleared_under_it_is_written_once_with_full_state(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    autojump_clock: MockClock,
) -> None:
    creator = race.creator(probed, RoomLocks())
    turnstile.arm("client", "persist")
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        send = functools.partial(
            creator.send_event, ALICE, race.room_id, "m.room.message", {"body": "sent once"}
        )
        nursery.start_soon(as_actor, "client", send, results)
        assert "(partial)" in await turnstile.wait_parked("client")
        stater = race.stater(probed, RoomLocks())
        async with running_stater(stater):
            await stater.wait_for_full_state(race.room_id)
        turnstile.release("client")

    (event_id,) = results
    assert isinstance(event_id, str), event_id
    assert probed.writes_of(event_id) == [(True, "conflict"), (False, "written")]
    assert count_events_saying(db_path, "sent once") == 1
    assert await storage.get_forward_extremities(race.room_id) == {event_id}
    await assert_matches_reference(race, storage, db_path, reference)


class ReplaysTheFirstWrite(ProbedStorage):
    """Writes an event again with the context it was first written with, as
    a persister replaying a stale request would.

    The creator computes its context again after a conflict, and with the
    room's partial state gone it comes out full, so nothing real makes its
    second write conflict too; this does, and the conflict is still the
    one storage itself raises.
    """

    def __init__(self, storage: Storage, turnstile: Turnstile) -> None:
        super().__init__(storage, turnstile)
        self.first: dict[str, EventToPersist] = {}

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        replayed = [self.first.setdefault(event.event_id, event) for event in events]
        return await super().persist_events(replayed, current_state_groups=current_state_groups)


async def test_a_client_event_conflicting_twice_is_handed_back_with_429(
    race: RaceRoom,
    storage: Storage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    autojump_clock: MockClock,
) -> None:
    replaying = ReplaysTheFirstWrite(storage, turnstile)
    creator = race.creator(replaying, RoomLocks(), conflict_retry_after_ms=750)
    turnstile.arm("client", "persist")
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        send = functools.partial(
            creator.send_event, ALICE, race.room_id, "m.room.message", {"body": "never written"}
        )
        nursery.start_soon(as_actor, "client", send, results)
        assert "(partial)" in await turnstile.wait_parked("client")
        stater = race.stater(replaying, RoomLocks())
        async with running_stater(stater):
            await stater.wait_for_full_state(race.room_id)
        turnstile.release("client")

    (error,) = results
    assert isinstance(error, LimitExceededError)
    assert (error.errcode, error.http_status) == ("M_LIMIT_EXCEEDED", 429)
    assert error.retry_after_ms == 750
    assert error.to_json()["retry_after_ms"] == 750
    event_id = replaying.writes[0].event_ids[0]
    assert replaying.writes_of(event_id) == [(True, "conflict"), (True, "conflict")]
    assert count_events_saying(db_path, "never written") == 0
    assert await storage.get_events([event_id]) == {}
    assert await storage.get_forward_extremities(race.room_id) == {race.tip.event_id}
    await assert_matches_reference(race, storage, db_path, reference)


@pytest.mark.parametrize("second_read", ["partial?", "groups"])
@pytest.mark.parametrize("writer", ["client", "remote"])
async def test_a_context_read_across_the_redo_of_its_prev_event_keeps_its_state_right(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    writer: str,
    second_read: str,
    autojump_clock: MockClock,
) -> None:
    """The task redoes events without the room's lock, so a writer computing
    a context may read its prev event's state group and whether that event
    has partial state on either side of the redo: it is parked before one
    of the two reads while the task redoes the prev event. Either way the
    event must not end up with the partial state taken for full.
    """
    locks = RoomLocks()
    write: Callable[[], Awaitable[object]]
    if writer == "client":
        creator = race.creator(probed, locks)
        write = functools.partial(
            creator.send_event, ALICE, race.room_id, "m.room.message", {"body": "across"}
        )
    else:
        pushed = race.room.message(BOB, "across", prev=[race.tip.event_id])
        write = functools.partial(race.ingester(probed, locks).receive_pdus, REMOTE, [pushed.raw])
    turnstile.arm(writer, second_read, race.tip.event_id)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(as_actor, writer, write, results)
        await turnstile.wait_parked(writer)
        stater = race.stater(probed, locks)
        async with running_stater(stater):
            await until(phase_is(stater, race.room_id, "clearing"), "the task to reach the lock")
            assert await storage.get_partial_state_event_ids([race.tip.event_id]) == frozenset()
            turnstile.release(writer)
            await stater.wait_for_full_state(race.room_id)

    (result,) = results
    assert not isinstance(result, Exception), result
    if writer == "remote":
        assert [outcome.error for outcome in result] == [None]
    assert count_events_saying(db_path, "across") == 1
    await assert_matches_reference(race, storage, db_path, reference)


# --- Remote memberships through us --------------------------------------------------------


async def _send_membership(router: Router, membership: str, event: Pdu) -> Any:
    path = f"/_matrix/federation/v2/send_{membership}/{event.room_id}/{event.event_id}"
    match = router.match("PUT", path)
    request = Request(
        method="PUT",
        uri=path,
        path_params=match.params,
        query={},
        headers=(),
        body=event.raw,
        content=event.json,
        origin=THIRD,
    )
    return await match.route.handler(request)


@pytest.mark.parametrize("membership", ["join", "leave"])
async def test_a_membership_through_us_waits_for_full_state_and_is_written_once(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    reference: Storage,
    membership: str,
    autojump_clock: MockClock,
) -> None:
    """send_join and send_leave answer 404 while the room is partial here,
    before any context is computed, so the race cannot reach them: the
    remote server asks another, or asks us again once the task is done.
    """
    locks = RoomLocks()
    router = Router()
    add_membership_routes(
        router,
        server_name=OURS,
        signing_key=race.keys[OURS],
        store=probed,
        persister=probed,
        keys=KnownKeys(race.keys),
        room_lock=locks.hold,
    )
    user = DAN if membership == "join" else CAROL
    event = race.room.draft_member(user, membership, prev=[race.tip.event_id])
    ACTOR.set("membership")

    with pytest.raises(MatrixError) as refused:
        await _send_membership(router, membership, event)
    assert (refused.value.errcode, refused.value.http_status) == ("M_NOT_FOUND", 404)
    assert "full state" in refused.value.message

    turnstile.arm("stater", "clear")
    stater = race.stater(probed, locks)
    async with running_stater(stater):
        await turnstile.wait_parked("stater")
        # The task is clearing, under the room's lock: still partial, still 404.
        with pytest.raises(MatrixError) as refused:
            await _send_membership(router, membership, event)
        assert refused.value.http_status == 404
        turnstile.release("stater")
        await stater.wait_for_full_state(race.room_id)
    assert probed.writes_of(event.event_id) == []

    answer = await _send_membership(router, membership, event)
    if membership == "join":
        # Answered from the full state: the members the partial join lacked too.
        state = [msgspec.json.decode(raw) for raw in answer["state"]]
        members = {event["state_key"] for event in state if event["type"] == "m.room.member"}
        assert set(CROWD) <= members
    assert probed.writes_of(event.event_id) == [(False, "written")]
    await assert_matches_reference(race, storage, db_path, reference)


# --- Interleavings drawn by hypothesis ------------------------------------------------------

#: Where writers stop: reading a prev event's groups, asking whether it is
#: partial, writing. Where the task stops: redoing an event, clearing.
_WRITER_POINTS = frozenset({"groups", "partial?", "persist"})
_STATER_POINTS = frozenset({"redo", "clear"})


def _held(actor: str, kind: str) -> bool:
    return kind in (_STATER_POINTS if actor == "stater" else _WRITER_POINTS)


@dataclass(frozen=True)
class Template:
    """Our storage right after the partial join, and the reference with the
    history before it, on disk: each run starts from copies.
    """

    race: RaceRoom
    directory: Path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    directory = tmp_path_factory.mktemp("partial-join")
    race = RaceRoom()

    async def build() -> None:
        async with trio.open_nursery() as nursery:
            ours = Storage(directory / "ours.db", synchronous="OFF")
            await nursery.start(ours.run)
            reference = Storage(directory / "reference.db", synchronous="OFF")
            await nursery.start(reference.run)
            await race.join_partially(ours)
            for event in race.history:
                await ingest(reference, event)
            nursery.cancel_scope.cancel()

    trio.run(build)
    return Template(race, directory)


@dataclass(frozen=True)
class Plan:
    """One run: what Alice sends (in order), how many of Bob's prepared
    events his server pushes (in one transaction or one each), and at each
    step, which task goes on if it is parked (otherwise, and past the end,
    the first parked in name order).
    """

    sends: tuple[str, ...]
    pushes: tuple[int, ...]
    one_transaction: bool
    choices: tuple[str, ...]


_plans = st.builds(
    Plan,
    sends=st.lists(st.sampled_from(["message", "topic"]), max_size=3).map(tuple),
    # In order: a gap would have Bob's server asked for the events before
    # one, and it does not know Alice's, so it would walk back into the
    # history before the join (the gap itself is shown on its own above).
    pushes=st.integers(0, 3).map(lambda count: tuple(range(count))),
    one_transaction=st.booleans(),
    choices=st.lists(st.sampled_from(["client", "remote", "stater"]), max_size=60).map(tuple),
)


async def _settle(turnstile: Turnstile, live: Callable[[], set[str]]) -> None:
    """Wait until every live task is parked or waits for a room's lock, so
    that which tasks are parked does not depend on threads' timing.
    """

    def settled() -> bool:
        return all(a in turnstile.parked or a in turnstile.lock_waiting for a in live())

    await until(settled, "every task to reach a hook point or a lock")


async def _run_plan(template: Template, plan: Plan, directory: Path, schedule: list[str]) -> None:
    race = template.race
    room_id = race.room_id
    turnstile = Turnstile(hold=_held)
    async with trio.open_nursery() as root:
        ours = Storage(directory / "ours.db", synchronous="OFF")
        await root.start(ours.run)
        reference = Storage(directory / "reference.db", synchronous="OFF")
        await root.start(reference.run)
        probed = ProbedStorage(ours, turnstile)
        locks = ProbedRoomLocks(turnstile)
        ingester = race.ingester(probed, locks)
        creator = race.creator(probed, locks)
        stater = race.stater(probed, locks)
        sent: dict[str, object] = {}
        received: list[PduOutcome] = []
        running = {"client", "remote"}

        async def client() -> None:
            for number, kind in enumerate(plan.sends):
                text = f"sent {number}"
                try:
                    if kind == "message":
                        body = {"body": text}
                        sent[text] = await creator.send_event(
                            ALICE, room_id, "m.room.message", body
                        )
                    else:
                        topic = {"topic": text}
                        sent[text] = await creator.send_event(
                            ALICE, room_id, "m.room.topic", topic, state_key=""
                        )
                except MatrixError as exc:
                    sent[text] = exc

        async def remote() -> None:
            raws = [race.later[index].raw for index in plan.pushes]
            transactions = [raws] if plan.one_transaction else [[raw] for raw in raws]
            for pdus in transactions:
                if pdus:
                    received.extend(await ingester.receive_pdus(REMOTE, pdus))

        async def actor(name: str, work: Callable[[], Awaitable[None]]) -> None:
            ACTOR.set(name)
            try:
                await work()
            finally:
                running.discard(name)

        def live() -> set[str]:
            return running | ({"stater"} if room_id in stater.status() else set())

        async with running_stater(stater):
            async with trio.open_nursery() as actors:
                actors.start_soon(actor, "client", client)
                actors.start_soon(actor, "remote", remote)
                for step in range(300):
                    await _settle(turnstile, live)
                    if not await ours.is_partial_state_room(room_id):
                        assert await ours.get_partial_state_events(room_id) == [], (
                            "partial-state events left in a room with full state"
                        )
                    if not turnstile.parked:
                        assert not live(), f"{sorted(live())} wait for each other"
                        break
                    wanted = plan.choices[step] if step < len(plan.choices) else ""
                    chosen = wanted if wanted in turnstile.parked else min(turnstile.parked)
                    schedule.append(turnstile.release(chosen))
                else:
                    raise AssertionError("the schedule does not end")
            await stater.wait_for_full_state(room_id)

        # Every send accepted (the room's lock keeps conflicts away from
        # them) and written once; every pushed event taken in, once.
        for text, result in sent.items():
            assert isinstance(result, str), f"{text}: {result!r}"
            assert count_events_saying(directory / "ours.db", text) == 1, text
        assert all(o.error is None and o.result is not None for o in received), received
        pushed_up_to = max(plan.pushes, default=-1)
        for index in range(3):
            expected = 1 if index <= pushed_up_to else 0
            found = count_events_saying(directory / "ours.db", f"pushed {index + 1}")
            assert found == expected, f"pushed {index + 1} written {found} times"
        stored = {event_id for event_id, _ in dag_events(directory / "ours.db", room_id)}
        assert stored == {
            race.join.event_id,
            *(event.event_id for event in race.after_join),
            *(event.event_id for event in race.later[: pushed_up_to + 1]),
            *(result for result in sent.values() if isinstance(result, str)),
        }
        await assert_matches_reference(race, ours, directory / "ours.db", reference)
        root.cancel_scope.cancel()


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plan=_plans)
def test_any_interleaving_of_writers_and_the_task_ends_in_the_full_state(
    template: Template, plan: Plan
) -> None:
    """Bob's server pushes events, Alice sends some, and the un-partial-state
    task runs, all sharing the room locks as the server wires them; the
    order in which parked tasks go on is drawn. Whatever it is, no event is
    lost or written twice, no partial-state event outlives the room's
    partial state, and the room ends as the reference has it.
    """
    schedule: list[str] = []
    with tempfile.TemporaryDirectory(dir=template.directory.parent) as scratch:
        directory = Path(scratch) / "run"
        shutil.copytree(template.directory, directory)
        try:
            trio.run(
                _run_plan,
                template,
                plan,
                directory,
                schedule,
                clock=MockClock(autojump_threshold=0),
            )
        except Exception as exc:
            steps = "\n".join(f"  {n:>3}. {step}" for n, step in enumerate(schedule, start=1))
            note(f"schedule:\n{steps}")
            raise AssertionError(f"{plan}\nwent wrong after this schedule:\n{steps}") from exc
