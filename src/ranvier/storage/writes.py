"""The write operations, run by the storage actor on its writer thread.

Each takes the write connection and runs inside the actor's transaction, in a
savepoint of its own: it never begins, commits or rolls back. An exception
from it undoes exactly its own writes and reaches its own caller.

Current state and forward extremities change in the same transaction as the
events that move them. The rule for current state, for each room an
operation touches:

1. If the caller names the room's current state group (it resolved the
   state of several extremities itself), current state becomes that group.
2. Otherwise, if the room has exactly one forward extremity afterwards,
   current state becomes the state after that event.
3. Otherwise current state stays as it was.

Only accepted events (not outliers, not rejected, not soft-failed) move
extremities and current state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence

from ranvier.errors import (
    MatrixError,
    PartialStateConflictError,
    PartialStateEventsRemainError,
)

from .records import (
    DestinationRetry,
    EventToPersist,
    ReceivedTransaction,
    ServerKey,
    StateKey,
)
from .state_groups import (
    check_group_in_room,
    keys_changed_between,
    read_state,
    read_state_for_keys,
    store_state_group,
)

__all__ = [
    "clear_partial_state",
    "persist_events",
    "record_transaction",
    "set_current_state",
    "store_destination_retry",
    "store_partial_join",
    "store_room",
    "store_server_keys",
    "store_state_group",
    "update_state_for_partial_event",
]

_INSERT_EVENT_SQL = """
INSERT INTO events (
    event_id, room_id, type, state_key, sender, depth, origin_server_ts, json,
    outlier, soft_failed, rejected_reason
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (event_id) DO NOTHING
"""
_HAS_ACCEPTED_CHILD_SQL = """
SELECT 1 FROM event_edges AS edge JOIN events AS child ON child.event_id = edge.event_id
WHERE edge.prev_event_id = ?
  AND child.outlier = 0 AND child.soft_failed = 0 AND child.rejected_reason IS NULL
LIMIT 1
"""


def _is_foreign_key_failure(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY


def _not_found(what: str) -> MatrixError:
    return MatrixError(f"{what} is not stored here", errcode="M_NOT_FOUND", http_status=404)


def _ensure_room(conn: sqlite3.Connection, room_id: str, room_version: str) -> None:
    inserted = conn.execute(
        "INSERT INTO rooms (room_id, room_version) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (room_id, room_version),
    ).rowcount
    if inserted:
        return
    (stored,) = conn.execute(
        "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
    ).fetchone()
    if stored != room_version:
        raise MatrixError(
            f"{room_id} is a room of version {stored}, not {room_version}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def store_room(conn: sqlite3.Connection, room_id: str, room_version: str) -> None:
    """Make a room known, so that state groups can be stored for it before
    any of its events. Storing it again with the same version does nothing.
    """
    _ensure_room(conn, room_id, room_version)


def _write_event_row(conn: sqlite3.Connection, event: EventToPersist) -> tuple[int, bool]:
    """Write the event's row and edges: ``(stream ordering, whether to go on)``.

    An event already stored is left alone, except an outlier that now comes
    with a place in the DAG: it joins the DAG at the end of the stream.
    """
    cursor = conn.execute(
        _INSERT_EVENT_SQL,
        (
            event.event_id,
            event.room_id,
            event.type,
            event.state_key,
            event.sender,
            event.depth,
            event.origin_server_ts,
            event.json,
            event.outlier,
            event.soft_failed,
            event.rejected_reason,
        ),
    )
    if cursor.rowcount:
        ordering = cursor.lastrowid
        assert ordering is not None
        conn.executemany(
            "INSERT OR IGNORE INTO event_edges (event_id, prev_event_id, room_id) VALUES (?, ?, ?)",
            [(event.event_id, prev, event.room_id) for prev in event.prev_event_ids],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO event_auth (event_id, auth_event_id, room_id) VALUES (?, ?, ?)",
            [(event.event_id, auth, event.room_id) for auth in event.auth_event_ids],
        )
        return ordering, True
    stored_ordering, stored_outlier = conn.execute(
        "SELECT stream_ordering, outlier FROM events WHERE event_id = ?", (event.event_id,)
    ).fetchone()
    if event.outlier or not stored_outlier:
        return stored_ordering, False
    (ordering,) = conn.execute(
        """
        UPDATE events
        SET stream_ordering = (SELECT MAX(stream_ordering) + 1 FROM events),
            outlier = 0, soft_failed = ?, rejected_reason = ?
        WHERE event_id = ?
        RETURNING stream_ordering
        """,
        (event.soft_failed, event.rejected_reason, event.event_id),
    ).fetchone()
    return ordering, True


def _group_after(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    event_id: str,
    state_key: StateKey | None,
    rejected: bool,
    before: int,
    after: int | None,
) -> int:
    """The state group after an event: given, or derived from the one before."""
    check_group_in_room(conn, before, room_id)
    if after is not None:
        check_group_in_room(conn, after, room_id)
        return after
    if state_key is None or rejected:
        return before
    return store_state_group(conn, room_id, before, {state_key: event_id})


def _insert_partial_state_event(conn: sqlite3.Connection, event_id: str, room_id: str) -> None:
    try:
        conn.execute(
            "INSERT INTO partial_state_events (event_id, room_id) VALUES (?, ?)",
            (event_id, room_id),
        )
    except sqlite3.IntegrityError as exc:
        # The only foreign key this statement can fail on its room side is
        # partial_state_rooms: the event row was written just before.
        if _is_foreign_key_failure(exc):
            raise PartialStateConflictError(
                f"{event_id} has partial state but {room_id} no longer does"
            ) from None
        raise


def _add_extremity(conn: sqlite3.Connection, event: EventToPersist) -> None:
    conn.executemany(
        "DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
        [(event.room_id, prev) for prev in event.prev_event_ids],
    )
    # An event that already has accepted children (it arrived late, say by
    # backfill) is not an extremity.
    if conn.execute(_HAS_ACCEPTED_CHILD_SQL, (event.event_id,)).fetchone() is None:
        conn.execute(
            "INSERT OR IGNORE INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
            (event.room_id, event.event_id),
        )


def _sole_extremity_group(conn: sqlite3.Connection, room_id: str) -> int | None:
    extremities = conn.execute(
        "SELECT event_id FROM forward_extremities WHERE room_id = ? LIMIT 2", (room_id,)
    ).fetchall()
    if len(extremities) != 1:
        return None
    row = conn.execute(
        "SELECT state_group_after FROM event_to_state_groups WHERE event_id = ?", extremities[0]
    ).fetchone()
    return None if row is None else int(row[0])


def _move_current_state(conn: sqlite3.Connection, room_id: str, to_group: int) -> None:
    """Make the room's current state the state of ``to_group``, writing only
    the keys that differ.
    """
    row = conn.execute(
        "SELECT state_group FROM current_state_groups WHERE room_id = ?", (room_id,)
    ).fetchone()
    from_group = None if row is None else row[0]
    if from_group == to_group:
        return
    keys = None if from_group is None else keys_changed_between(conn, from_group, to_group)
    changes: dict[StateKey, str | None] = {}
    if keys is None:
        new = read_state(conn, to_group)
        old = {
            (typ, state_key): event_id
            for typ, state_key, event_id in conn.execute(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", (room_id,)
            )
        }
        for key in old.keys() | new.keys():
            if old.get(key) != new.get(key):
                changes[key] = new.get(key)
    else:
        new = read_state_for_keys(conn, to_group, keys)
        for key in keys:
            old_row = conn.execute(
                "SELECT event_id FROM current_state"
                " WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, *key),
            ).fetchone()
            if (None if old_row is None else old_row[0]) != new.get(key):
                changes[key] = new.get(key)
    conn.executemany(
        """
        INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)
        ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id
        """,
        [
            (room_id, typ, sk, event_id)
            for (typ, sk), event_id in changes.items()
            if event_id is not None
        ],
    )
    conn.executemany(
        "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
        [(room_id, typ, sk) for (typ, sk), event_id in changes.items() if event_id is None],
    )
    conn.execute(
        """
        INSERT INTO current_state_groups (room_id, state_group) VALUES (?, ?)
        ON CONFLICT (room_id) DO UPDATE SET state_group = excluded.state_group
        """,
        (room_id, to_group),
    )


def persist_events(
    conn: sqlite3.Connection,
    events: Sequence[EventToPersist],
    current_state_groups: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Write events with their edges, state groups, partial-state rows,
    extremities and current state; return each event's stream ordering.

    An event with partial state whose room no longer has partial state
    raises :class:`PartialStateConflictError`, and none of ``events`` is
    written. Events already stored are skipped (keeping their ordering).
    """
    orderings: dict[str, int] = {}
    rooms_seen: set[str] = set()
    rooms_moved: set[str] = set()
    for event in events:
        if event.room_id not in rooms_seen:
            _ensure_room(conn, event.room_id, event.room_version)
            rooms_seen.add(event.room_id)
        ordering, written = _write_event_row(conn, event)
        orderings[event.event_id] = ordering
        if not written or event.context is None:
            continue
        context = event.context
        after = _group_after(
            conn,
            room_id=event.room_id,
            event_id=event.event_id,
            state_key=None if event.state_key is None else (event.type, event.state_key),
            rejected=event.rejected_reason is not None,
            before=context.state_group_before,
            after=context.state_group_after,
        )
        conn.execute(
            "INSERT INTO event_to_state_groups (event_id, state_group_before, state_group_after)"
            " VALUES (?, ?, ?)",
            (event.event_id, context.state_group_before, after),
        )
        if context.partial_state:
            _insert_partial_state_event(conn, event.event_id, event.room_id)
        if event.accepted:
            _add_extremity(conn, event)
            rooms_moved.add(event.room_id)

    named = dict(current_state_groups or {})
    for room_id, group in named.items():
        check_group_in_room(conn, group, room_id)
        _move_current_state(conn, room_id, group)
    for room_id in rooms_moved - named.keys():
        sole = _sole_extremity_group(conn, room_id)
        if sole is not None:
            _move_current_state(conn, room_id, sole)
    return orderings


