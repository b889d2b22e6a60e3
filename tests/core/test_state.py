from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import pytest
import trio
from _rooms import ALICE, BOB, CAROL, DAVE, CountingStorage

from ranvier.core import compute_event_context, event_to_persist, resolve_state_maps
from ranvier.core.state import changes_between, drive_steps, resolve_state_groups
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import get_room_version
from ranvier.protocol.state_res import ChangedState, resolve_state, resolve_state_steps
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

MEMBER = "m.room.member"


@pytest.fixture
async def counting(tmp_path: Path, nursery: trio.Nursery) -> CountingStorage:
    store = CountingStorage(tmp_path / "counting.db")
    await nursery.start(store.run)
    return store


async def _persist_plain(storage: Storage, events: Sequence[Pdu]) -> None:
    """Write events with their contexts, skipping the auth checks."""
    for event in events:
        context = await compute_event_context(event, storage, storage)
        await storage.persist_events([event_to_persist(event, context)])


def _custom_fork(room: RoomBuilder, fork: str, label: str, count: int) -> str:
    last = fork
    for n in range(count):
        last = room.send("m.custom", ALICE, {"v": label}, state_key=str(n), prev=[last]).event_id
    return last


@pytest.mark.parametrize("version", ["10", "12"])
async def test_join_rules_against_a_join_resolves_as_in_memory(
    counting: CountingStorage, version: str
) -> None:
    # One branch closes the room while on the other Dave joins it.
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    fork = room.last
    closed = room.join_rules(ALICE, "invite")
    dave = room.member(DAVE, "join", prev=[fork])
    await ingest_all(counting, [e for e in room.events.values() if e not in (closed, dave)])
    await _persist_plain(counting, [closed, dave])
    sets = [room.state_after[closed.event_id], room.state_after[dave.event_id]]

    resolved = await resolve_state_maps(counting, room.room_id, get_room_version(version), sets)
    assert resolved == resolve_state(version, sets, room.events)
    # The join rules change is a power event and goes first; Dave's join
    # then fails against an invite-only room.
    assert resolved[("m.room.join_rules", "")] == closed.event_id
    assert (MEMBER, DAVE) not in resolved


@pytest.mark.parametrize("version", ["10", "12"])
async def test_only_the_events_the_resolution_needs_are_read(
    counting: CountingStorage, version: str
) -> None:
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    for n in range(300):
        room.member(f"@user{n}:example.org", "join")
    fork = room.last
    # Both cite the same auth events, so their auth chains agree and the
    # auth difference is empty without a look at the rest of the state.
    left = room.topic(ALICE, "left")
    right = room.topic(ALICE, "right", prev=[fork])
    await ingest_all(counting, [e for e in room.events.values() if e not in (left, right)])
    await _persist_plain(counting, [left, right])
    sets = [room.state_after[left.event_id], room.state_after[right.event_id]]

    read_before = counting.events_read
    resolved = await resolve_state_maps(counting, room.room_id, get_room_version(version), sets)
    assert resolved == resolve_state(version, sets, room.events)
    assert resolved[("m.room.topic", "")] == right.event_id
    # The topics, what they cite, the power levels: not the 300 members.
    assert counting.events_read - read_before < 20


async def test_states_that_agree_need_no_events(counting: CountingStorage) -> None:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(counting, list(room.events.values()))
    state = room.state_after[room.last]
    read_before = counting.events_read
    resolved = await resolve_state_maps(
        counting, room.room_id, get_room_version("10"), [state, dict(state)]
    )
    assert resolved == state
    assert counting.events_read == read_before
    assert await resolve_state_maps(counting, room.room_id, get_room_version("10"), []) == {}


def _renames_around_a_power_change() -> tuple[RoomBuilder, list[Pdu], dict[StateKey, str]]:
    """v11: Bob renames himself on two sides, then changes the power levels
    (P) on the later one; after a merge Alice sets the topic, citing P.

    Returns the room, the two tips (after P, after the topic) and the
    resolved state's changes against the first tip: the topic (Bob keeps
    his later name, "x", which the first tip has).
    """
    room = RoomBuilder("11")
    room.public_room(BOB, users={ALICE: 100, BOB: 100})
    fork = room.last
    y = room.member(BOB, "join", content={"displayname": "y"})
    x = room.member(BOB, "join", content={"displayname": "x"}, prev=[fork])
    p = room.power_levels(BOB, {ALICE: 100, BOB: 100, CAROL: 50})
    states = [room.state_after[p.event_id], room.state_after[y.event_id]]
    topic = room.topic(
        ALICE, "t", prev=[p.event_id, y.event_id], state=resolve_state("11", states, room.events)
    )
    return room, [p, topic], {("m.room.topic", ""): topic.event_id, (MEMBER, BOB): x.event_id}


