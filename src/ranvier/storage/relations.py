"""Relations between events: which event relates to which, and how.

An event relates to another when its content has an ``m.relates_to``
object naming the other's ``event_id`` and a ``rel_type`` (``m.thread``,
``m.replace``, ``m.annotation``, or any other). ``event_relations`` holds
one row per such event, so the relations of an event, and the threads of a
room, are found by index instead of by reading events' JSON.

Invariants:

* ``event_relations`` has a row for every stored event whose content
  carries a relation, written in the transaction that writes the event
  (:func:`record_relations`, from :func:`ranvier.storage.writes.persist_events`,
  whatever path the event came by) and, for the events stored before the
  table, by the migration that made it (:func:`fill_relations`).
* A row's ``stream_ordering`` is its event's: the foreign key follows the
  event when its ordering moves (an outlier joining the DAG, a backfilled
  event placed below the stream).
* Whether a relation counts is decided when read, as redactions are
  (:mod:`ranvier.storage.redactions`): only timeline events (not outliers,
  rejected or soft-failed) relate, and an event a redaction applies to has
  lost its ``m.relates_to`` with the rest of its content, so it relates to
  nothing. :data:`_NOT_REDACTED` is the redactions module's rule written
  in SQL; the tests hold the two to the same answers.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .readers import ReaderPool
from .records import STORED_EVENT_COLUMNS, EventToPersist, StoredEvent, stored_event_from_row
from .redactions import served

__all__ = [
    "Aggregated",
    "RelationStorage",
    "RoomAggregationQuery",
    "ThreadSummary",
    "fill_relations",
    "record_relations",
    "relation_of",
]

_MARKER: Final = b'"m.relates_to"'
_INSERT_SQL: Final = (
    "INSERT OR IGNORE INTO event_relations"
    " (event_id, relates_to_id, rel_type, room_id, stream_ordering) VALUES (?, ?, ?, ?, ?)"
)
_COLUMNS: Final = ", ".join(f"e.{column}" for column in STORED_EVENT_COLUMNS)
_ROOT_COLUMNS: Final = ", ".join(f"root.{column}" for column in STORED_EVENT_COLUMNS)
_TIMELINE: Final = "e.outlier = 0 AND e.soft_failed = 0 AND e.rejected_reason IS NULL"
# The rule of ranvier.storage.redactions.served: an accepted redaction of
# the event's room whose sender had the redact level or shares the
# event's sender's server.
_NOT_REDACTED: Final = """NOT EXISTS (
    SELECT 1 FROM redactions AS x JOIN events AS xe ON xe.event_id = x.event_id
    WHERE x.redacts = e.event_id AND x.room_id = e.room_id
      AND xe.rejected_reason IS NULL AND xe.soft_failed = 0
      AND (x.sender_may_redact
           OR substr(xe.sender, instr(xe.sender, ':')) = substr(e.sender, instr(e.sender, ':'))))"""
# The events related to ?1 (in room ?2) down to ?3 relations away.
_TREE_SQL: Final = """
WITH RECURSIVE tree (event_id, depth) AS (
    SELECT ?1, 0
    UNION
    SELECT r.event_id, tree.depth + 1 FROM event_relations AS r
    JOIN tree ON r.relates_to_id = tree.event_id
    WHERE r.room_id = ?2 AND tree.depth < ?3
)"""
# Stays well under SQLite's limit on bound parameters.
_CHUNK: Final = 500
THREAD: Final = "m.thread"


class _RelatesTo(msgspec.Struct):
    event_id: Any = None
    rel_type: Any = None


class _Content(msgspec.Struct):
    relates_to: Any = msgspec.field(default=None, name="m.relates_to")


class _Event(msgspec.Struct):
    content: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode
_convert_content = functools.partial(msgspec.convert, type=_Content)
_convert_relation = functools.partial(msgspec.convert, type=_RelatesTo)


def relation_of(json: bytes) -> tuple[str, str] | None:
    """``(related event ID, rel_type)`` of an event's JSON; None when its
    content names no relation (a reply's ``m.in_reply_to`` alone is none).
    """
    if _MARKER not in json:
        return None
    try:
        content = _decode_event(json).content
        if type(content) is not dict:
            return None
        relates_to = _convert_content(content).relates_to
        if type(relates_to) is not dict:
            return None
        relation = _convert_relation(relates_to)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if type(relation.event_id) is not str or type(relation.rel_type) is not str:
        return None
    return relation.event_id, relation.rel_type


def record_relations(
    conn: sqlite3.Connection, events: Iterable[EventToPersist], orderings: Mapping[str, int]
) -> None:
    """Write the rows of the events among ``events`` (written already, in
    this transaction, at ``orderings``) that relate to another. An event
    without the ``m.relates_to`` key costs a byte search.
    """
    rows = []
    for event in events:
        relation = relation_of(event.json)
        if relation is not None and relation[0] != event.event_id:
            rows.append((event.event_id, *relation, event.room_id, orderings[event.event_id]))
    if rows:
        conn.executemany(_INSERT_SQL, rows)


def fill_relations(conn: sqlite3.Connection) -> int:
    """Write the rows of every stored event that relates to another, by the
    rule :func:`record_relations` follows; return how many were written.

    For a database whose events were stored before the table existed.
    """
    rows = []
    for event_id, room_id, ordering, json in conn.execute(
        "SELECT event_id, room_id, stream_ordering, json FROM events"
        " WHERE instr(json, CAST('\"m.relates_to\"' AS BLOB)) > 0"
    ):
        relation = relation_of(bytes(json))
        if relation is not None and relation[0] != event_id:
            rows.append((event_id, *relation, room_id, ordering))
    conn.executemany(_INSERT_SQL, rows)
    return len(rows)


# --- Reads ----------------------------------------------------------------------------


def related_events(
    conn: sqlite3.Connection,
    room_id: str,
    event_id: str,
    *,
    rel_type: str | None,
    event_type: str | None,
    after: int,
    upto: int,
    limit: int,
    backwards: bool,
    depth: int,
) -> tuple[list[StoredEvent], bool]:
    """The timeline events of the room that relate to ``event_id``, directly
    or (``depth`` > 1) through up to ``depth`` relations, with
    ``after < stream ordering <= upto``, of ``rel_type`` and ``event_type``
    when given; at most ``limit`` of them from the newest end when
    ``backwards``, else the oldest; and whether more are left.
    """
    conditions = [_TIMELINE, _NOT_REDACTED, "r.stream_ordering > ?4", "r.stream_ordering <= ?5"]
    params: list[object] = [event_id, room_id, depth, after, upto, limit + 1]
    if rel_type is not None:
        params.append(rel_type)
        conditions.append(f"r.rel_type = ?{len(params)}")
    if event_type is not None:
        params.append(event_type)
        conditions.append(f"e.type = ?{len(params)}")
    order = "DESC" if backwards else "ASC"
    rows = conn.execute(
        f"""{_TREE_SQL}
        SELECT {_COLUMNS} FROM tree
        JOIN event_relations AS r ON r.event_id = tree.event_id
        JOIN events AS e ON e.stream_ordering = r.stream_ordering
        WHERE tree.depth > 0 AND r.room_id = ?2 AND {" AND ".join(conditions)}
        ORDER BY r.stream_ordering {order} LIMIT ?6
        """,
        params,
    ).fetchall()
    events = [stored_event_from_row(row) for row in rows[:limit]]
    return events, len(rows) > limit


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    """What a thread root's bundled ``m.thread`` aggregation tells."""

    count: int
    latest: StoredEvent
    #: Whether the user asked about sent one of the thread's events.
    replied: bool


def thread_roots(
    conn: sqlite3.Connection,
    room_id: str,
    *,
    user_id: str,
    participated: bool,
    before: int,
    upto: int,
    limit: int,
) -> tuple[list[tuple[StoredEvent, int]], bool]:
    """The room's thread roots with their latest activity (the position of
    their newest reply at or below ``upto``), that activity below
    ``before``, newest first, at most ``limit``; only threads ``user_id``
    started or replied in when ``participated``; and whether more are left.
    """
    having = "HAVING MAX(e.sender = ?3) = 1 OR root.sender = ?3" if participated else ""
    rows = conn.execute(
        f"""
        SELECT {_ROOT_COLUMNS}, latest FROM (
            SELECT r.relates_to_id AS root_id, MAX(r.stream_ordering) AS latest
            FROM event_relations AS r
            JOIN events AS e ON e.stream_ordering = r.stream_ordering
            JOIN events AS root ON root.event_id = r.relates_to_id
            WHERE r.room_id = ?1 AND r.rel_type = '{THREAD}' AND r.stream_ordering <= ?2
              AND {_TIMELINE} AND {_NOT_REDACTED}
            GROUP BY r.relates_to_id {having}
        ) AS threads
        JOIN events AS root ON root.event_id = threads.root_id
        WHERE root.room_id = ?1 AND threads.latest < ?4
          AND root.outlier = 0 AND root.soft_failed = 0 AND root.rejected_reason IS NULL
        ORDER BY threads.latest DESC LIMIT ?5
        """,
        (room_id, upto, user_id, before, limit + 1),
    ).fetchall()
    roots = served(conn, [stored_event_from_row(row[:-1]) for row in rows[:limit]])
    return [(root, row[-1]) for root, row in zip(roots, rows, strict=False)], len(rows) > limit


def thread_summaries(
    conn: sqlite3.Connection, room_id: str, root_ids: Sequence[str], *, user_id: str, upto: int
) -> dict[str, ThreadSummary]:
    """The ``m.thread`` aggregation of each of ``root_ids`` that has
    replies at or below ``upto``: their number, the newest one (served,
    redacted where a redaction applies), and whether ``user_id`` sent one.
    """
    found: dict[str, tuple[int, int, bool]] = {}
    for start in range(0, len(root_ids), _CHUNK):
        chunk = root_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for root_id, count, latest, replied in conn.execute(
            f"""
            SELECT r.relates_to_id, COUNT(*), MAX(r.stream_ordering), MAX(e.sender = ?)
            FROM event_relations AS r
            JOIN events AS e ON e.stream_ordering = r.stream_ordering
            WHERE r.relates_to_id IN ({marks}) AND r.room_id = ? AND r.rel_type = '{THREAD}'
              AND r.stream_ordering <= ? AND {_TIMELINE} AND {_NOT_REDACTED}
            GROUP BY r.relates_to_id
            """,
            (user_id, *chunk, room_id, upto),
        ):
            found[root_id] = (count, latest, bool(replied))
    orderings = sorted(latest for _, latest, _ in found.values())
    latest_events: dict[int, StoredEvent] = {}
    for start in range(0, len(orderings), _CHUNK):
        chunk_orderings = orderings[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk_orderings))
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events AS e WHERE e.stream_ordering IN ({marks})",
            chunk_orderings,
        ).fetchall()
        for event in served(conn, [stored_event_from_row(row) for row in rows]):
            latest_events[event.stream_ordering] = event
    return {
        root_id: ThreadSummary(count, latest_events[latest], replied)
        for root_id, (count, latest, replied) in found.items()
        if latest in latest_events
    }


