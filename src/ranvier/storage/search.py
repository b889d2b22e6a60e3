"""The full-text index of room events, for server-side search (``POST /search``).

The spec names three searchable keys: ``content.body`` of
``m.room.message``, ``content.name`` of ``m.room.name`` and
``content.topic`` of ``m.room.topic``. ``event_search`` is an SQLite FTS5
table with one row per stored timeline event that has its type's key as a
string: the text, and the event's ID, room and key (not indexed).

Invariants:

* A row is written in the transaction that writes its event
  (:func:`record_search`, from :func:`ranvier.storage.writes.persist_events`,
  whatever path the event came by: local, federated, backfilled, or from a
  worker through replication), once per event: when it is first written
  into the timeline, or when an outlier joins it. Outliers get none; the
  events stored before the table got theirs from the migration that made
  it (:func:`fill_search`).
* Rows name events by ID, not by stream ordering, as a backfilled event's
  ordering moves after it is written; reads join ``events`` by ID for the
  ordering, and FTS5 rowids are never relied on.
* What may be found is decided when read, as for relations
  (:mod:`ranvier.storage.relations`): only timeline events (neither
  outliers, rejected nor soft-failed, all of which may still change), and
  none a redaction applies to (a redacted event has lost its content).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from .readers import ReaderPool
from .records import STORED_EVENT_COLUMNS, EventToPersist, StoredEvent, stored_event_from_row
from .relations import _NOT_REDACTED, _TIMELINE
from .sync_reads import joined_rooms

__all__ = [
    "SEARCHABLE_KEYS",
    "SearchHit",
    "SearchPage",
    "SearchStorage",
    "fill_search",
    "record_search",
    "searchable_text",
]

#: The searchable key of each event type that has one.
SEARCHABLE_KEYS: Final[Mapping[str, str]] = {
    "m.room.message": "content.body",
    "m.room.name": "content.name",
    "m.room.topic": "content.topic",
}
_INSERT_SQL: Final = "INSERT INTO event_search (value, event_id, room_id, key) VALUES (?, ?, ?, ?)"
_COLUMNS: Final = ", ".join(f"e.{column}" for column in STORED_EVENT_COLUMNS)


class _Event(msgspec.Struct):
    content: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode


def searchable_text(event_type: str, json: bytes) -> tuple[str, str] | None:
    """``(key, text)`` of an event's searchable key, or None when its type
    has none or its content does not hold a string there.
    """
    key = SEARCHABLE_KEYS.get(event_type)
    if key is None:
        return None
    try:
        content = _decode_event(json).content
    except msgspec.DecodeError:
        return None
    if type(content) is not dict:
        return None
    text = content.get(key.removeprefix("content."))
    if type(text) is not str or not text:
        return None
    return key, text


def record_search(
    conn: sqlite3.Connection,
    events: Iterable[EventToPersist],
    stored_before: Mapping[str, tuple[int, bool]],
) -> None:
    """Write the index rows of the events among ``events`` (written already,
    in this transaction) that joined the timeline just now: those not
    stored before (``stored_before``: event ID to stream ordering and
    whether it was an outlier), or stored as outliers. An event of a type
    without a searchable key costs a dictionary look-up.
    """
    rows = []
    seen: set[str] = set()
    for event in events:
        if event.type not in SEARCHABLE_KEYS or event.outlier or event.event_id in seen:
            continue
        before = stored_before.get(event.event_id)
        if before is not None and not before[1]:
            continue
        seen.add(event.event_id)
        found = searchable_text(event.type, event.json)
        if found is not None:
            rows.append((found[1], event.event_id, event.room_id, found[0]))
    if rows:
        conn.executemany(_INSERT_SQL, rows)


def fill_search(conn: sqlite3.Connection) -> int:
    """Write the rows of every stored timeline event with a searchable key,
    by the rule :func:`record_search` follows; return how many were written.

    For a database whose events were stored before the table existed.
    """
    marks = ",".join("?" * len(SEARCHABLE_KEYS))
    rows = []
    for event_id, room_id, event_type, json in conn.execute(
        f"SELECT event_id, room_id, type, json FROM events WHERE type IN ({marks}) AND outlier = 0",
        tuple(SEARCHABLE_KEYS),
    ):
        found = searchable_text(event_type, bytes(json))
        if found is not None:
            rows.append((found[1], event_id, room_id, found[0]))
    conn.executemany(_INSERT_SQL, rows)
    return len(rows)


# --- Reads ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One event found, with how well it matched (higher is closer)."""

    event: StoredEvent
    rank: float
    #: The text of the key it was found by.
    text: str


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of :func:`search_events`: the hits in order, and how many
    events match in all.
    """

    hits: list[SearchHit]
    count: int


def search_events(
    conn: sqlite3.Connection,
    query: str,
    *,
    room_ids: Sequence[str],
    keys: Collection[str],
    order_by: Literal["rank", "recent"],
    below: int | None,
    offset: int,
    limit: int,
    count: bool = True,
) -> SearchPage:
    """The timeline events of ``room_ids`` whose ``keys`` match the FTS5
    ``query``, none a redaction applies to: by rank (best first, from
    ``offset``), or by recency (newest first, below stream ordering
    ``below`` when given); at most ``limit``; with the count of all the
    matching events when ``count`` (else 0).
    """
    if not room_ids or not keys:
        return SearchPage([], 0)
    room_marks = ",".join("?" * len(room_ids))
    key_marks = ",".join("?" * len(keys))
    where = f"""event_search MATCH ? AND event_search.room_id IN ({room_marks})
        AND event_search.key IN ({key_marks}) AND e.room_id = event_search.room_id
        AND {_TIMELINE} AND {_NOT_REDACTED}"""
    params: list[object] = [query, *room_ids, *sorted(keys)]
    total = 0
    if count:
        (total,) = conn.execute(
            "SELECT COUNT(*) FROM event_search"
            f" JOIN events AS e ON e.event_id = event_search.event_id WHERE {where}",
            params,
        ).fetchone()
    if order_by == "recent":
        page_where = where if below is None else f"{where} AND e.stream_ordering < ?"
        page_params = params if below is None else [*params, below]
        order = "e.stream_ordering DESC LIMIT ?"
        page_params = [*page_params, limit]
    else:
        page_where = where
        order = "bm25(event_search), e.stream_ordering DESC LIMIT ? OFFSET ?"
        page_params = [*params, limit, offset]
    rows = conn.execute(
        f"""SELECT {_COLUMNS}, bm25(event_search), event_search.value
        FROM event_search JOIN events AS e ON e.event_id = event_search.event_id
        WHERE {page_where} ORDER BY {order}""",
        page_params,
    ).fetchall()
    hits = [
        # bm25 is lower for closer matches; the spec's rank is higher.
        SearchHit(stored_event_from_row(row[:-2]), -float(row[-2]), str(row[-1]))
        for row in rows
    ]
    return SearchPage(hits, int(total))


class SearchStorage:
    """Reads of the full-text index for :mod:`ranvier.core.search`."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def joined_rooms(self, user_id: str) -> list[str]:
        """The rooms ``user_id`` is joined to now."""
        return await self._readers.read(functools.partial(joined_rooms, user_id=user_id))

    async def search_events(
        self,
        query: str,
        *,
        room_ids: Sequence[str],
        keys: Collection[str],
        order_by: Literal["rank", "recent"],
        below: int | None,
        offset: int,
        limit: int,
        count: bool = True,
    ) -> SearchPage:
        """See :func:`search_events`."""
        return await self._readers.read(
            functools.partial(
                search_events,
                query=query,
                room_ids=tuple(room_ids),
                keys=tuple(keys),
                order_by=order_by,
                below=below,
                offset=offset,
                limit=limit,
                count=count,
            )
        )