def _a_topic_a_merge_took_out() -> tuple[RoomBuilder, list[Pdu], dict[StateKey, str]]:
    """v12: Bob sets the topic, Alice demotes him (U); a merge with a side
    that saw neither rejects the topic; Carol joins after it, citing U.
    Alice's message on the first side still has the topic.

    Returns the room, the two tips (Alice's message, Carol's join) and the
    resolved state's changes against the first: Carol's join.
    """
    room = RoomBuilder("12")
    room.public_room(BOB, users={BOB: 50})
    fork = room.last
    room.topic(BOB, "bob")
    u = room.power_levels(ALICE, {BOB: 0})
    states = [room.state_after[u.event_id], room.state_after[fork]]
    room.message(
        ALICE, "merge", prev=[u.event_id, fork], state=resolve_state("12", states, room.events)
    )
    carol = room.member(CAROL, "join")
    message = room.message(ALICE, "on the first side", prev=[u.event_id])
    return room, [message, carol], {(MEMBER, CAROL): carol.event_id}


@pytest.mark.parametrize("build", [_renames_around_a_power_change, _a_topic_a_merge_took_out])
async def test_events_every_state_holds_are_not_replayed(
    storage: Storage,
    build: Callable[[], tuple[RoomBuilder, list[Pdu], dict[StateKey, str]]],
) -> None:
    # Each room resolves differently when an unconflicted event cited on
    # one side only is replayed (tests/protocol/test_state_res_auth_difference.py
    # works both through); core's walk leaves such events out, as Synapse does.
    room, tips, changes = build()
    await ingest_all(storage, room.order[:4])
    await _persist_plain(storage, room.order[4:])
    states = [room.state_after[tip.event_id] for tip in tips]
    expected = states[0] | changes
    assert resolve_state(room.version, states, room.events) == expected

    resolved = await resolve_state_maps(storage, room.room_id, room.room_version, states)
    assert resolved == expected
    groups = []
    for tip in tips:
        event_groups = await storage.get_event_state_groups(tip.event_id)
        assert event_groups is not None
        groups.append(event_groups.after)
    from_groups = await resolve_state_groups(storage, room.room_id, room.room_version, groups)
    base = await storage.get_state_ids(from_groups.base_group)
    assert dict(ChangedState(base, from_groups.changes)) == expected


def _conflicted_room(count: int) -> tuple[RoomBuilder, list[dict[tuple[str, str], str]]]:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    fork = room.last
    left = _custom_fork(room, fork, "left", count)
    right = _custom_fork(room, fork, "right", count)
    return room, [room.state_after[left], room.state_after[right]]


async def test_the_driver_lets_other_tasks_run_between_steps() -> None:
    room, sets = _conflicted_room(300)

    def steps() -> Generator[None, None, dict[tuple[str, str], str]]:
        return resolve_state_steps("10", sets, room.events, yield_every=20)

    yields = 0
    counted = steps()
    try:
        while True:
            next(counted)
            yields += 1
    except StopIteration as done:
        expected = done.value
    assert yields > 30

    ticks = 0
    result: dict[tuple[str, str], str] = {}

    async def tick() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    async def resolve() -> None:
        nonlocal result
        result = await drive_steps(steps())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await resolve()
        nursery.cancel_scope.cancel()
    assert result == expected
    # Without a checkpoint per step the ticker would not run at all.
    assert ticks >= yields // 2


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_long_resolution_through_storage_checkpoints(storage: Storage) -> None:
    room, sets = _conflicted_room(200)
    await ingest_all(storage, list(room.events.values())[:6])
    await _persist_plain(storage, list(room.events.values())[6:])

    counter = _StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        counter.task = trio.lowlevel.current_task()
        resolved = await resolve_state_maps(
            storage, room.room_id, get_room_version("10"), sets, yield_every=10
        )
    finally:
        counter.task = None
        trio.lowlevel.remove_instrument(counter)
    assert resolved == resolve_state("10", sets, room.events)
    # 400 conflicted events, a checkpoint every 10 of them at least.
    assert counter.steps >= 40


def test_changes_between_states() -> None:
    base = {("a", ""): "$1", ("b", ""): "$2", ("c", ""): "$3"}
    state = {("a", ""): "$1", ("b", ""): "$9", ("d", ""): "$4"}
    assert changes_between(base, state) == {("b", ""): "$9", ("c", ""): None, ("d", ""): "$4"}
    assert changes_between(base, dict(base)) == {}