def _is_replacement(edit: StoredEvent) -> bool:
    """Whether ``edit`` has what a replacement needs of itself: no state
    key, and ``m.new_content`` (inside the ciphertext of an encrypted one,
    where it cannot be looked for).
    """
    if edit.state_key is not None:
        return False
    if edit.type == "m.room.encrypted":
        return True
    try:
        content = _decode_event(edit.json).content
    except msgspec.DecodeError:
        return False
    return type(content) is dict and type(content.get("m.new_content")) is dict


def latest_edits(
    conn: sqlite3.Connection,
    room_id: str,
    originals: Mapping[str, tuple[str, str]],
    *,
    upto: int,
) -> dict[str, StoredEvent]:
    """The most recent valid ``m.replace`` of each event of ``originals``
    (event ID to its sender and type) at or below ``upto``, by the spec's
    "Validity of replacement events": of the same sender and type, not a
    state event, with ``m.new_content``. The most recent is the one with
    the latest ``origin_server_ts``, then the largest event ID.
    """
    found: dict[str, StoredEvent] = {}
    ids = sorted(originals)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"""
            SELECT r.relates_to_id, {_COLUMNS} FROM event_relations AS r
            JOIN events AS e ON e.stream_ordering = r.stream_ordering
            WHERE r.relates_to_id IN ({marks}) AND r.room_id = ? AND r.rel_type = 'm.replace'
              AND r.stream_ordering <= ? AND {_TIMELINE} AND {_NOT_REDACTED}
            ORDER BY e.origin_server_ts, e.event_id
            """,
            (*chunk, room_id, upto),
        ).fetchall()
        for row in rows:
            edit = stored_event_from_row(row[1:])
            if (edit.sender, edit.type) == originals[row[0]] and _is_replacement(edit):
                found[row[0]] = edit
    return found


