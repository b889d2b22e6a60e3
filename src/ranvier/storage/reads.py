"""The read queries, run on a reader connection in a worker thread.

Each takes a read-only connection and runs inside one read transaction that
the reader pool opens around it, so a query made of several statements sees
one consistent snapshot even while the actor commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence

import msgspec

from ranvier.errors import MatrixError

from .records import (
    STORED_EVENT_COLUMNS,
    DestinationRetry,
    EventStateGroups,
    PartialStateRoom,
    ReceivedTransaction,
    ServerKey,
    StateKey,
    StateMap,
    StoredEvent,
    stored_event_from_row,
)
from .state_groups import (
    keys_changed_between,
    read_state,
    read_state_for_keys,
    read_state_without_type,
)

__all__ = [
    "ResyncProgress",
    "UnsentDestinationRoom",
    "get_current_state_ids",
    "get_current_state_ids_for_keys",
    "get_destination_retry",
    "get_destinations_with_unsent_rooms",
    "get_event",
    "get_event_state_groups",
    "get_events",
    "get_events_state_groups",
    "get_events_with_accepted_children",
    "get_forward_extremities",
    "get_min_depth",
    "get_partial_state_event_ids",
    "get_partial_state_events",
    "get_partial_state_rooms",
    "get_received_transaction",
    "get_resync_progress",
    "get_room_version",
    "get_server_keys",
    "get_state_deltas",
    "get_state_ids",
    "get_state_ids_for_keys",
    "get_unsent_destination_rooms",
    "have_seen_events",
    "is_partial_state_room",
]

_EVENT_COLUMNS = ", ".join(STORED_EVENT_COLUMNS)
# Stays well under SQLite's limit on bound parameters.
_CHUNK = 500


# Which of the events ``marks`` stands for an accepted event cites. An
# edge names a stored event by its ordering, one not stored by ID alone
# (see schema migration 64); those go through the partial index by ID, as
# the other would read every edge whose prev event is not stored.
_CITED_SQL = """
SELECT prev.event_id
FROM events AS prev
JOIN event_prev_edges AS edge ON edge.prev_ordering = prev.stream_ordering
JOIN events AS child ON child.stream_ordering = edge.event_ordering
WHERE prev.event_id IN ({marks})
  AND child.outlier = 0 AND child.soft_failed = 0 AND child.rejected_reason IS NULL
UNION
SELECT edge.prev_event_id
FROM event_prev_edges AS edge INDEXED BY event_prev_edges_unstored_prev
JOIN events AS child ON child.stream_ordering = edge.event_ordering
WHERE edge.prev_ordering IS NULL AND edge.prev_event_id IN ({marks})
  AND child.outlier = 0 AND child.soft_failed = 0 AND child.rejected_reason IS NULL