def set_current_state(conn: sqlite3.Connection, room_id: str, state_group: int) -> None:
    """Make a room's current state a group's state (rule 1 on its own)."""
    check_group_in_room(conn, state_group, room_id)
    _move_current_state(conn, room_id, state_group)


def store_partial_join(
    conn: sqlite3.Connection,
    room_id: str,
    room_version: str,
    join_event_id: str,
    joined_via: str,
    servers_in_room: Collection[str],
) -> None:
    """Mark a room as joined with partial state, before its join event is written."""
    _ensure_room(conn, room_id, room_version)
    try:
        conn.execute(
            "INSERT INTO partial_state_rooms (room_id, join_event_id, joined_via) VALUES (?, ?, ?)",
            (room_id, join_event_id, joined_via),
        )
    except sqlite3.IntegrityError:
        if conn.execute(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = ?", (room_id,)
        ).fetchone():
            raise MatrixError(f"{room_id} already has partial state") from None
        raise
    conn.executemany(
        "INSERT OR IGNORE INTO partial_state_rooms_servers (room_id, server_name) VALUES (?, ?)",
        [(room_id, server) for server in sorted({joined_via, *servers_in_room})],
    )


def update_state_for_partial_event(
    conn: sqlite3.Connection,
    event_id: str,
    state_group_before: int,
    state_group_after: int | None,
    rejected_reason: str | None,
) -> None:
    """Give an event with partial state its full state, and drop its
    partial-state row.

    Leaving ``state_group_after`` out derives it as for a new event. An event
    found to be rejected now stops being a forward extremity. If the event is
    its room's only forward extremity, current state follows its new state.
    """
    row = conn.execute(
        "SELECT room_id, type, state_key, outlier FROM events WHERE event_id = ?", (event_id,)
    ).fetchone()
    if row is None:
        raise _not_found(f"event {event_id}")
    room_id, typ, state_key, outlier = row
    if outlier:
        raise MatrixError(
            f"{event_id} is an outlier: it has no state to update",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    after = _group_after(
        conn,
        room_id=room_id,
        event_id=event_id,
        state_key=None if state_key is None else (typ, state_key),
        rejected=rejected_reason is not None,
        before=state_group_before,
        after=state_group_after,
    )
    conn.execute(
        "UPDATE event_to_state_groups SET state_group_before = ?, state_group_after = ?"
        " WHERE event_id = ?",
        (state_group_before, after, event_id),
    )
    conn.execute(
        "UPDATE events SET rejected_reason = ? WHERE event_id = ?", (rejected_reason, event_id)
    )
    conn.execute("DELETE FROM partial_state_events WHERE event_id = ?", (event_id,))
    if rejected_reason is not None:
        conn.execute("DELETE FROM forward_extremities WHERE event_id = ?", (event_id,))
    sole = _sole_extremity_group(conn, room_id)
    if sole is not None:
        _move_current_state(conn, room_id, sole)


def clear_partial_state(conn: sqlite3.Connection, room_id: str) -> bool:
    """Forget that a room has partial state; False if it had none.

    Raises :class:`PartialStateEventsRemainError` while any of its events
    still has partial state.
    """
    conn.execute("DELETE FROM partial_state_rooms_servers WHERE room_id = ?", (room_id,))
    try:
        cursor = conn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (room_id,))
    except sqlite3.IntegrityError as exc:
        if _is_foreign_key_failure(exc):
            raise PartialStateEventsRemainError(room_id) from None
        raise
    return cursor.rowcount > 0


