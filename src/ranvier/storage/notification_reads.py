"""What a user's unread notification counts are computed from, per room.

A user has read a room up to the later of their ``m.read`` and
``m.read.private`` receipts (the spec's "Marking notifications as read"),
and at least up to their own membership event in its current state: what
came before they joined never notified them, and an event they sent marks
the room read as a receipt there would. A threaded receipt (one on the
main timeline, ``main``, or on a thread) reads only its own timeline:
once the user has one in a room, each timeline of the room is read up to
its own receipt or the unthreaded one, whichever is later, and the room's
count is the sum of its timelines'. The events after that point are the
candidates; :mod:`ranvier.core.notification_counts` runs the user's
push rules over them. Besides the events, the rules read a little of the
room's current state: the user's member event (their display name), the
power levels and create events (who may notify ``@room``), and how many
members have joined.

All rooms of one ``/sync`` are read in one read transaction, so the counts
of one response come from one snapshot of the database.

Only accepted events of the DAG count: outliers, rejected and soft-failed
events are not in the room's timeline.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from .ignored_users import read_ignored_users
from .readers import ReaderPool
from .records import ReplacedState
from .replaced_state import read_replaced_state

__all__ = [
    "Counted",
    "NotificationCandidates",
    "NotificationReads",
    "NotificationRoom",
    "UnreadEvents",
    "count_joined",
    "current_state_json",
    "read_notification_candidates",
    "read_unread_events",
]

_READ_RECEIPTS: Final = ("m.read", "m.read.private")

#: What a caller counted of a room before: ``(read_upto, counted_upto,
#: receipts_seen)``, as :class:`UnreadEvents` had them.
Counted = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class UnreadEvents:
    """One room's candidates for the user's notification counts."""

    #: The stream ordering the user has read up to: their receipts, or
    #: their current membership event if later (0: neither).
    read_upto: int
    #: The ordering the events start after: ``read_upto``, or a later
    #: position when the caller had counted up to it under the same receipt.
    after: int
    #: ``(stream ordering, sender, event JSON)`` after ``after``, oldest first.
    events: list[tuple[int, str, bytes]]
    #: False when more events followed ``after`` than were asked for: only
    #: the newest are here.
    complete: bool
    room_version: str | None
    member_json: bytes | None
    power_levels_json: bytes | None
    create_json: bytes | None
    #: Joined members, counted up to the cap asked for.
    joined: int
    #: Read per thread, when asked for or when the user has threaded
    #: receipts in the room: each threaded receipt's stream ordering by
    #: thread (``main`` for the main timeline's), at least ``read_upto``,
    #: which is then the unthreaded receipts' alone. Empty when the user
    #: has only unthreaded receipts: then ``read_upto`` reads every timeline.
    thread_reads: dict[str, int] = field(default_factory=dict)
    #: The newest of the user's read receipts in the room as the receipts
    #: stream numbers them (0: none), for :func:`read_unread_events` to
    #: tell next time whether any receipt has moved since.
    receipts_seen: int = 0


def read_unread_events(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    rooms: Mapping[str, Counted | None],
    upto: int,
    limit: int,
    count_cap: int,
    by_thread: bool = False,
) -> dict[str, UnreadEvents]:
    """Each room's :class:`UnreadEvents` up to stream ordering ``upto``.

    ``rooms`` maps a room to what the caller counted before, if anything:
    ``(read_upto, counted_upto, receipts_seen)``. When nothing changed
    since, no events are read. When the user's receipts are all unthreaded
    and still read up to the same point, the events start after
    ``counted_upto``; otherwise after the receipt. At most ``limit`` events
    (the newest) are read per room, and the joined members are counted up
    to ``count_cap``.

    ``by_thread``, or threaded receipts of the user in the room, read the
    receipts of each thread apart: ``read_upto`` is then the unthreaded
    receipts' (and the membership's) alone, the events start after it, and
    ``thread_reads`` holds the rest.
    """
    found: dict[str, UnreadEvents] = {}
    for room_id, counted in rooms.items():
        receipts = _receipt_marks(conn, room_id, user_id)
        receipt = receipts.reads.get("", 0)
        if (
            counted is not None
            and not by_thread
            and _unchanged(conn, room_id, counted, upto, receipts)
        ):
            read_upto, counted_upto, _ = counted
            found[room_id] = UnreadEvents(
                read_upto=read_upto,
                after=counted_upto,
                events=[],
                complete=True,
                room_version=None,
                member_json=None,
                power_levels_json=None,
                create_json=None,
                joined=0,
                receipts_seen=receipts.newest,
            )
            continue
        member = _current_state_row(conn, room_id, "m.room.member", user_id)
        joined_at = 0 if member is None else member[0]
        read_upto = max(receipt, joined_at)
        thread_reads = {
            thread: max(ordering, read_upto)
            for thread, ordering in receipts.reads.items()
            if thread != ""
        }
        after = read_upto
        if (
            counted is not None
            and not thread_reads
            and counted[0] == read_upto
            and read_upto <= counted[1] <= upto
        ):
            # Only unthreaded receipts, still where they were: one timeline,
            # counted on from where the last count stopped.
            after = counted[1]
        rows = conn.execute(
            "SELECT stream_ordering, sender, json FROM events"
            " WHERE room_id = ? AND stream_ordering > ? AND stream_ordering <= ?"
            " AND outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
            " ORDER BY stream_ordering DESC LIMIT ?",
            (room_id, after, upto, limit + 1),
        ).fetchall()
        complete = len(rows) <= limit
        events = [(ordering, sender, bytes(json)) for ordering, sender, json in rows[:limit]]
        events.reverse()
        version = conn.execute(
            "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        found[room_id] = UnreadEvents(
            read_upto=read_upto,
            after=after,
            events=events,
            complete=complete,
            room_version=None if version is None else version[0],
            member_json=None if member is None else member[1],
            power_levels_json=current_state_json(conn, room_id, "m.room.power_levels", "")
            if events
            else None,
            create_json=current_state_json(conn, room_id, "m.room.create", "") if events else None,
            joined=count_joined(conn, room_id, count_cap) if events else 0,
            thread_reads=thread_reads,
            receipts_seen=receipts.newest,
        )
    return found


@dataclass(frozen=True, slots=True)
class NotificationRoom:
    """What the push rules and the read flag of ``/notifications`` need of
    one joined room.
    """

    #: As :attr:`UnreadEvents.read_upto`, with threaded receipts apart.
    read_upto: int
    #: Each thread's receipt by thread root (``main`` for the main timeline).
    thread_reads: dict[str, int]
    room_version: str | None
    member_json: bytes | None
    power_levels_json: bytes | None
    create_json: bytes | None
    joined: int


@dataclass(frozen=True, slots=True)
class NotificationCandidates:
    """Events that may have notified a user, newest first, with their rooms."""

    #: ``(stream ordering, room ID, event ID, event JSON)``: accepted events
    #: of the rooms the user is joined to, sent by others after they joined.
    events: list[tuple[int, str, str, bytes]]
    #: The rooms of :attr:`events`.
    rooms: dict[str, NotificationRoom]
    #: Whether older candidates may follow the last of :attr:`events`.
    more: bool


def read_notification_candidates(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    before: int | None,
    limit: int,
    count_cap: int,
) -> NotificationCandidates:
    """The newest ``limit`` candidates across the user's joined rooms, below
    stream ordering ``before`` when given.

    Each room is read through its own index range and the results merged,
    so a user in a few quiet rooms of a busy server costs a few short
    reads, not a walk through everyone's events.
    """
    joined = conn.execute(
        "SELECT cs.room_id, e.stream_ordering FROM current_state AS cs"
        " JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.type = 'm.room.member' AND cs.state_key = ?"
        " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'",
        (user_id,),
    ).fetchall()
    bound = "" if before is None else " AND stream_ordering < ?"
    events: list[tuple[int, str, str, bytes]] = []
    more = False
    for room_id, joined_at in joined:
        rows = conn.execute(
            "SELECT stream_ordering, event_id, json FROM events"
            " WHERE room_id = ? AND stream_ordering > ? AND sender != ?"
            " AND outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
            f"{bound} ORDER BY stream_ordering DESC LIMIT ?",
            (room_id, joined_at, user_id, *(() if before is None else (before,)), limit),
        ).fetchall()
        more = more or len(rows) == limit
        events.extend(
            (int(ordering), str(room_id), str(event_id), bytes(json))
            for ordering, event_id, json in rows
        )
    events.sort(key=lambda event: event[0], reverse=True)
    if len(events) > limit:
        more = True
        del events[limit:]
    rooms = {
        room_id: _notification_room(conn, room_id, user_id, count_cap)
        for room_id in {room_id for _, room_id, _, _ in events}
    }
    return NotificationCandidates(events=events, rooms=rooms, more=more)


def _notification_room(
    conn: sqlite3.Connection, room_id: str, user_id: str, count_cap: int
) -> NotificationRoom:
    member = _current_state_row(conn, room_id, "m.room.member", user_id)
    joined_at = 0 if member is None else member[0]
    version = conn.execute(
        "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
    ).fetchone()
    return NotificationRoom(
        read_upto=max(_read_upto(conn, room_id, user_id, ("",)), joined_at),
        thread_reads=_thread_reads(conn, room_id, user_id),
        room_version=None if version is None else version[0],
        member_json=None if member is None else member[1],
        power_levels_json=current_state_json(conn, room_id, "m.room.power_levels", ""),
        create_json=current_state_json(conn, room_id, "m.room.create", ""),
        joined=count_joined(conn, room_id, count_cap),
    )


def _unchanged(
    conn: sqlite3.Connection,
    room_id: str,
    counted: Counted,
    upto: int,
    receipts: _ReceiptMarks,
) -> bool:
    """Whether a room's count up to ``counted`` (``(read_upto,
    counted_upto, receipts_seen)``) holds up to ``upto``: no accepted event
    since, and no receipt of the user's written since.

    Every receipt written takes a new position in the receipts stream, so
    an unchanged newest position means every receipt, threaded or not, is
    where it was; the membership that also bounds what was read is an
    event of the room, which would show as new, as would the event of a
    receipt sent before the server had it. Two index seeks, where counting
    again reads the room's membership, receipts and state: a user in many
    rooms, of which few changed, is counted at the cost of those few.
    """
    read_upto, counted_upto, receipts_seen = counted
    if not read_upto <= counted_upto <= upto or receipts.newest != receipts_seen:
        return False
    newer = conn.execute(
        "SELECT 1 FROM events WHERE room_id = ? AND stream_ordering > ? AND stream_ordering <= ?"
        " AND outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL LIMIT 1",
        (room_id, counted_upto, upto),
    ).fetchone()
    return newer is None


@dataclass(frozen=True, slots=True)
class _ReceiptMarks:
    """A user's read receipts in one room."""

    #: The latest event read by thread (``''`` unthreaded, ``main`` for the
    #: main timeline), as a stream ordering.
    reads: dict[str, int]
    #: The newest receipt's position in the receipts stream (0: none).
    newest: int


