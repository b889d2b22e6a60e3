"""Application services' transactions: how far each service has been sent
the event stream, and the transaction it has not yet answered.

Tables (the schema's ``_application_services`` migration)
-----------------------------------------------------------

``appservice_positions(service_id, stream_ordering, next_txn_id,
receipts_position, to_device_position)``: the stream position up to which
the service's events are in a transaction (sent or waiting), the ID its
next transaction gets, and for a service that receives ephemeral events
the receipts stream position up to which its receipts are (NULL for one
that does not: turning them on later starts from the newest receipt, not
from a backlog); the same for the to-device stream and a service that
receives to-device messages.
``appservice_transactions(service_id, txn_id, body)``: transactions made
and not yet answered 2xx, their body exactly as first sent.

Invariants
----------

* **A transaction and the position past its events move together.**
  :meth:`AppServiceStorage.add_transaction` writes the transaction and
  moves the positions (events, receipts, to-device) and the next ID in one
  write, so after a crash the events, receipts and to-device messages are
  either in a waiting transaction or still after the position: never both,
  never neither. The inbox rows a transaction takes for good (messages of
  a service's exclusive users, :mod:`ranvier.core.appservice_to_device`)
  are deleted in that same write.
* **Every write can run twice** (``registered_write``): adding a
  transaction that is there keeps the first, positions and IDs only move
  forward, completing a completed transaction deletes nothing.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from .event_stream import newest_stream_ordering, timeline_events_after
from .readers import ReaderPool
from .receipts import ReceiptRecord
from .records import ReplacedState, StoredEvent
from .replaced_state import read_replaced_state
from .write_backend import WriteBackend, registered_write

__all__ = [
    "AppServicePosition",
    "AppServiceStorage",
    "InboxMessage",
    "PendingTransaction",
    "RoomInterest",
]

_ROOMS_PER_QUERY: Final = 500


@dataclass(frozen=True, slots=True)
class AppServicePosition:
    stream_ordering: int
    next_txn_id: int
    #: The receipts stream position; None for a service not sent receipts.
    receipts: int | None = None
    #: The to-device stream position; None for a service not sent to-device messages.
    to_device: int | None = None


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """A to-device message waiting in a local device's inbox."""

    stream_id: int
    user_id: str
    device_id: str
    #: ``{"type", "sender", "content"}`` as JSON, as a sync hands it out.
    message: bytes


@dataclass(frozen=True, slots=True)
class PendingTransaction:
    txn_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class RoomInterest:
    """What makes a room's events a service's business besides its ID:
    the local users joined or invited, and the local aliases.
    """

    members: tuple[str, ...]
    aliases: tuple[str, ...]


