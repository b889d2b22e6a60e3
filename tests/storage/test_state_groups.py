import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranvier.errors import MatrixError
from ranvier.storage.records import StateKey
from ranvier.storage.schema import migrate
from ranvier.storage.state_groups import (
    GROUP_STATE_SQL,
    MAX_CHAIN_LENGTH,
    keys_changed_between,
    read_state,
    read_state_for_keys,
    read_state_without_type,
    store_state_group,
)

ROOM = "!room:example.org"


def _member(n: int) -> tuple[str, str]:
    return ("m.room.member", f"@user{n}:example.org")


def _group_row(conn: sqlite3.Connection, group: int) -> tuple[int | None, int, int]:
    row = conn.execute(
        "SELECT prev_group, chain_length, row_count FROM state_groups WHERE id = ?", (group,)
    ).fetchone()
    return row[0], row[1], row[2]


def _total_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM state_group_rows").fetchone()[0])


def test_snapshot_then_deltas_read_back(conn: sqlite3.Connection) -> None:
    root = store_state_group(
        conn, ROOM, None, {("m.room.create", ""): "$create", _member(1): "$j1"}
    )
    child = store_state_group(conn, ROOM, root, {_member(2): "$j2"})
    grandchild = store_state_group(conn, ROOM, child, {_member(1): "$leave1", _member(2): None})
    assert read_state(conn, root) == {("m.room.create", ""): "$create", _member(1): "$j1"}
    assert read_state(conn, child) == {
        ("m.room.create", ""): "$create",
        _member(1): "$j1",
        _member(2): "$j2",
    }
    assert read_state(conn, grandchild) == {("m.room.create", ""): "$create", _member(1): "$leave1"}
    # Only the changes were written.
    assert _group_row(conn, child) == (root, 1, 1)
    assert _group_row(conn, grandchild) == (child, 2, 2)


def test_an_empty_delta_is_the_same_group(conn: sqlite3.Connection) -> None:
    root = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$c"})
    assert store_state_group(conn, ROOM, root, {}) == root


def test_a_snapshot_drops_removals(conn: sqlite3.Connection) -> None:
    root = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$c", _member(1): None})
    assert read_state(conn, root) == {("m.room.create", ""): "$c"}
    assert _group_row(conn, root) == (None, 0, 1)


def test_unknown_and_foreign_groups_are_refused(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO rooms VALUES ('!other:example.org', '10')")
    other = store_state_group(conn, "!other:example.org", None, {("m.room.create", ""): "$o"})
    with pytest.raises(MatrixError, match="does not exist") as unknown:
        store_state_group(conn, ROOM, 999, {_member(1): "$j"})
    assert unknown.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError, match=r"not of !room:example\.org") as foreign:
        store_state_group(conn, ROOM, other, {_member(1): "$j"})
    assert foreign.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError, match="does not exist"):
        read_state(conn, 999)


def test_long_chains_are_rebased_on_their_snapshot(conn: sqlite3.Connection) -> None:
    members = {_member(n): f"$j{n}" for n in range(50)}
    model = dict(members)
    group = store_state_group(conn, ROOM, None, members)
    root = group
    for step in range(12):
        key = _member(step % 3)
        model[key] = f"$change{step}"
        group = store_state_group(conn, ROOM, group, {key: model[key]}, max_chain_length=4)
        _, chain_length, _ = _group_row(conn, group)
        assert 1 <= chain_length <= 4
        assert read_state(conn, group) == model
    # Chains restarted from the snapshot with the merged changes (at most
    # three keys ever changed), and no second snapshot was needed.
    rebased = conn.execute(
        "SELECT row_count FROM state_groups WHERE prev_group = ? AND chain_length = 1", (root,)
    ).fetchall()
    assert len(rebased) >= 3
    assert all(count <= 3 for (count,) in rebased)
    assert conn.execute(
        "SELECT COUNT(*) FROM state_groups WHERE prev_group IS NULL"
    ).fetchone() == (1,)


def test_a_small_room_takes_a_new_snapshot(conn: sqlite3.Connection) -> None:
    group = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$c"})
    model = {("m.room.create", ""): "$c"}
    for step in range(6):
        model[_member(step)] = f"$j{step}"
        group = store_state_group(
            conn, ROOM, group, {_member(step): f"$j{step}"}, max_chain_length=2
        )
    # The merged changes outgrew the one-key snapshot: a fresh snapshot.
    snapshots = conn.execute("SELECT id FROM state_groups WHERE prev_group IS NULL").fetchall()
    assert len(snapshots) > 1
    assert read_state(conn, group) == model


