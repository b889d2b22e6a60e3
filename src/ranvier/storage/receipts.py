"""Receipts: which event each user has read up to in each room.

Table (the schema's ``_receipts`` migration)
--------------------------------------------

``receipts(stream_id pk autoincrement, room_id -> rooms, receipt_type,
user_id, thread_id, event_id, ts)``, unique on ``(room_id, receipt_type,
user_id, thread_id)``; ``thread_id`` ``''`` is an unthreaded receipt.
``stream_id`` is the receipts stream's position: a newer receipt deletes
the row it replaces and takes a new ID, so the rows above a sync's
position are exactly the receipts changed since, and AUTOINCREMENT never
hands out an ID twice.

Invariants
----------

* **Receipts only move forward.** A receipt for an event written here
  before the event the user's receipt already names is ignored: a client
  that sends receipts out of order (two tabs, a retry) cannot move the
  marker back. A receipt naming an event not stored here (another server's
  user reading an event not received yet) replaces the old one.
* **One write per receipt**, its new position read back in the same
  transaction.
* **No receipt without its room.** A receipt for a room not stored here
  (purged since its sender was found in it) raises
  :class:`~ranvier.errors.RoomGoneError` and writes nothing.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from ranvier.errors import RoomGoneError

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write
from .write_marks import writes_no_room

__all__ = ["ReceiptRecord", "ReceiptStorage"]

# Rooms per statement when reading many rooms' receipts.
_ROOMS_PER_QUERY: Final = 500


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """One user's receipt of one type (and thread) in a room."""

    stream_id: int
    room_id: str
    receipt_type: str
    user_id: str
    #: ``''`` for an unthreaded receipt.
    thread_id: str
    event_id: str
    ts: int


class ReceiptStorage:
    """Receipts over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def put_receipt(
        self,
        *,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        ts: int,
    ) -> int | None:
        """Store a receipt; its new stream position, or None when it changed
        nothing (the same event, or one before the receipt held).
        """
        return await self._writer.submit(
            functools.partial(
                _put_receipt,
                room_id=room_id,
                receipt_type=receipt_type,
                user_id=user_id,
                thread_id=thread_id,
                event_id=event_id,
                ts=ts,
            )
        )

    async def receipts_position(self) -> int:
        """The receipts stream's newest position (0 when nothing was stored)."""
        return await self._readers.read(_receipts_position)

    async def receipt_changes(
        self, room_ids: Collection[str], after: int, upto: int
    ) -> list[ReceiptRecord]:
        """The receipts of ``room_ids`` whose last change is in ``(after, upto]``,
        oldest first.
        """
        rooms = sorted(set(room_ids))
        return await self._readers.read(
            functools.partial(_receipt_changes, room_ids=rooms, after=after, upto=upto)
        )


@registered_write
@writes_no_room
def _put_receipt(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    receipt_type: str,
    user_id: str,
    thread_id: str,
    event_id: str,
    ts: int,
) -> int | None:
    key = (room_id, receipt_type, user_id, thread_id)
    held = conn.execute(
        "SELECT r.stream_id, r.event_id, old.stream_ordering, new.stream_ordering"
        " FROM receipts AS r"
        " LEFT JOIN events AS old ON old.event_id = r.event_id"
        " LEFT JOIN events AS new ON new.event_id = ?"
        " WHERE r.room_id = ? AND r.receipt_type = ? AND r.user_id = ? AND r.thread_id = ?",
        (event_id, *key),
    ).fetchone()
    if held is not None:
        stream_id, held_event, held_at, new_at = held
        if held_event == event_id:
            return None
        if held_at is not None and new_at is not None and new_at < held_at:
            return None
        conn.execute("DELETE FROM receipts WHERE stream_id = ?", (stream_id,))
    try:
        cursor = conn.execute(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*key, event_id, ts),
        )
    except sqlite3.IntegrityError as exc:
        # The room's row is the one key a receipt names: it was purged
        # after the caller checked the user or server is in the room.
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
            raise RoomGoneError(room_id) from None
        raise
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _receipts_position(conn: sqlite3.Connection) -> int:
    # The sequence, not max(stream_id): the newest receipt may have been
    # replaced since, and positions must not go back.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'receipts'").fetchone()
    return 0 if row is None else int(row[0])


def _receipt_changes(
    conn: sqlite3.Connection, *, room_ids: list[str], after: int, upto: int
) -> list[ReceiptRecord]:
    found: list[ReceiptRecord] = []
    for start in range(0, len(room_ids), _ROOMS_PER_QUERY):
        chunk = room_ids[start : start + _ROOMS_PER_QUERY]
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            "SELECT stream_id, room_id, receipt_type, user_id, thread_id, event_id, ts"
            f" FROM receipts WHERE room_id IN ({marks}) AND stream_id > ? AND stream_id <= ?",
            (*chunk, after, upto),
        ).fetchall()
        found.extend(
            ReceiptRecord(int(a), str(b), str(c), str(d), str(e), str(f), int(g))
            for a, b, c, d, e, f, g in rows
        )
    found.sort(key=lambda record: record.stream_id)
    return found
