"""The changes between state groups, read without reading their states."""

from __future__ import annotations

import functools
import random
import sqlite3
from collections.abc import Callable, Mapping

import pytest

from ranvier.errors import MatrixError
from ranvier.storage import Storage, reads
from ranvier.storage.records import StateDelta, StateKey, StateMap
from ranvier.storage.state_groups import read_state, store_state_group

ROOM = "!room:example.org"
OTHER_ROOM = "!other:example.org"
CREATE = ("m.room.create", "")
POWER = ("m.room.power_levels", "")
TOPIC = ("m.room.topic", "")


def _member(n: int) -> StateKey:
    return ("m.room.member", f"@user{n}:example.org")


def _apply(base: StateMap, delta: StateDelta) -> StateMap:
    state = dict(base)
    for key, event_id in delta.items():
        if event_id is None:
            state.pop(key, None)
        else:
            state[key] = event_id
    return state


def _check_deltas(conn: sqlite3.Connection, groups: list[int]) -> Mapping[int, StateDelta]:
    """Read the deltas of ``groups`` and check each against the whole states."""
    base, deltas = reads.get_state_deltas(conn, groups)
    assert base == groups[0]
    assert set(deltas) == set(groups)
    assert deltas[base] == {}
    whole_base = read_state(conn, base)
    for group, delta in deltas.items():
        assert _apply(whole_base, delta) == read_state(conn, group)
        # Nothing but real differences: a key the base has where the
        # group has another event or none, or a key the base lacks.
        for key, event_id in delta.items():
            assert whole_base.get(key) != event_id, (group, key)
    return deltas


def test_deltas_of_forks_through_merged_chains_and_new_snapshots(
    conn: sqlite3.Connection,
) -> None:
    """Random trees of groups with short chains, so that groups are merged
    into one hop from their snapshot and, once the changes outgrow it,
    stored as new snapshots whose chains share nothing with the others'.
    """
    for seed in range(25):
        rng = random.Random(seed)
        state: StateMap = {CREATE: "$create", POWER: "$power0"}
        state.update({_member(n): f"$join{n}" for n in range(12)})
        root = store_state_group(conn, ROOM, None, state)
        groups = [root]
        for step in range(40):
            parent = rng.choice(groups)
            delta: dict[StateKey, str | None] = {}
            for _ in range(rng.randint(1, 4)):
                key = rng.choice([TOPIC, POWER, *(_member(n) for n in range(16))])
                delta[key] = None if rng.random() < 0.25 else f"$e{seed}.{step}.{len(delta)}"
            groups.append(store_state_group(conn, ROOM, parent, delta, max_chain_length=3))
        for _ in range(6):
            picked = rng.sample(groups, rng.randint(1, 4))
            _check_deltas(conn, picked)


def test_groups_with_unrelated_chains_are_compared_whole(conn: sqlite3.Connection) -> None:
    state: StateMap = {CREATE: "$create", POWER: "$power", _member(1): "$join1"}
    first = store_state_group(conn, ROOM, None, state)
    left = store_state_group(conn, ROOM, first, {TOPIC: "$topic", _member(1): None})
    # The same room's state stored whole again, as a join stores the state
    # a remote server sent.
    again = store_state_group(conn, ROOM, None, state | {_member(2): "$join2"})
    deltas = _check_deltas(conn, [left, again, first])
    assert deltas[again] == {TOPIC: None, _member(1): "$join1", _member(2): "$join2"}
    assert deltas[first] == {TOPIC: None, _member(1): "$join1"}
    # Related groups: only the keys the fork changed.
    assert _check_deltas(conn, [first, left])[left] == {TOPIC: "$topic", _member(1): None}


def test_repeated_groups_and_a_group_alone(conn: sqlite3.Connection) -> None:
    group = store_state_group(conn, ROOM, None, {CREATE: "$create"})
    changed = store_state_group(conn, ROOM, group, {TOPIC: "$topic"})
    assert reads.get_state_deltas(conn, [group]) == (group, {group: {}})
    assert reads.get_state_deltas(conn, [changed, group, changed]) == (
        changed,
        {changed: {}, group: {TOPIC: None}},
    )
    # A change undone further down the chain is no difference at all.
    undone = store_state_group(conn, ROOM, changed, {TOPIC: None})
    assert reads.get_state_deltas(conn, [group, undone]) == (group, {group: {}, undone: {}})


def test_bad_groups_are_refused(conn: sqlite3.Connection) -> None:
    group = store_state_group(conn, ROOM, None, {CREATE: "$create"})
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (OTHER_ROOM,))
    other = store_state_group(conn, OTHER_ROOM, None, {CREATE: "$other"})

    with pytest.raises(MatrixError, match="no state groups") as caught:
        reads.get_state_deltas(conn, [])
    assert caught.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError, match="state group 4242 does not exist") as caught:
        reads.get_state_deltas(conn, [group, 4242])
    assert caught.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError, match="different rooms") as caught:
        reads.get_state_deltas(conn, [group, other])
    assert caught.value.errcode == "M_INVALID_PARAM"
    assert OTHER_ROOM in str(caught.value)


async def test_deltas_through_the_reader_pool(storage: Storage) -> None:
    base = await storage.store_state_group(ROOM, None, {CREATE: "$create", POWER: "$power"})
    left = await storage.store_state_group(ROOM, base, {TOPIC: "$left"})
    right = await storage.store_state_group(ROOM, base, {TOPIC: "$right", POWER: None})
    assert await storage.get_state_deltas([left, right, base]) == (
        left,
        {left: {}, right: {TOPIC: "$right", POWER: None}, base: {TOPIC: None}},
    )
    with pytest.raises(MatrixError, match="state group 99 does not exist"):
        await storage.get_state_deltas([99])


def _instructions(conn: sqlite3.Connection, read: Callable[[], object]) -> int:
    """How many SQLite virtual machine instructions ``read`` runs, in tens."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 10)
    try:
        read()
    finally:
        conn.set_progress_handler(None, 0)
    return count


def test_the_cost_follows_the_fork_not_the_state(conn: sqlite3.Connection) -> None:
    costs: dict[int, tuple[int, int]] = {}
    for size in (2_000, 40_000):
        room = f"!size{size}:example.org"
        conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (room,))
        state: StateMap = {CREATE: f"$create{size}", POWER: "$power"}
        state.update({_member(n): f"$join{n}" for n in range(size)})
        fork = store_state_group(conn, room, None, state)
        for step in range(20):
            fork = store_state_group(conn, room, fork, {_member(step): f"$again{step}"})
        left = right = fork
        for step in range(5):
            left = store_state_group(conn, room, left, {TOPIC: f"$left{step}"})
            right = store_state_group(conn, room, right, {_member(step): None})
        deltas = functools.partial(reads.get_state_deltas, conn, [left, right])
        assert deltas()[1][right] == {TOPIC: None} | {_member(n): None for n in range(5)}
        costs[size] = (
            _instructions(conn, functools.partial(read_state, conn, left)),
            _instructions(conn, deltas),
        )
    small, big = costs[2_000], costs[40_000]
    # The whole read grows with the state; the deltas stay put.
    assert big[0] > 10 * small[0]
    assert big[1] <= small[1] + 5
    assert big[1] * 30 < big[0]