def record_transaction(conn: sqlite3.Connection, transaction: ReceivedTransaction) -> None:
    """Remember how a received transaction was answered."""
    conn.execute(
        """
        INSERT OR REPLACE INTO received_transactions
            (origin, transaction_id, response_code, response_json, received_ts)
        VALUES (?, ?, ?, ?, ?)
        """,
        (
            transaction.origin,
            transaction.transaction_id,
            transaction.response_code,
            transaction.response_json,
            transaction.received_ts,
        ),
    )


def store_server_keys(conn: sqlite3.Connection, keys: Sequence[ServerKey]) -> None:
    """Store remote keys; for a key already known, the answer valid longest wins."""
    conn.executemany(
        """
        INSERT INTO server_keys (
            server_name, key_id, verify_key, valid_until_ts, expired_ts, from_server,
            fetched_ts, key_json
        ) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (server_name, key_id) DO UPDATE SET
            verify_key = excluded.verify_key,
            valid_until_ts = excluded.valid_until_ts,
            expired_ts = excluded.expired_ts,
            from_server = excluded.from_server,
            fetched_ts = excluded.fetched_ts,
            key_json = excluded.key_json
        WHERE excluded.valid_until_ts >= server_keys.valid_until_ts
        """,
        [
            (
                key.server_name,
                key.key_id,
                key.verify_key,
                key.valid_until_ts,
                key.expired_ts,
                key.from_server,
                key.fetched_ts,
                key.key_json,
            )
            for key in keys
        ],
    )


def store_destination_retry(
    conn: sqlite3.Connection, destination: str, retry: DestinationRetry | None
) -> None:
    """Set a destination's retry state; None forgets it (the server is back)."""
    if retry is None:
        conn.execute("DELETE FROM destinations WHERE destination = ?", (destination,))
        return
    if retry.destination != destination:
        raise MatrixError(
            f"retry state for {retry.destination} given for {destination}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    conn.execute(
        """
        INSERT OR REPLACE INTO destinations
            (destination, failure_ts, retry_last_ts, retry_interval_ms)
        VALUES (?, ?, ?, ?)
        """,
        (destination, retry.failure_ts, retry.retry_last_ts, retry.retry_interval_ms),
    )