"""


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def get_event(conn: sqlite3.Connection, event_id: str) -> StoredEvent | None:
    row = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else stored_event_from_row(row)


def get_events(conn: sqlite3.Connection, event_ids: Collection[str]) -> dict[str, StoredEvent]:
    """The events of ``event_ids`` that are stored, by ID."""
    found: dict[str, StoredEvent] = {}
    for chunk in _chunks(set(event_ids)):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id IN ({marks})", chunk
        ):
            event = stored_event_from_row(row)
            found[event.event_id] = event
    return found


def have_seen_events(conn: sqlite3.Connection, event_ids: Collection[str]) -> frozenset[str]:
    """Which of ``event_ids`` are stored (outliers included)."""
    return _event_ids_in(conn, "events", event_ids)


def _event_ids_in(
    conn: sqlite3.Connection, table: str, event_ids: Collection[str]
) -> frozenset[str]:
    """Which of ``event_ids`` have a row in ``table``, looked up by its
    ``event_id`` key, a chunk of IDs a statement.
    """
    found: set[str] = set()
    for chunk in _chunks(set(event_ids)):
        marks = ",".join("?" * len(chunk))
        found.update(
            event_id
            for (event_id,) in conn.execute(
                f"SELECT event_id FROM {table} WHERE event_id IN ({marks})", chunk
            )
        )
    return frozenset(found)


def get_event_state_groups(conn: sqlite3.Connection, event_id: str) -> EventStateGroups | None:
    """The state groups around an event; None for outliers and unknown events."""
    row = conn.execute(
        "SELECT state_group_before, state_group_after FROM event_to_state_groups"
        " WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    return None if row is None else EventStateGroups(row[0], row[1])


def get_events_state_groups(
    conn: sqlite3.Connection, event_ids: Collection[str]
) -> dict[str, EventStateGroups]:
    """The state groups around each of ``event_ids`` that has them, by ID.

    :func:`get_event_state_groups` for many events in one read, for
    ingesting a run of events whose prev events are known together;
    outliers and unknown events are left out.
    """
    found: dict[str, EventStateGroups] = {}
    for chunk in _chunks(set(event_ids)):
        marks = ",".join("?" * len(chunk))
        for event_id, before, after in conn.execute(
            "SELECT event_id, state_group_before, state_group_after FROM event_to_state_groups"
            f" WHERE event_id IN ({marks})",
            chunk,
        ):
            found[event_id] = EventStateGroups(before, after)
    return found


def get_events_with_accepted_children(
    conn: sqlite3.Connection, event_ids: Collection[str]
) -> frozenset[str]:
    """Which of ``event_ids`` an accepted event of the DAG names among its
    prev events.

    Such an event, written late (its children came first, with the state
    at the gap fetched), never becomes a forward extremity; a caller that
    follows the extremities in memory across several events asks this once
    for all of them. The events themselves need not be stored.
    """
    cited: set[str] = set()
    for chunk in _chunks(set(event_ids)):
        marks = ",".join("?" * len(chunk))
        cited.update(
            prev_id for (prev_id,) in conn.execute(_CITED_SQL.format(marks=marks), (*chunk, *chunk))
        )
    return frozenset(cited)


def get_state_ids(conn: sqlite3.Connection, state_group: int) -> StateMap:
    return read_state(conn, state_group)


def get_current_state_ids(conn: sqlite3.Connection, room_id: str) -> StateMap:
    return {
        (typ, state_key): event_id
        for typ, state_key, event_id in conn.execute(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", (room_id,)
        )
    }


def get_current_state_group(conn: sqlite3.Connection, room_id: str) -> int | None:
    """The state group the room's current state is; None for a room with no
    current state here.
    """
    row = conn.execute(
        "SELECT state_group FROM current_state_groups WHERE room_id = ?", (room_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def get_forward_extremities(conn: sqlite3.Connection, room_id: str) -> frozenset[str]:
    return frozenset(
        event_id
        for (event_id,) in conn.execute(
            "SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,)
        )
    )


def get_room_version(conn: sqlite3.Connection, room_id: str) -> str | None:
    row = conn.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    return None if row is None else str(row[0])


def is_partial_state_room(conn: sqlite3.Connection, room_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM partial_state_rooms WHERE room_id = ?", (room_id,)).fetchone()
        is not None
    )


def get_partial_state_events(conn: sqlite3.Connection, room_id: str) -> list[str]:
    """A room's events that still have partial state, oldest first."""
    return [
        event_id
        for (event_id,) in conn.execute(
            """
            SELECT p.event_id FROM partial_state_events AS p
            JOIN events AS e ON e.event_id = p.event_id
            WHERE p.room_id = ? ORDER BY e.stream_ordering
            """,
            (room_id,),
        )
    ]


def get_partial_state_rooms(conn: sqlite3.Connection) -> dict[str, PartialStateRoom]:
    """Every room with partial state, to resume their resyncs at start-up."""
    servers: dict[str, set[str]] = {}
    for room_id, server in conn.execute(
        "SELECT room_id, server_name FROM partial_state_rooms_servers"
    ):
        servers.setdefault(room_id, set()).add(server)
    return {
        room_id: PartialStateRoom(
            room_id=room_id,
            room_version=room_version,
            join_event_id=join_event_id,
            joined_via=joined_via,
            servers=frozenset(servers.get(room_id, ())),
        )
        for room_id, room_version, join_event_id, joined_via in conn.execute(
            """
            SELECT p.room_id, r.room_version, p.join_event_id, p.joined_via
            FROM partial_state_rooms AS p JOIN rooms AS r ON r.room_id = p.room_id
            """
        )
    }


# Narrow reads: a few entries of a room's state, and which events are
# partial, for checks that must not read a big room's whole state.


def get_state_ids_for_keys(
    conn: sqlite3.Connection, state_group: int, keys: Collection[StateKey]
) -> StateMap:
    """The entries of a group's state for ``keys``; keys not in it are left out.

    Costs a few index look-ups per key, however big the state.
    """
    return read_state_for_keys(conn, state_group, keys)


def get_state_ids_without_type(
    conn: sqlite3.Connection, state_group: int, event_type: str
) -> StateMap:
    """The entries of a group's state for every type but ``event_type``."""
    return read_state_without_type(conn, state_group, event_type)


