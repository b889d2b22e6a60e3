"""Application services' transactions: how far each service has been sent
the event stream, and the transaction it has not yet answered.

Tables (the schema's ``_application_services`` migration)
-----------------------------------------------------------

``appservice_positions(service_id, stream_ordering, next_txn_id)``: the
stream position up to which the service's events are in a transaction
(sent or waiting), and the ID its next transaction gets.
``appservice_transactions(service_id, txn_id, body)``: transactions made
and not yet answered 2xx, their body exactly as first sent.

Invariants
----------

* **A transaction and the position past its events move together.**
  :meth:`AppServiceStorage.add_transaction` writes the transaction and
  moves the position and the next ID in one write, so after a crash the
  events are either in a waiting transaction or still after the position:
  never both, never neither.
* **Every write can run twice** (``registered_write``): adding a
  transaction that is there keeps the first, positions and IDs only move
  forward, completing a completed transaction deletes nothing.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from .event_stream import newest_stream_ordering, timeline_events_after
from .readers import ReaderPool
from .records import StoredEvent
from .write_backend import WriteBackend, registered_write

__all__ = ["AppServicePosition", "AppServiceStorage", "PendingTransaction", "RoomInterest"]

_ROOMS_PER_QUERY: Final = 500


@dataclass(frozen=True, slots=True)
class AppServicePosition:
    stream_ordering: int
    next_txn_id: int


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

    async def start_position(self, service_id: str, stream_ordering: int) -> None:
        """Give a service seen for the first time its position; one that
        has a position keeps it.
        """
        await self._writer.submit(
            functools.partial(
                _start_position, service_id=service_id, stream_ordering=stream_ordering
            )
        )

    async def set_position(self, service_id: str, stream_ordering: int) -> None:
        """Move past events with nothing for the service (never backwards)."""
        await self._writer.submit(
            functools.partial(_set_position, service_id=service_id, stream_ordering=stream_ordering)
        )

    async def add_transaction(
        self, service_id: str, txn_id: int, *, through: int, body: bytes
    ) -> None:
        """Keep a transaction to send, of the events up to ``through``."""
        await self._writer.submit(
            functools.partial(
                _add_transaction, service_id=service_id, txn_id=txn_id, through=through, body=body
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
        self, room_ids: Collection[str], server_name: str
    ) -> dict[str, RoomInterest]:
        """Each room's local members (joined or invited) and local aliases."""
        rooms = sorted(set(room_ids))
        return await self._readers.read(
            functools.partial(_room_interest, room_ids=rooms, server_name=server_name)
        )


@registered_write
def _start_position(conn: sqlite3.Connection, *, service_id: str, stream_ordering: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO appservice_positions (service_id, stream_ordering, next_txn_id)"
        " VALUES (?, ?, 1)",
        (service_id, stream_ordering),
    )


@registered_write
def _set_position(conn: sqlite3.Connection, *, service_id: str, stream_ordering: int) -> None:
    conn.execute(
        "UPDATE appservice_positions SET stream_ordering = max(stream_ordering, ?)"
        " WHERE service_id = ?",
        (stream_ordering, service_id),
    )


@registered_write
def _add_transaction(
    conn: sqlite3.Connection, *, service_id: str, txn_id: int, through: int, body: bytes
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO appservice_transactions (service_id, txn_id, body) VALUES (?, ?, ?)",
        (service_id, txn_id, body),
    )
    conn.execute(
        "UPDATE appservice_positions SET stream_ordering = max(stream_ordering, ?),"
        " next_txn_id = max(next_txn_id, ?) WHERE service_id = ?",
        (through, txn_id + 1, service_id),
    )


@registered_write
def _complete_transaction(conn: sqlite3.Connection, *, service_id: str, txn_id: int) -> None:
    conn.execute(
        "DELETE FROM appservice_transactions WHERE service_id = ? AND txn_id = ?",
        (service_id, txn_id),
    )


def _position(conn: sqlite3.Connection, *, service_id: str) -> AppServicePosition | None:
    row = conn.execute(
        "SELECT stream_ordering, next_txn_id FROM appservice_positions WHERE service_id = ?",
        (service_id,),
    ).fetchone()
    return None if row is None else AppServicePosition(int(row[0]), int(row[1]))


def _pending(conn: sqlite3.Connection, *, service_id: str) -> PendingTransaction | None:
    row = conn.execute(
        "SELECT txn_id, body FROM appservice_transactions WHERE service_id = ?"
        " ORDER BY txn_id LIMIT 1",
        (service_id,),
    ).fetchone()
    return None if row is None else PendingTransaction(int(row[0]), bytes(row[1]))


def _room_interest(
    conn: sqlite3.Connection, *, room_ids: list[str], server_name: str
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
            " IN ('join', 'invite')",
            (*chunk, len(suffix), suffix),
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