class AppServiceStorage:
    """Services' positions and transactions, over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def get_replaced_state(self, event_ids: Collection[str]) -> dict[str, ReplacedState]:
        """What each state event of ``event_ids`` replaced, for the
        ``prev_content`` of the events services are sent."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(read_replaced_state, event_ids=ids))

    async def start_position(
        self,
        service_id: str,
        stream_ordering: int,
        *,
        receipts: int | None = None,
        to_device: int | None = None,
    ) -> None:
        """Give a service seen for the first time its position; one that
        has a position keeps it. ``receipts`` is the receipts position a
        service that receives ephemeral events starts from if it has none;
        None forgets the one it has. ``to_device`` is the same for the
        to-device stream.
        """
        await self._writer.submit(
            functools.partial(
                _start_position,
                service_id=service_id,
                stream_ordering=stream_ordering,
                receipts=receipts,
                to_device=to_device,
            )
        )

    async def set_position(
        self,
        service_id: str,
        stream_ordering: int,
        *,
        receipts: int | None = None,
        to_device: int | None = None,
    ) -> None:
        """Move past events (and receipts, to-device messages) with nothing
        for the service (never backwards).
        """
        await self._writer.submit(
            functools.partial(
                _set_position,
                service_id=service_id,
                stream_ordering=stream_ordering,
                receipts=receipts,
                to_device=to_device,
            )
        )

    async def add_transaction(
        self,
        service_id: str,
        txn_id: int,
        *,
        through: int,
        body: bytes,
        receipts: int | None = None,
        to_device: int | None = None,
        taken: Sequence[int] = (),
    ) -> None:
        """Keep a transaction to send, of the events up to ``through`` (and
        the receipts up to ``receipts``, the to-device messages up to
        ``to_device``), and delete the inbox messages ``taken``, which
        only the service was to have.
        """
        await self._writer.submit(
            functools.partial(
                _add_transaction,
                service_id=service_id,
                txn_id=txn_id,
                through=through,
                body=body,
                receipts=receipts,
                to_device=to_device,
                taken=tuple(taken),
            )
        )

    async def complete_transaction(self, service_id: str, txn_id: int) -> None:
        """Forget a transaction the service answered."""
        await self._writer.submit(
            functools.partial(_complete_transaction, service_id=service_id, txn_id=txn_id)
        )

    async def position(self, service_id: str) -> AppServicePosition | None:
        return await self._readers.read(functools.partial(_position, service_id=service_id))

    async def pending_transaction(self, service_id: str) -> PendingTransaction | None:
        """The service's oldest unanswered transaction."""
        return await self._readers.read(functools.partial(_pending, service_id=service_id))

    async def events_after(self, after: int, *, limit: int) -> list[StoredEvent]:
        """Accepted timeline events after ``after``, oldest first."""
        return await self._readers.read(
            functools.partial(timeline_events_after, after=after, limit=limit)
        )

    async def newest_stream_ordering(self) -> int:
        return await self._readers.read(newest_stream_ordering)

    async def room_interest(
        self, room_ids: Collection[str], server_name: str, *, joined_only: bool = False
    ) -> dict[str, RoomInterest]:
        """Each room's local members (joined or invited; joined only if
        ``joined_only``) and local aliases.
        """
        rooms = sorted(set(room_ids))
        memberships = ("join",) if joined_only else ("join", "invite")
        return await self._readers.read(
            functools.partial(
                _room_interest, room_ids=rooms, server_name=server_name, memberships=memberships
            )
        )

    async def receipts_after(self, after: int, *, limit: int) -> list[ReceiptRecord]:
        """The receipts of every room stored after ``after`` in the receipts
        stream, oldest first, at most ``limit``.
        """
        return await self._readers.read(
            functools.partial(_receipts_after, after=after, limit=limit)
        )

    async def receipts_position(self) -> int:
        """The receipts stream's newest position (0 when nothing was stored)."""
        return await self._readers.read(_receipts_position)

    async def to_device_after(self, after: int, *, limit: int) -> list[InboxMessage]:
        """The local devices' to-device messages stored after ``after``,
        oldest first, at most ``limit``: those still in an inbox (a device
        that synced them has them, and they are gone).
        """
        return await self._readers.read(
            functools.partial(_to_device_after, after=after, limit=limit)
        )

    async def to_device_position(self) -> int:
        """The to-device stream's newest position (0 when nothing was stored)."""
        return await self._readers.read(_to_device_position)


@registered_write
def _start_position(
    conn: sqlite3.Connection,
    *,
    service_id: str,
    stream_ordering: int,
    receipts: int | None = None,
    to_device: int | None = None,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO appservice_positions (service_id, stream_ordering, next_txn_id)"
        " VALUES (?, ?, 1)",
        (service_id, stream_ordering),
    )
    for column, start in (("receipts_position", receipts), ("to_device_position", to_device)):
        if start is None:
            conn.execute(
                f"UPDATE appservice_positions SET {column} = NULL WHERE service_id = ?",
                (service_id,),
            )
        else:
            conn.execute(
                f"UPDATE appservice_positions SET {column} = ?"
                f" WHERE service_id = ? AND {column} IS NULL",
                (start, service_id),
            )


@registered_write
def _set_position(
    conn: sqlite3.Connection,
    *,
    service_id: str,
    stream_ordering: int,
    receipts: int | None = None,
    to_device: int | None = None,
) -> None:
    conn.execute(
        "UPDATE appservice_positions SET stream_ordering = max(stream_ordering, ?)"
        " WHERE service_id = ?",
        (stream_ordering, service_id),
    )
    _move(conn, service_id, "receipts_position", receipts)
    _move(conn, service_id, "to_device_position", to_device)


@registered_write
def _add_transaction(
    conn: sqlite3.Connection,
    *,
    service_id: str,
    txn_id: int,
    through: int,
    body: bytes,
    receipts: int | None = None,
    to_device: int | None = None,
    taken: tuple[int, ...] = (),
) -> None:
    added = conn.execute(
        "INSERT OR IGNORE INTO appservice_transactions (service_id, txn_id, body) VALUES (?, ?, ?)",
        (service_id, txn_id, body),
    )
    conn.execute(
        "UPDATE appservice_positions SET stream_ordering = max(stream_ordering, ?),"
        " next_txn_id = max(next_txn_id, ?) WHERE service_id = ?",
        (through, txn_id + 1, service_id),
    )
    _move(conn, service_id, "receipts_position", receipts)
    _move(conn, service_id, "to_device_position", to_device)
    if added.rowcount:
        conn.executemany(
            "DELETE FROM to_device_inbox WHERE stream_id = ?", [(stream_id,) for stream_id in taken]
        )