def references(
    conn: sqlite3.Connection, room_id: str, event_ids: Sequence[str], *, upto: int
) -> dict[str, list[str]]:
    """The IDs of the events at or below ``upto`` that ``m.reference`` each
    of ``event_ids`` that has any, oldest first.
    """
    found: dict[str, list[str]] = {}
    for start in range(0, len(event_ids), _CHUNK):
        chunk = event_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for parent, child in conn.execute(
            f"""
            SELECT r.relates_to_id, r.event_id FROM event_relations AS r
            JOIN events AS e ON e.stream_ordering = r.stream_ordering
            WHERE r.relates_to_id IN ({marks}) AND r.room_id = ?
              AND r.rel_type = 'm.reference'
              AND r.stream_ordering <= ? AND {_TIMELINE} AND {_NOT_REDACTED}
            ORDER BY r.stream_ordering
            """,
            (*chunk, room_id, upto),
        ):
            found.setdefault(parent, []).append(child)
    return found


#: ``(room ID, event IDs, the sender and type of those that may be edited
#: by event ID, the last position the user may read)``.
RoomAggregationQuery = tuple[str, Sequence[str], Mapping[str, tuple[str, str]], int]


@dataclass(frozen=True, slots=True)
class Aggregated:
    """What :func:`aggregations` found, by the ID of the event aggregated."""

    threads: dict[str, ThreadSummary]
    edits: dict[str, StoredEvent]
    references: dict[str, list[str]]