def test_reading_some_keys(conn: sqlite3.Connection) -> None:
    root = store_state_group(conn, ROOM, None, {_member(n): f"$j{n}" for n in range(10)})
    child = store_state_group(conn, ROOM, root, {_member(3): None, _member(4): "$ban4"})
    found = read_state_for_keys(conn, child, [_member(3), _member(4), _member(5), _member(99)])
    assert found == {_member(4): "$ban4", _member(5): "$j5"}


def test_keys_changed_between_related_and_unrelated_groups(conn: sqlite3.Connection) -> None:
    root = store_state_group(conn, ROOM, None, {_member(n): f"$j{n}" for n in range(5)})
    left = store_state_group(conn, ROOM, root, {_member(1): "$l1"})
    left2 = store_state_group(conn, ROOM, left, {_member(2): "$l2"})
    right = store_state_group(conn, ROOM, root, {_member(3): "$r3"})
    assert keys_changed_between(conn, root, left2) == {_member(1), _member(2)}
    assert keys_changed_between(conn, left2, right) == {_member(1), _member(2), _member(3)}
    assert keys_changed_between(conn, left, left) == set()
    unrelated = store_state_group(conn, ROOM, None, {_member(1): "$x"})
    assert keys_changed_between(conn, left, unrelated) is None
    # More rows between than asked for: the caller compares whole states.
    assert keys_changed_between(conn, left2, right, most=3) == {_member(1), _member(2), _member(3)}
    assert keys_changed_between(conn, left2, right, most=2) is None


def test_a_big_room_grows_by_deltas(conn: sqlite3.Connection) -> None:
    """50,000 members, then 1,000 membership changes: about a thousand rows
    more, not another 50,000 per change (nor per hundred changes).
    """
    members = {_member(n): f"$join{n}" for n in range(50_000)}
    group = store_state_group(conn, ROOM, None, members)
    assert _total_rows(conn) == 50_000
    changed = {}
    for step in range(1_000):
        key = _member(step * 37 % 50_000)
        changed[key] = f"$change{step}"
        group = store_state_group(conn, ROOM, group, {key: changed[key]})
    rows = _total_rows(conn)
    # One row per change, plus the merged changes written when chains are
    # rebased every MAX_CHAIN_LENGTH hops.
    assert 51_000 <= rows < 50_000 + 1_000 + (1_000 // MAX_CHAIN_LENGTH) * 1_000
    assert conn.execute(
        "SELECT COUNT(*) FROM state_groups WHERE prev_group IS NULL"
    ).fetchone() == (1,)
    state = read_state(conn, group)
    assert len(state) == 50_000
    assert all(state[key] == event_id for key, event_id in changed.items())
    sample = [_member(n) for n in (0, 37, 49_999)]
    assert read_state_for_keys(conn, group, sample) == {key: state[key] for key in sample}


_keys = st.sampled_from(
    [("m.room.member", f"@u{n}:x") for n in range(6)]
    + [("m.room.name", ""), ("m.room.create", ""), ("m.room.member.x", "")]
)
_deltas = st.dictionaries(_keys, st.one_of(st.none(), st.sampled_from(["$a", "$b", "$c"])))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(min_value=0), _deltas), min_size=1, max_size=25))
def test_stored_groups_match_a_model(steps: list[tuple[int, dict[StateKey, str | None]]]) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    conn.execute("INSERT INTO rooms VALUES (?, '10')", (ROOM,))
    model: dict[int, dict[StateKey, str]] = {}
    groups: list[int] = []
    for index, (parent_pick, delta) in enumerate(steps):
        if index == 0:
            prev = None
            state = {k: v for k, v in delta.items() if v is not None}
        else:
            prev = groups[parent_pick % len(groups)]
            state = dict(model[prev])
            for key, value in delta.items():
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        group = store_state_group(conn, ROOM, prev, delta, max_chain_length=3)
        assert _group_row(conn, group)[1] <= 3
        model[group] = state
        groups.append(group)
    for group, state in model.items():
        assert read_state(conn, group) == state
        in_sql = conn.execute(GROUP_STATE_SQL, (group,)).fetchall()
        assert {(typ, state_key): event_id for typ, state_key, event_id in in_sql} == state
        assert len(in_sql) == len(state)
        assert read_state_for_keys(conn, group, list(state)[:2]) == {
            k: state[k] for k in list(state)[:2]
        }
        # Types either side of the one left out are read; that one is not.
        assert read_state_without_type(conn, group, "m.room.member") == {
            k: v for k, v in state.items() if k[0] != "m.room.member"
        }
    first, last = groups[0], groups[-1]
    keys = keys_changed_between(conn, first, last)
    if keys is not None:
        differing = {
            k
            for k in model[first].keys() | model[last].keys()
            if model[first].get(k) != model[last].get(k)
        }
        assert differing <= keys
    conn.close()