def _receipt_marks(conn: sqlite3.Connection, room_id: str, user_id: str) -> _ReceiptMarks:
    rows = conn.execute(
        "SELECT r.thread_id, MAX(e.stream_ordering), MAX(r.stream_id) FROM receipts AS r"
        " LEFT JOIN events AS e ON e.event_id = r.event_id"
        " WHERE r.room_id = ? AND r.user_id = ? AND r.receipt_type IN (?, ?)"
        " GROUP BY r.thread_id",
        (room_id, user_id, *_READ_RECEIPTS),
    ).fetchall()
    return _ReceiptMarks(
        reads={str(thread): int(ordering) for thread, ordering, _ in rows if ordering is not None},
        newest=max((int(stream) for _, _, stream in rows), default=0),
    )


def _read_upto(
    conn: sqlite3.Connection, room_id: str, user_id: str, threads: tuple[str, ...]
) -> int:
    marks = ", ".join("?" for _ in threads)
    row = conn.execute(
        "SELECT MAX(e.stream_ordering) FROM receipts AS r"
        " JOIN events AS e ON e.event_id = r.event_id"
        " WHERE r.room_id = ? AND r.user_id = ? AND r.receipt_type IN (?, ?)"
        f" AND r.thread_id IN ({marks})",
        (room_id, user_id, *_READ_RECEIPTS, *threads),
    ).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _thread_reads(conn: sqlite3.Connection, room_id: str, user_id: str) -> dict[str, int]:
    """The later of each thread's read receipts, by thread (``main`` included)."""
    rows = conn.execute(
        "SELECT r.thread_id, MAX(e.stream_ordering) FROM receipts AS r"
        " JOIN events AS e ON e.event_id = r.event_id"
        " WHERE r.room_id = ? AND r.user_id = ? AND r.receipt_type IN (?, ?)"
        " AND r.thread_id != '' GROUP BY r.thread_id",
        (room_id, user_id, *_READ_RECEIPTS),
    ).fetchall()
    return {str(thread): int(ordering) for thread, ordering in rows}