def get_current_state_ids_for_keys(
    conn: sqlite3.Connection, room_id: str, keys: Collection[StateKey]
) -> StateMap:
    """The entries of a room's current state for ``keys``; keys not in it are left out."""
    found: StateMap = {}
    for key in set(keys):
        row = conn.execute(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, *key),
        ).fetchone()
        if row is not None:
            found[key] = row[0]
    return found


def get_state_deltas(
    conn: sqlite3.Connection, state_groups: Sequence[int]
) -> tuple[int, dict[int, dict[StateKey, str | None]]]:
    """The first of ``state_groups`` as a base, and each group's state as
    changes against the base's: ``(base, {group: delta})``.

    A delta holds exactly the keys where the group's state differs from the
    base's, None marking a key of the base that the group lacks; the base's
    own delta is empty. State resolution of a fork needs no more than that,
    and in a big room it is the difference between the fork and the room.

    The keys that may differ come from the delta rows between the two groups
    and their nearest common ancestor, and only those keys are read, so the
    cost follows the changes, not the size of the state. A group whose chain
    shares no group with the base's (a state stored whole, as a join's is)
    is compared whole instead: both states are read once.
    """
    groups = list(dict.fromkeys(state_groups))
    if not groups:
        raise MatrixError("no state groups to compare", errcode="M_INVALID_PARAM", http_status=400)
    _check_one_room(conn, groups)
    base = groups[0]
    changed: dict[int, set[StateKey]] = {}
    unrelated: list[int] = []
    for group in groups[1:]:
        keys = keys_changed_between(conn, base, group)
        if keys is None:
            unrelated.append(group)
        else:
            changed[group] = keys
    at_base = read_state_for_keys(conn, base, set().union(*changed.values()))
    deltas: dict[int, dict[StateKey, str | None]] = {base: {}}
    for group, keys in changed.items():
        at_group = read_state_for_keys(conn, group, keys)
        deltas[group] = {
            key: at_group.get(key) for key in keys if at_group.get(key) != at_base.get(key)
        }
    if unrelated:
        whole_base = read_state(conn, base)
        for group in unrelated:
            state = read_state(conn, group)
            delta: dict[StateKey, str | None] = {
                key: event_id for key, event_id in state.items() if whole_base.get(key) != event_id
            }
            delta.update((key, None) for key in whole_base if key not in state)
            deltas[group] = delta
    return base, deltas


def _check_one_room(conn: sqlite3.Connection, groups: list[int]) -> None:
    """Refuse unknown groups, and groups of different rooms: their states
    are not versions of one another.
    """
    rooms: dict[int, str] = {}
    for group in groups:
        row = conn.execute("SELECT room_id FROM state_groups WHERE id = ?", (group,)).fetchone()
        if row is None:
            raise MatrixError(
                f"state group {group} does not exist", errcode="M_NOT_FOUND", http_status=404
            )
        rooms[group] = row[0]
    if len(set(rooms.values())) > 1:
        listed = ", ".join(f"{group} of {rooms[group]}" for group in groups)
        raise MatrixError(
            f"state groups of different rooms cannot be compared: {listed}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def get_partial_state_event_ids(
    conn: sqlite3.Connection, event_ids: Collection[str]
) -> frozenset[str]:
    """Which of ``event_ids`` still have partial state.

    Looks the events up by ID, so the answer costs the same in a room with
    thousands of partial-state events as in one with none.
    """
    return _event_ids_in(conn, "partial_state_events", event_ids)


def get_received_transaction(
    conn: sqlite3.Connection, origin: str, transaction_id: str
) -> ReceivedTransaction | None:
    row = conn.execute(
        "SELECT response_code, response_json, received_ts FROM received_transactions"
        " WHERE origin = ? AND transaction_id = ?",
        (origin, transaction_id),
    ).fetchone()
    if row is None:
        return None
    return ReceivedTransaction(
        origin=origin,
        transaction_id=transaction_id,
        response_code=row[0],
        response_json=bytes(row[1]),
        received_ts=row[2],
    )


def get_server_keys(
    conn: sqlite3.Connection, server_name: str, key_ids: Collection[str] | None = None
) -> dict[str, ServerKey]:
    """A server's stored keys by key ID: all of them, or those of ``key_ids``."""
    keys: dict[str, ServerKey] = {}
    for row in conn.execute(
        """
        SELECT key_id, verify_key, valid_until_ts, expired_ts, from_server, fetched_ts, key_json
        FROM server_keys WHERE server_name = ?
        """,
        (server_name,),
    ):
        key_id, verify_key, valid_until_ts, expired_ts, from_server, fetched_ts, key_json = row
        if key_ids is not None and key_id not in key_ids:
            continue
        keys[key_id] = ServerKey(
            server_name=server_name,
            key_id=key_id,
            verify_key=bytes(verify_key),
            valid_until_ts=valid_until_ts,
            expired_ts=expired_ts,
            from_server=from_server,
            fetched_ts=fetched_ts,
            key_json=bytes(key_json),
        )
    return keys


