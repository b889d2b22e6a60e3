"""Client transaction IDs: which event a client's request produced.

A client retries a request whose answer it did not get under the same
transaction ID; the retry must answer with the first event rather than
send a second. The row is keyed by user, device, the access token of a
request made with no device (empty beside a device) and the
transaction's scope (see :mod:`ranvier.core.client_txns`), and kept on
disk so that a retry across a restart of the server is recognised too.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Sequence
from typing import Final

from .actor import StorageActor
from .readers import ReaderPool
from .records import EventToPersist
from .write_backend import WriteBackend, registered_write
from .writes import PersistEvents

__all__ = ["ClientTransactionStorage", "TransactionKey", "TransactionRow"]

#: Keys looked up per query: four parameters each, well under SQLite's limit.
_KEYS_PER_QUERY: Final = 200

#: ``(user_id, device_id, token_hash, txn_id)``
TransactionKey = tuple[str, str, bytes, str]

#: ``(user_id, device_id, token_hash, txn_id, room_id, event_id, created_ts)``
TransactionRow = tuple[str, str, bytes, str, str, str, int]


class ClientTransactionStorage:
    """The ``client_transactions`` table."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def get_client_transaction(
        self, user_id: str, device_id: str, token_hash: bytes, txn_id: str
    ) -> str | None:
        """The event ID recorded for the transaction; None when there is none."""

        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT event_id FROM client_transactions"
                " WHERE user_id = ? AND device_id = ? AND token_hash = ? AND txn_id = ?",
                (user_id, device_id, token_hash, txn_id),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._readers.read(select)

    async def get_client_transactions(
        self, keys: Collection[TransactionKey]
    ) -> dict[TransactionKey, str]:
        """The event IDs recorded for those of ``keys`` that have one, in one read."""
        wanted = list(dict.fromkeys(keys))

        def select(conn: sqlite3.Connection) -> dict[TransactionKey, str]:
            found: dict[TransactionKey, str] = {}
            for start in range(0, len(wanted), _KEYS_PER_QUERY):
                chunk = wanted[start : start + _KEYS_PER_QUERY]
                rows = conn.execute(
                    "WITH wanted(user_id, device_id, token_hash, txn_id) AS (VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                    + ") SELECT t.user_id, t.device_id, t.token_hash, t.txn_id, t.event_id"
                    " FROM wanted JOIN client_transactions AS t"
                    " USING (user_id, device_id, token_hash, txn_id)",
                    [part for key in chunk for part in key],
                )
                for user_id, device_id, token_hash, txn_id, event_id in rows:
                    found[(user_id, device_id, bytes(token_hash), txn_id)] = event_id
            return found

        if not wanted:
            return {}
        return await self._readers.read(select)

    async def add_client_transaction(
        self,
        user_id: str,
        device_id: str,
        token_hash: bytes,
        txn_id: str,
        *,
        room_id: str,
        event_id: str,
        created_ts: int,
    ) -> str:
        """Record the transaction's event; return the event recorded for it,
        which is an earlier one if the transaction already had one.
        """
        return await self._actor.submit(
            functools.partial(
                _insert_client_transaction,
                user_id=user_id,
                device_id=device_id,
                token_hash=token_hash,
                txn_id=txn_id,
                room_id=room_id,
                event_id=event_id,
                created_ts=created_ts,
            )
        )

    async def persist_events_recording(
        self, events: Sequence[EventToPersist], transactions: Sequence[TransactionRow]
    ) -> tuple[dict[str, int], list[str]]:
        """Write events (naming no current state) and record the client
        transactions that sent them in the same commit; return the events'
        stream orderings and, per transaction, the event recorded for it
        (an earlier one if it had one).

        Through another process's actor, events go by the request for
        events of their own, and the transactions are recorded in a write
        of their own after them.
        """
        if isinstance(self._actor, StorageActor):
            return await self._actor.submit(
                functools.partial(
                    _persist_events_recording,
                    events=tuple(events),
                    transactions=tuple(transactions),
                )
            )
        orderings = await self._actor.submit(PersistEvents(tuple(events)))
        recorded = []
        for user_id, device_id, token_hash, txn_id, room_id, event_id, created_ts in transactions:
            recorded.append(
                await self.add_client_transaction(
                    user_id,
                    device_id,
                    token_hash,
                    txn_id,
                    room_id=room_id,
                    event_id=event_id,
                    created_ts=created_ts,
                )
            )
        return orderings, recorded

    async def delete_client_transactions_before(self, created_ts: int) -> int:
        """Forget transactions recorded before ``created_ts``; return how many."""
        return await self._actor.submit(
            functools.partial(_delete_client_transactions_before, created_ts=created_ts)
        )


@registered_write
def _insert_client_transaction(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    token_hash: bytes,
    txn_id: str,
    room_id: str,
    event_id: str,
    created_ts: int,
) -> str:
    conn.execute(
        "INSERT OR IGNORE INTO client_transactions"
        " (user_id, device_id, token_hash, txn_id, room_id, event_id, created_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (user_id, device_id, token_hash, txn_id, room_id, event_id, created_ts),
    )
    (recorded,) = conn.execute(
        "SELECT event_id FROM client_transactions"
        " WHERE user_id = ? AND device_id = ? AND token_hash = ? AND txn_id = ?",
        (user_id, device_id, token_hash, txn_id),
    ).fetchone()
    return str(recorded)


@registered_write
def _delete_client_transactions_before(conn: sqlite3.Connection, *, created_ts: int) -> int:
    return conn.execute(
        "DELETE FROM client_transactions WHERE created_ts < ?", (created_ts,)
    ).rowcount


@registered_write
def _persist_events_recording(
    conn: sqlite3.Connection,
    *,
    events: tuple[EventToPersist, ...],
    transactions: tuple[TransactionRow, ...],
) -> tuple[dict[str, int], list[str]]:
    """Events and the transactions that sent them, as one request: if the
    events are refused, nothing of the transactions is recorded either.
    """
    orderings = PersistEvents(events)(conn)
    recorded = [
        _insert_client_transaction(
            conn,
            user_id=user_id,
            device_id=device_id,
            token_hash=token_hash,
            txn_id=txn_id,
            room_id=room_id,
            event_id=event_id,
            created_ts=created_ts,
        )
        for user_id, device_id, token_hash, txn_id, room_id, event_id, created_ts in transactions
    ]
    return orderings, recorded
