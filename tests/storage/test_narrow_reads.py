"""Reads of a few keys of a state, and of which events are partial, that cost
the same in a room of any size.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Collection

import pytest

from ranvier.errors import MatrixError
from ranvier.storage import EventToPersist, Storage, reads
from ranvier.storage.records import StateKey, StateMap
from ranvier.storage.state_groups import MAX_CHAIN_LENGTH, read_state, store_state_group

ROOM = "!room:example.org"
OTHER_ROOM = "!other:example.org"
CREATE = ("m.room.create", "")
POWER = ("m.room.power_levels", "")
TOPIC = ("m.room.topic", "")
EventFactory = Callable[..., EventToPersist]


def _member(n: int) -> StateKey:
    return ("m.room.member", f"@user{n}:example.org")


def _at(state: StateMap, keys: Collection[StateKey]) -> StateMap:
    return {key: state[key] for key in keys if key in state}


async def test_keys_of_a_group_through_deltas_removals_and_a_rebase(storage: Storage) -> None:
    model: StateMap = {CREATE: "$create", POWER: "$power0"}
    model.update({_member(n): f"$join{n}" for n in range(50)})
    group = await storage.store_state_group(ROOM, None, model)
    groups = [(group, dict(model))]
    # Long enough to pass the chain cap, so some groups are rebased.
    for step in range(MAX_CHAIN_LENGTH + 20):
        delta: dict[StateKey, str | None] = {_member(step % 60): f"$change{step}"}
        if step % 7 == 0:
            delta[_member((step * 3) % 50)] = None
        if step % 11 == 0:
            delta[POWER] = f"$power{step}"
        group = await storage.store_state_group(ROOM, group, delta)
        for key, event_id in delta.items():
            if event_id is None:
                model.pop(key, None)
            else:
                model[key] = event_id
        groups.append((group, dict(model)))

    wanted = [CREATE, POWER, TOPIC, *(_member(n) for n in (0, 3, 21, 55, 59, 99))]
    for group, state in groups[::9] + groups[-3:]:
        found = await storage.get_state_ids_for_keys(group, wanted)
        assert found == _at(state, wanted)
        assert found == _at(await storage.get_state_ids(group), wanted)
    assert await storage.get_state_ids_for_keys(groups[-1][0], []) == {}
    # A key the state never had is left out, not mapped to None.
    assert await storage.get_state_ids_for_keys(groups[0][0], [TOPIC]) == {}


async def test_keys_of_an_unknown_group(storage: Storage) -> None:
    with pytest.raises(MatrixError, match="state group 4242 does not exist") as caught:
        await storage.get_state_ids_for_keys(4242, [CREATE])
    assert caught.value.errcode == "M_NOT_FOUND"


async def test_keys_of_the_current_state_follow_it(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(
        ROOM, None, {CREATE: "$create", POWER: "$power", _member(1): "$join1"}
    )
    changed = await storage.store_state_group(
        ROOM, base, {_member(1): None, _member(2): "$join2", TOPIC: "$topic"}
    )
    await storage.store_room(OTHER_ROOM, "10")
    other = await storage.store_state_group(OTHER_ROOM, None, {CREATE: "$other-create"})
    await storage.set_current_state(OTHER_ROOM, other)
    wanted = [CREATE, TOPIC, _member(1), _member(2)]
    assert await storage.get_current_state_ids_for_keys(ROOM, wanted) == {}

    await storage.persist_events([make_event("$a", before=base)])
    assert await storage.get_current_state_ids_for_keys(ROOM, wanted) == {
        CREATE: "$create",
        _member(1): "$join1",
    }
    await storage.set_current_state(ROOM, changed)
    found = await storage.get_current_state_ids_for_keys(ROOM, wanted)
    assert found == {CREATE: "$create", _member(2): "$join2", TOPIC: "$topic"}
    assert found == _at(await storage.get_current_state_ids(ROOM), wanted)
    assert await storage.get_current_state_ids_for_keys(OTHER_ROOM, wanted) == {
        CREATE: "$other-create"
    }
    assert await storage.get_current_state_ids_for_keys("!unknown:example.org", wanted) == {}


async def test_which_events_have_partial_state(storage: Storage, make_event: EventFactory) -> None:
    base = await storage.store_state_group(ROOM, None, {CREATE: "$create"})
    await storage.persist_events([make_event("$full", before=base)])
    await storage.store_partial_join(ROOM, "10", "$join", "hs.example", ["hs.example"])
    partial = [make_event("$join", before=base, partial=True, prev=("$full",))]
    partial += [
        make_event(f"$p{n}", before=base, partial=True, prev=("$join",)) for n in range(600)
    ]
    await storage.persist_events(partial)
    await storage.persist_events([make_event("$outlier", outlier=True)])

    assert await storage.get_partial_state_event_ids([]) == frozenset()
    assert await storage.get_partial_state_event_ids(["$full", "$outlier", "$nowhere"]) == set()
    assert await storage.get_partial_state_event_ids(["$full", "$join", "$p7"]) == {
        "$join",
        "$p7",
    }
    # More IDs than one statement binds.
    everything = [event.event_id for event in partial] + ["$full", "$nowhere"]
    assert await storage.get_partial_state_event_ids(everything) == {
        event.event_id for event in partial
    }

    await storage.update_state_for_partial_event("$p7", base, None)
    assert await storage.get_partial_state_event_ids(["$join", "$p7"]) == {"$join"}


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


def test_narrow_reads_cost_does_not_grow_with_the_state(conn: sqlite3.Connection) -> None:
    wanted = [CREATE, POWER, _member(7), _member(123_456)]
    costs: dict[int, tuple[int, int, int]] = {}
    for size in (2_000, 40_000):
        room = f"!size{size}:example.org"
        conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (room,))
        state: StateMap = {CREATE: f"$create{size}", POWER: "$power"}
        state.update({_member(n): f"$join{n}" for n in range(size)})
        group = store_state_group(conn, room, None, state)
        for step in range(30):
            group = store_state_group(conn, room, group, {_member(step): f"$again{step}"})
        conn.executemany(
            "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)",
            [(room, typ, state_key, event_id) for (typ, state_key), event_id in state.items()],
        )
        whole = _instructions(conn, functools.partial(read_state, conn, group))
        keys = _instructions(
            conn, functools.partial(reads.get_state_ids_for_keys, conn, group, wanted)
        )
        current = _instructions(
            conn, functools.partial(reads.get_current_state_ids_for_keys, conn, room, wanted)
        )
        costs[size] = (whole, keys, current)
    small, big = costs[2_000], costs[40_000]
    # The whole read grows with the state; the narrow ones stay put.
    assert big[0] > 10 * small[0]
    assert big[1] <= small[1] + 5
    assert big[2] <= small[2] + 5
    assert big[1] * 100 < big[0]
    assert big[2] * 100 < big[0]