def get_destination_retry(conn: sqlite3.Connection, destination: str) -> DestinationRetry | None:
    row = conn.execute(
        "SELECT failure_ts, retry_last_ts, retry_interval_ms FROM destinations"
        " WHERE destination = ?",
        (destination,),
    ).fetchone()
    if row is None:
        return None
    return DestinationRetry(
        destination=destination,
        failure_ts=row[0],
        retry_last_ts=row[1],
        retry_interval_ms=row[2],
    )


# Outgoing federation: rooms a destination has missed events of.

_UNSENT = "(sent_stream_ordering IS NULL OR stream_ordering > sent_stream_ordering)"


class UnsentDestinationRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A room with events meant for a destination that it has not had."""

    room_id: str
    #: The newest event of the room meant for the destination ...
    stream_ordering: int
    #: ... and its ID; None if that event is not stored (any more).
    event_id: str | None
    #: The newest event the destination has had; None if it never had one.
    sent_stream_ordering: int | None


def get_unsent_destination_rooms(
    conn: sqlite3.Connection, destination: str, limit: int
) -> list[UnsentDestinationRoom]:
    """Up to ``limit`` rooms ``destination`` is behind in, longest waiting first."""
    rows = conn.execute(
        f"""
        SELECT d.room_id, d.stream_ordering, e.event_id, d.sent_stream_ordering
        FROM (
            SELECT room_id, stream_ordering, sent_stream_ordering FROM destination_rooms
            WHERE destination = ? AND {_UNSENT}
            ORDER BY stream_ordering
            LIMIT ?
        ) AS d
        LEFT JOIN events AS e ON e.stream_ordering = d.stream_ordering AND e.room_id = d.room_id
        ORDER BY d.stream_ordering
        """,
        (destination, limit),
    )
    return [
        UnsentDestinationRoom(
            room_id=room_id,
            stream_ordering=stream_ordering,
            event_id=event_id,
            sent_stream_ordering=sent,
        )
        for room_id, stream_ordering, event_id, sent in rows
    ]


def get_destinations_with_unsent_rooms(
    conn: sqlite3.Connection, after: str | None, limit: int
) -> list[str]:
    """Destinations behind in some room, in name order, from after ``after``.

    Pages through them ``limit`` at a time, for resuming catch-up at start-up.
    """
    rows = conn.execute(
        f"""
        SELECT DISTINCT destination FROM destination_rooms
        WHERE {_UNSENT} AND destination > ?
        ORDER BY destination
        LIMIT ?
        """,
        ("" if after is None else after, limit),
    )
    return [destination for (destination,) in rows]


# How far back a room's DAG reaches here, so that filling a gap asks for
# nothing older.


def get_min_depth(conn: sqlite3.Connection, room_id: str) -> int | None:
    """The smallest depth of the room's events in its DAG here; None when
    it has none.

    Outliers are left out: the state and auth chain fetched at a join lie
    before it, and history before a join is not the room's DAG here. For a
    room joined over federation this is the join's depth (or that of
    events backfilled before it).
    """
    row = conn.execute(
        "SELECT MIN(depth) FROM events WHERE room_id = ? AND outlier = 0", (room_id,)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


# How far each partial-state room's resync had come when last recorded.


class ResyncProgress(msgspec.Struct, frozen=True, kw_only=True):
    """The progress of a room's resync as its task last recorded it; a
    snapshot for another process to read, not the live state.
    """

    room_id: str
    #: ``starting``, ``fetching``, ``walking``, ``clearing``, ``waiting``,
    #: or ``stopped`` when no user of this server is left in the room.
    phase: str
    #: The server asked then, or last.
    server: str | None
    events_resynced: int
    events_total: int
    attempts: int
    last_error: str | None
    #: When it was recorded: milliseconds since the Unix epoch.
    updated_ts: int


def get_resync_progress(conn: sqlite3.Connection) -> dict[str, ResyncProgress]:
    """The recorded progress of every room that has one, by room ID."""
    return {
        row[0]: ResyncProgress(
            room_id=row[0],
            phase=row[1],
            server=row[2],
            events_resynced=row[3],
            events_total=row[4],
            attempts=row[5],
            last_error=row[6],
            updated_ts=row[7],
        )
        for row in conn.execute(
            "SELECT room_id, phase, server, events_resynced, events_total, attempts,"
            " last_error, updated_ts FROM resync_progress"
        )
    }