def aggregations(
    conn: sqlite3.Connection, user_id: str, rooms: Sequence[RoomAggregationQuery]
) -> Aggregated:
    """The thread summaries (:func:`thread_summaries`), latest edits
    (:func:`latest_edits`) and references (:func:`references`) of the
    events of several rooms, in one read.
    """
    found = Aggregated({}, {}, {})
    for room_id, event_ids, editable, upto in rooms:
        ids = sorted(set(event_ids))
        found.threads.update(thread_summaries(conn, room_id, ids, user_id=user_id, upto=upto))
        found.references.update(references(conn, room_id, ids, upto=upto))
        if editable:
            found.edits.update(latest_edits(conn, room_id, editable, upto=upto))
    return found


class RelationStorage:
    """Reads of relations for the client-server API (:mod:`ranvier.core.relations`)."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def related_events(
        self,
        room_id: str,
        event_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        after: int,
        upto: int,
        limit: int,
        backwards: bool,
        depth: int,
    ) -> tuple[list[StoredEvent], bool]:
        """See :func:`related_events`."""
        return await self._readers.read(
            functools.partial(
                related_events,
                room_id=room_id,
                event_id=event_id,
                rel_type=rel_type,
                event_type=event_type,
                after=after,
                upto=upto,
                limit=limit,
                backwards=backwards,
                depth=depth,
            )
        )

    async def thread_roots(
        self,
        room_id: str,
        *,
        user_id: str,
        participated: bool,
        before: int,
        upto: int,
        limit: int,
    ) -> tuple[list[tuple[StoredEvent, int]], bool]:
        """See :func:`thread_roots`."""
        return await self._readers.read(
            functools.partial(
                thread_roots,
                room_id=room_id,
                user_id=user_id,
                participated=participated,
                before=before,
                upto=upto,
                limit=limit,
            )
        )

    async def aggregations(self, user_id: str, rooms: Sequence[RoomAggregationQuery]) -> Aggregated:
        """See :func:`aggregations`."""
        wanted = [
            (room_id, tuple(event_ids), dict(editable), upto)
            for room_id, event_ids, editable, upto in rooms
        ]
        return await self._readers.read(
            functools.partial(aggregations, user_id=user_id, rooms=wanted)
        )