def _current_state_row(
    conn: sqlite3.Connection, room_id: str, type_: str, state_key: str
) -> tuple[int, bytes] | None:
    """The stream ordering and JSON of the room's current state event at
    ``(type_, state_key)``.
    """
    row = conn.execute(
        "SELECT e.stream_ordering, e.json FROM current_state AS cs"
        " JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.room_id = ? AND cs.type = ? AND cs.state_key = ?",
        (room_id, type_, state_key),
    ).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def current_state_json(
    conn: sqlite3.Connection, room_id: str, type_: str, state_key: str
) -> bytes | None:
    """The JSON of the room's current state event at ``(type_, state_key)``."""
    row = _current_state_row(conn, room_id, type_, state_key)
    return None if row is None else row[1]


def count_joined(conn: sqlite3.Connection, room_id: str, cap: int) -> int:
    """The room's joined members, counted up to ``cap``: a big room's
    members are not all read to learn that it has more than the push rules
    ask about.
    """
    row = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM current_state AS cs"
        " JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.room_id = ? AND cs.type = 'm.room.member'"
        " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join' LIMIT ?)",
        (room_id, cap),
    ).fetchone()
    return int(row[0])


class NotificationReads:
    """:func:`read_unread_events` through the reader pool."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        return await self._readers.read(functools.partial(read_ignored_users, user_id=user_id))

    async def get_replaced_state(self, event_ids: Collection[str]) -> dict[str, ReplacedState]:
        """What each state event of ``event_ids`` replaced, the replaced
        event as served (:mod:`ranvier.storage.replaced_state`)."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(read_replaced_state, event_ids=ids))

    async def notification_candidates(
        self, user_id: str, *, before: int | None, limit: int, count_cap: int
    ) -> NotificationCandidates:
        return await self._readers.read(
            functools.partial(
                read_notification_candidates,
                user_id=user_id,
                before=before,
                limit=limit,
                count_cap=count_cap,
            )
        )

    async def unread_events(
        self,
        user_id: str,
        rooms: Mapping[str, Counted | None],
        *,
        upto: int,
        limit: int,
        count_cap: int,
        by_thread: bool = False,
    ) -> dict[str, UnreadEvents]:
        return await self._readers.read(
            functools.partial(
                read_unread_events,
                user_id=user_id,
                rooms=dict(rooms),
                upto=upto,
                limit=limit,
                count_cap=count_cap,
                by_thread=by_thread,
            )
        )