def _move(conn: sqlite3.Connection, service_id: str, column: str, position: int | None) -> None:
    if position is not None:
        conn.execute(
            f"UPDATE appservice_positions SET {column} = max({column}, ?)"
            f" WHERE service_id = ? AND {column} IS NOT NULL",
            (position, service_id),
        )


@registered_write
def _complete_transaction(conn: sqlite3.Connection, *, service_id: str, txn_id: int) -> None:
    conn.execute(
        "DELETE FROM appservice_transactions WHERE service_id = ? AND txn_id = ?",
        (service_id, txn_id),
    )


def _position(conn: sqlite3.Connection, *, service_id: str) -> AppServicePosition | None:
    row = conn.execute(
        "SELECT stream_ordering, next_txn_id, receipts_position, to_device_position"
        " FROM appservice_positions WHERE service_id = ?",
        (service_id,),
    ).fetchone()
    if row is None:
        return None
    return AppServicePosition(
        int(row[0]),
        int(row[1]),
        None if row[2] is None else int(row[2]),
        None if row[3] is None else int(row[3]),
    )


def _pending(conn: sqlite3.Connection, *, service_id: str) -> PendingTransaction | None:
    row = conn.execute(
        "SELECT txn_id, body FROM appservice_transactions WHERE service_id = ?"
        " ORDER BY txn_id LIMIT 1",
        (service_id,),
    ).fetchone()
    return None if row is None else PendingTransaction(int(row[0]), bytes(row[1]))


def _room_interest(
    conn: sqlite3.Connection,
    *,
    room_ids: list[str],
    server_name: str,
    memberships: tuple[str, ...],
) -> dict[str, RoomInterest]:
    suffix = ":" + server_name
    members: dict[str, list[str]] = {room_id: [] for room_id in room_ids}
    aliases: dict[str, list[str]] = {room_id: [] for room_id in room_ids}
    for start in range(0, len(room_ids), _ROOMS_PER_QUERY):
        chunk = room_ids[start : start + _ROOMS_PER_QUERY]
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            "SELECT cs.room_id, cs.state_key FROM current_state AS cs"
            " JOIN events AS e ON e.event_id = cs.event_id"
            f" WHERE cs.room_id IN ({marks}) AND cs.type = 'm.room.member'"
            " AND substr(cs.state_key, -?) = ?"
            " AND json_extract(CAST(e.json AS TEXT), '$.content.membership')"
            f" IN ({', '.join('?' for _ in memberships)})",
            (*chunk, len(suffix), suffix, *memberships),
        ).fetchall()
        for room_id, user_id in rows:
            members[str(room_id)].append(str(user_id))
        rows = conn.execute(
            f"SELECT room_id, alias FROM room_aliases WHERE room_id IN ({marks})", chunk
        ).fetchall()
        for room_id, alias in rows:
            aliases[str(room_id)].append(str(alias))
    return {
        room_id: RoomInterest(tuple(members[room_id]), tuple(aliases[room_id]))
        for room_id in room_ids
    }


def _receipts_after(conn: sqlite3.Connection, *, after: int, limit: int) -> list[ReceiptRecord]:
    rows = conn.execute(
        "SELECT stream_id, room_id, receipt_type, user_id, thread_id, event_id, ts"
        " FROM receipts WHERE stream_id > ? ORDER BY stream_id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [
        ReceiptRecord(int(a), str(b), str(c), str(d), str(e), str(f), int(g))
        for a, b, c, d, e, f, g in rows
    ]


def _receipts_position(conn: sqlite3.Connection) -> int:
    # The sequence, as the receipts stream reckons it: the newest receipt
    # may have been replaced since.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'receipts'").fetchone()
    return 0 if row is None else int(row[0])


def _to_device_after(conn: sqlite3.Connection, *, after: int, limit: int) -> list[InboxMessage]:
    rows = conn.execute(
        "SELECT stream_id, user_id, device_id, message FROM to_device_inbox"
        " WHERE stream_id > ? ORDER BY stream_id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [InboxMessage(int(a), str(b), str(c), bytes(d)) for a, b, c, d in rows]


def _to_device_position(conn: sqlite3.Connection) -> int:
    # The sequence, as the sync reckons the stream: the newest message may
    # have been acknowledged and deleted since.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'to_device_inbox'").fetchone()
    return 0 if row is None else int(row[0])
