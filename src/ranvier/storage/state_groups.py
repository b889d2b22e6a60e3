"""State groups: room states stored as chains of deltas.

A state group is an immutable room state. It is stored either as a snapshot
(every key, no ``prev_group``) or as the changes from its ``prev_group``, a
NULL event ID marking a key that is gone. Most events change one key, so a
50,000-member room gains one row per state event, not 50,000.

Reading a group walks its chain to the snapshot at the root, so chains are
bounded: a group that would be more than :data:`MAX_CHAIN_LENGTH` hops from
its snapshot is stored instead as the merged changes from that snapshot (one
hop), or, once those changes are as large as the snapshot itself, as a new
snapshot. A read then touches at most one snapshot plus a bounded number of
deltas, and a big room copies its whole state only after as many changes as
it has keys.

These functions take a sqlite3 connection and run inside the caller's
transaction; they do no I/O of their own and never commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ranvier.errors import MatrixError, RoomGoneError

from .id_floors import state_groups_top
from .records import StateDelta, StateKey, StateMap
from .write_backend import registered_write

__all__ = [
    "GROUP_STATE_SQL",
    "MAX_CHAIN_LENGTH",
    "check_group_in_room",
    "keys_changed_between",
    "read_state",
    "read_state_for_keys",
    "read_state_without_type",
    "store_state_group",
]

#: The most hops from a group to its snapshot.
MAX_CHAIN_LENGTH = 100

_CHAIN_SQL = """
WITH RECURSIVE chain(id, prev_group, row_count, hops) AS (
    SELECT id, prev_group, row_count, 0 FROM state_groups WHERE id = ?
    UNION ALL
    SELECT g.id, g.prev_group, g.row_count, chain.hops + 1
    FROM state_groups AS g JOIN chain ON g.id = chain.prev_group
)
SELECT id, row_count FROM chain ORDER BY hops
"""
#: The whole state of the group given as its one parameter, as rows of
#: ``(type, state_key, event_id)``: for each key the row of the group nearest
#: along the chain, and keys that group marks gone left out. SQL that fills a
#: table from it never holds the state in Python, where a 50,000-key state
#: costs tens of MiB.
GROUP_STATE_SQL = """
WITH RECURSIVE chain(id, hops) AS (
    SELECT ?, 0
    UNION ALL
    SELECT g.prev_group, chain.hops + 1
    FROM state_groups AS g JOIN chain ON g.id = chain.id
    WHERE g.prev_group IS NOT NULL
),
nearest AS (
    -- SQLite takes a bare column from the row that gave the MIN().
    SELECT r.type, r.state_key, r.event_id, MIN(chain.hops)
    FROM state_group_rows AS r JOIN chain ON r.state_group = chain.id
    GROUP BY r.type, r.state_key
)
SELECT type, state_key, event_id FROM nearest WHERE event_id IS NOT NULL
"""
_ROWS_SQL = "SELECT type, state_key, event_id FROM state_group_rows WHERE state_group = ?"
# Two index ranges of the group's rows, either side of one type: a 50,000-member
# room's rows of other types are read without stepping over its members.
_ROWS_WITHOUT_TYPE_SQL = (
    "SELECT type, state_key, event_id FROM state_group_rows WHERE state_group = ?1 AND type < ?2"
    " UNION ALL"
    " SELECT type, state_key, event_id FROM state_group_rows WHERE state_group = ?1 AND type > ?2"
)
_ONE_ROW_SQL = (
    "SELECT event_id FROM state_group_rows WHERE state_group = ? AND type = ? AND state_key = ?"
)


def _unknown_group(group: int) -> MatrixError:
    return MatrixError(
        f"state group {group} does not exist", errcode="M_NOT_FOUND", http_status=404
    )


def _group_info(conn: sqlite3.Connection, group: int) -> tuple[str, int, int]:
    """``(room_id, chain_length, row_count)`` of a group."""
    row = conn.execute(
        "SELECT room_id, chain_length, row_count FROM state_groups WHERE id = ?", (group,)
    ).fetchone()
    if row is None:
        raise _unknown_group(group)
    return row[0], row[1], row[2]


def check_group_in_room(conn: sqlite3.Connection, group: int, room_id: str) -> None:
    """Refuse a group that does not exist or holds another room's state."""
    group_room, _, _ = _group_info(conn, group)
    if group_room != room_id:
        raise MatrixError(
            f"state group {group} holds the state of {group_room}, not of {room_id}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def _chain(conn: sqlite3.Connection, group: int) -> list[tuple[int, int]]:
    """``(group, row_count)`` from ``group`` back to its snapshot, in that order."""
    chain = conn.execute(_CHAIN_SQL, (group,)).fetchall()
    if not chain:
        raise _unknown_group(group)
    return chain


def _rows(conn: sqlite3.Connection, group: int) -> dict[StateKey, str | None]:
    return {
        (typ, state_key): event_id for typ, state_key, event_id in conn.execute(_ROWS_SQL, (group,))
    }


def _insert_group(
    conn: sqlite3.Connection,
    room_id: str,
    prev_group: int | None,
    chain_length: int,
    rows: StateDelta,
) -> int:
    group = state_groups_top(conn) + 1
    conn.execute(
        "INSERT INTO state_groups (id, room_id, prev_group, chain_length, row_count)"
        " VALUES (?, ?, ?, ?, ?)",
        (group, room_id, prev_group, chain_length, len(rows)),
    )
    # A generator, not a list: a big room's first full state is tens of
    # thousands of rows, each a tuple of four.
    conn.executemany(
        "INSERT INTO state_group_rows (state_group, type, state_key, event_id) VALUES (?, ?, ?, ?)",
        ((group, typ, state_key, event_id) for (typ, state_key), event_id in rows.items()),
    )
    return group


@registered_write
def store_state_group(
    conn: sqlite3.Connection,
    room_id: str,
    prev_group: int | None,
    delta: StateDelta,
    *,
    max_chain_length: int = MAX_CHAIN_LENGTH,
) -> int:
    """Store the state ``prev_group`` + ``delta`` and return its group.

    With no ``prev_group`` the delta is the whole state (None entries mean
    nothing there and are dropped). An empty delta is ``prev_group`` itself:
    groups are immutable, so equal states may share one.
    """
    if prev_group is None:
        # The room is made known first (store_room); one purged since is not
        # brought back by a state computed before.
        if conn.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone() is None:
            raise RoomGoneError(room_id)
        return _insert_group(
            conn,
            room_id,
            None,
            0,
            {key: event_id for key, event_id in delta.items() if event_id is not None},
        )
    check_group_in_room(conn, prev_group, room_id)
    if not delta:
        return prev_group
    _, chain_length, _ = _group_info(conn, prev_group)
    if chain_length < max_chain_length:
        return _insert_group(conn, room_id, prev_group, chain_length + 1, delta)

    # Too far from the snapshot: merge the whole chain's changes into one
    # delta from the snapshot, oldest first so that later changes win.
    chain = _chain(conn, prev_group)
    root, root_rows = chain[-1]
    merged: dict[StateKey, str | None] = {}
    for group, _ in reversed(chain[:-1]):
        merged.update(_rows(conn, group))
    merged.update(delta)
    at_root = read_state_for_keys(conn, root, merged)
    merged = {key: event_id for key, event_id in merged.items() if at_root.get(key) != event_id}
    if len(merged) < root_rows:
        return _insert_group(conn, room_id, root, 1, merged)
    state = read_state(conn, root)
    for key, event_id in merged.items():
        if event_id is None:
            state.pop(key, None)
        else:
            state[key] = event_id
    return _insert_group(conn, room_id, None, 0, state)


def read_state(conn: sqlite3.Connection, group: int) -> StateMap:
    """The whole state a group stands for."""
    chain = _chain(conn, group)
    root, _ = chain[-1]
    state: StateMap = {
        (typ, state_key): event_id for typ, state_key, event_id in conn.execute(_ROWS_SQL, (root,))
    }
    for delta_group, _ in reversed(chain[:-1]):
        for typ, state_key, event_id in conn.execute(_ROWS_SQL, (delta_group,)):
            if event_id is None:
                state.pop((typ, state_key), None)
            else:
                state[typ, state_key] = event_id
    return state


def read_state_without_type(conn: sqlite3.Connection, group: int, event_type: str) -> StateMap:
    """The entries of a group's state for every type but ``event_type``.

    A partial join's answer leaves the members out of a state that is mostly
    members; this reads the rest without reading them.
    """
    state: StateMap = {}
    for chain_group, _ in reversed(_chain(conn, group)):
        for typ, state_key, event_id in conn.execute(
            _ROWS_WITHOUT_TYPE_SQL, (chain_group, event_type)
        ):
            if event_id is None:
                state.pop((typ, state_key), None)
            else:
                state[typ, state_key] = event_id
    return state


def read_state_for_keys(conn: sqlite3.Connection, group: int, keys: Iterable[StateKey]) -> StateMap:
    """The entries of a group's state for ``keys``; absent keys are left out.

    Looks each key up from the group towards its snapshot and stops at the
    first group that mentions it, so a small set of keys costs a few index
    look-ups even in a room with a huge state.
    """
    remaining = set(keys)
    found: StateMap = {}
    for chain_group, row_count in _chain(conn, group):
        if not remaining:
            break
        if len(remaining) > row_count:
            hits = {
                key: value for key, value in _rows(conn, chain_group).items() if key in remaining
            }
        else:
            hits = {}
            for key in remaining:
                row = conn.execute(_ONE_ROW_SQL, (chain_group, *key)).fetchone()
                if row is not None:
                    hits[key] = row[0]
        for key, event_id in hits.items():
            remaining.discard(key)
            if event_id is not None:
                found[key] = event_id
    return found


def keys_changed_between(
    conn: sqlite3.Connection, from_group: int, to_group: int, *, most: int | None = None
) -> set[StateKey] | None:
    """Every key whose entry may differ between two groups' states.

    Found from the deltas between the groups and their nearest common
    ancestor; None when the chains share no group, and only a comparison of
    the whole states can tell, or when the deltas hold more than ``most``
    rows, and comparing the whole states is the cheaper way.
    """
    from_chain = _chain(conn, from_group)
    to_chain = _chain(conn, to_group)
    position = {group: index for index, (group, _) in enumerate(from_chain)}
    for to_index, (group, _) in enumerate(to_chain):
        if group in position:
            between = from_chain[: position[group]] + to_chain[:to_index]
            break
    else:
        return None
    if most is not None and sum(row_count for _, row_count in between) > most:
        return None
    keys: set[StateKey] = set()
    for group, _ in between:
        keys.update(
            (typ, state_key)
            for typ, state_key in conn.execute(
                "SELECT type, state_key FROM state_group_rows WHERE state_group = ?", (group,)
            )
        )
    return keys
