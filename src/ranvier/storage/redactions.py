"""Redactions: which stored events are served redacted, and why.

An event's JSON stays in ``events`` as it arrived, redacted or not, until
housekeeping replaces it with its redacted form once the redaction is old
(:mod:`ranvier.storage.redacted_content`): its signatures and content hash
cover every byte, and a server that later asks for the auth chain or state
still checks what it gets against the signatures (a redacted copy passes
those, the original also passes the content hash). The redaction is
applied on the way out instead, to every read that serves events to
clients or to other servers, and to the events the auth checks read
(:func:`events_for_auth`): Synapse judges events against the redacted
form of their auth events, and servers that read different content for
the same auth event can reach different verdicts. State resolution and
the check of outliers read events as stored, as Synapse's do.

Invariants:

* ``redactions`` has a row for every stored ``m.room.redaction`` event that
  names an event ID, whatever its verdict, written in the transaction that
  writes the event (and, for a database made before the table, by the
  migration that made it).
* ``sender_may_redact`` says whether the redaction's sender had the room's
  *redact level* by the power levels and create events the redaction cites
  as auth events. It depends on the event alone, so it is worked out once.
* Whether a redaction applies is decided when an event is read, never
  stored: the redaction's verdict can still change (an event with partial
  state is judged again once the room's state is complete), and its target
  may arrive after it.

A redaction applies (the "Handling redactions" rules of room versions 3
and later) when it is accepted (neither rejected nor soft-failed), is an
event of the target's room, and its sender either had the redact level or
is of the same server as the target's sender. A redaction stored before its
target applies once the target is stored. When several apply, the first
stored is the one shown as ``redacted_because``.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Final

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.auth import create_event_id_for_room
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import get_named_level, get_user_power_level
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import get_room_version

from .readers import ReaderPool
from .reads import get_events
from .records import STORED_EVENT_COLUMNS, EventToPersist, StoredEvent, stored_event_from_row

__all__ = [
    "RedactedEvent",
    "RedactionStorage",
    "events_for_auth",
    "fill_redactions",
    "pruned_row",
    "record_redactions",
    "redaction_applies",
    "redaction_targets",
    "served",
    "served_events",
]

_REDACTION: Final = "m.room.redaction"
_CREATE: Final = "m.room.create"
_EVENT_COLUMNS: Final = ", ".join(f"e.{column}" for column in STORED_EVENT_COLUMNS)
_INSERT_SQL: Final = (
    "INSERT INTO redactions (event_id, redacts, room_id, sender_may_redact, received_ts)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)
# Stays well under SQLite's limit on bound parameters.
_CHUNK: Final = 500


class RedactedEvent(StoredEvent, frozen=True, kw_only=True):
    """A stored event as it is served once redacted: ``json`` is the
    redacted PDU (no ``unsigned``), the rest is the row as stored.
    """

    #: The redaction that applies, as stored.
    redacted_because: StoredEvent


class _Target(msgspec.Struct):
    """Where a redaction names its target: top level before v11, content from v11."""

    redacts: Any = None
    content: Any = None


_decode_target = msgspec.json.Decoder(_Target).decode


def _redacts(json: bytes, room_version: str) -> str | None:
    fields = _decode_target(json)
    try:
        rv = get_room_version(room_version, unsupported_ok=True)
    except MatrixError:
        return None
    if rv.redacts_in_content:
        target = fields.content.get("redacts") if type(fields.content) is dict else None
    else:
        target = fields.redacts
    return target if type(target) is str else None


def _sender_may_redact(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    room_version: str,
    sender: str,
    auth_event_ids: Sequence[str],
) -> bool:
    """Whether ``sender`` had the redact level by the events a redaction
    cites as auth events (and, from v12, the room's create event, which no
    event cites). False when any of them is not stored: the level cannot
    be told then, and the same-server rule still lets the sender's own
    server's redactions apply.
    """
    try:
        rv = get_room_version(room_version)
    except MatrixError:
        return False
    wanted = set(auth_event_ids)
    if rv.room_id_from_create_event:
        wanted.add(create_event_id_for_room(room_id))
    if not wanted:
        return False
    marks = ",".join("?" * len(wanted))
    rows = conn.execute(
        f"SELECT event_id, type, state_key, json FROM events WHERE event_id IN ({marks})",
        sorted(wanted),
    ).fetchall()
    if len(rows) != len(wanted):
        return False
    found: dict[str, Pdu] = {}
    for _, event_type, state_key, json in rows:
        if state_key == "" and event_type in ("m.room.create", "m.room.power_levels"):
            try:
                found[event_type] = Pdu.from_json(bytes(json), rv, check_limits=False)
            except MatrixError:
                return False
    create = found.get("m.room.create")
    if create is None:
        return False
    power_levels = found.get("m.room.power_levels")
    level = get_user_power_level(sender, power_levels=power_levels, create=create)
    return level >= get_named_level(power_levels, "redact")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def record_redactions(
    conn: sqlite3.Connection, events: Iterable[EventToPersist], received_ts: int | None = None
) -> None:
    """Write the rows of the redactions among ``events`` (written already,
    in this transaction). Events of other types cost a comparison each.
    """
    rows = []
    for event in events:
        if event.type != _REDACTION:
            continue
        target = _redacts(event.json, event.room_version)
        if target is None:
            continue
        may_redact = _sender_may_redact(
            conn,
            room_id=event.room_id,
            room_version=event.room_version,
            sender=event.sender,
            auth_event_ids=event.auth_event_ids,
        )
        rows.append((event.event_id, target, event.room_id, may_redact, received_ts))
    if rows:
        ts = _now_ms() if received_ts is None else received_ts
        conn.executemany(_INSERT_SQL, [(*row[:4], ts) for row in rows])


def fill_redactions(conn: sqlite3.Connection, received_ts: int | None = None) -> int:
    """Write the rows of every stored redaction, by the rule
    :func:`record_redactions` follows; return how many were written.

    For a database whose events were stored before the table existed.
    """
    ts = _now_ms() if received_ts is None else received_ts
    stored = conn.execute(
        """
        SELECT e.event_id, e.room_id, r.room_version, e.sender, e.json
        FROM events AS e JOIN rooms AS r ON r.room_id = e.room_id
        WHERE e.type = ?
        ORDER BY e.stream_ordering
        """,
        (_REDACTION,),
    ).fetchall()
    rows = []
    for event_id, room_id, room_version, sender, json in stored:
        target = _redacts(bytes(json), room_version)
        if target is None:
            continue
        auth = [
            auth_id
            for (auth_id,) in conn.execute(
                "SELECT auth_event_id FROM event_auth WHERE event_id = ?", (event_id,)
            )
        ]
        may_redact = _sender_may_redact(
            conn, room_id=room_id, room_version=room_version, sender=sender, auth_event_ids=auth
        )
        rows.append((event_id, target, room_id, may_redact, ts))
    conn.executemany(_INSERT_SQL, rows)
    return len(rows)


# --- Serving -------------------------------------------------------------------------


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def redaction_applies(
    *,
    redaction_room_id: str,
    redaction_sender: str,
    sender_may_redact: bool,
    target_room_id: str,
    target_sender: str,
) -> bool:
    """Whether an accepted redaction applies to the event it names (the
    module's rule): one of its room, by a sender with the redact level or of
    the same server as the event's sender."""
    return redaction_room_id == target_room_id and (
        sender_may_redact or _server_of(redaction_sender) == _server_of(target_sender)
    )


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def pruned_row(event: StoredEvent, room_version: str) -> dict[str, Any]:
    """The fields of ``event``'s row with its JSON pruned by the room
    version's redaction algorithm: a served copy's, redacted or erased."""
    fields = msgspec.structs.asdict(event)
    fields["json"] = msgspec.json.encode(
        redact(msgspec.json.decode(event.json), room_version), order="sorted"
    )
    return fields


def _redacted(event: StoredEvent, because: StoredEvent, room_version: str) -> RedactedEvent:
    return RedactedEvent(**pruned_row(event, room_version), redacted_because=because)


def served(conn: sqlite3.Connection, events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """``events`` as they are served: each one a redaction applies to
    replaced by its :class:`RedactedEvent`, in the same order.

    One indexed look-up per 500 events, whatever they are; an event
    nothing redacts is handed back as it is.
    """
    if not events:
        return []
    targets = list(dict.fromkeys(event.event_id for event in events))
    by_id = {event.event_id: event for event in events}
    applied: dict[str, RedactedEvent] = {}
    for chunk in _chunks(targets):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"""
            SELECT r.redacts, r.sender_may_redact, rooms.room_version, {_EVENT_COLUMNS}
            FROM redactions AS r
            JOIN events AS e ON e.event_id = r.event_id
            JOIN rooms ON rooms.room_id = r.room_id
            WHERE r.redacts IN ({marks})
              AND e.rejected_reason IS NULL AND e.soft_failed = 0
            ORDER BY e.stream_ordering
            """,
            chunk,
        ):
            target_id, may_redact, room_version = row[0], row[1], row[2]
            if target_id in applied:
                continue
            target = by_id[target_id]
            redaction = stored_event_from_row(row[3:])
            if redaction_applies(
                redaction_room_id=redaction.room_id,
                redaction_sender=redaction.sender,
                sender_may_redact=bool(may_redact),
                target_room_id=target.room_id,
                target_sender=target.sender,
            ):
                applied[target_id] = _redacted(target, redaction, room_version)
    if not applied:
        return list(events)
    return [applied.get(event.event_id, event) for event in events]


def served_events(conn: sqlite3.Connection, event_ids: Collection[str]) -> dict[str, StoredEvent]:
    """The stored events of ``event_ids`` by ID, as they are served."""
    found = get_events(conn, event_ids)
    return {event.event_id: event for event in served(conn, list(found.values()))}


def events_for_auth(conn: sqlite3.Connection, event_ids: Collection[str]) -> dict[str, StoredEvent]:
    """The stored events of ``event_ids`` by ID, as the auth checks read them.

    That is as they are served, redacted where a redaction applies, except
    create events, which are read as stored: Synapse never applies a
    redaction to an ``m.room.create`` event, and the rules read from it
    what pruning drops before room version 11 (``m.federate``).
    """
    found = get_events(conn, event_ids)
    redactable = [event for event in found.values() if event.type != _CREATE]
    found.update((event.event_id, event) for event in served(conn, redactable))
    return found


def redaction_targets(conn: sqlite3.Connection, event_ids: Collection[str]) -> frozenset[str]:
    """Which of ``event_ids`` a stored redaction names, whatever its verdict
    and whether or not the event itself is stored."""
    named: set[str] = set()
    for chunk in _chunks(list(set(event_ids))):
        marks = ",".join("?" * len(chunk))
        named.update(
            target
            for (target,) in conn.execute(
                f"SELECT DISTINCT redacts FROM redactions WHERE redacts IN ({marks})", chunk
            )
        )
    return frozenset(named)


class RedactionStorage:
    """Reads of events as they are served to clients and other servers."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def get_served_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """The stored events of ``event_ids`` by ID, redacted where a redaction applies."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(served_events, event_ids=ids))
