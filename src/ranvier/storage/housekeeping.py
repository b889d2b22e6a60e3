"""Pruning of rows that have served their purpose (:mod:`ranvier.core.housekeeping`).

Each :class:`Prune` names one kind of row that no request needs any more:
a record older than the window it answers within, a token past its expiry,
a row of a device that was deleted. :meth:`HousekeepingStorage.prune` runs
one write that deletes at most ``limit`` such rows and says how many went,
so that a caller deleting many rows holds the writer for one short write
at a time and other writes go between.

Invariants
----------

* **Only what nobody can use goes.** A row is deleted only when every read
  that would find it would ignore it (past its expiry, which the reads
  check too) or when what it answers can no longer be asked (a retry
  outside its window, a device that no longer exists). The test of each
  rule runs inside the write that deletes, so a row that becomes useful
  again meanwhile (a device logged in again under its old ID) is judged
  as it is at that moment.
* **Rows of requests with no device are never "of a deleted device".**
  Application services send with the device ID ``""``, which is not a
  row of ``devices``; their records go by age alone.
* **A pass changes nothing twice.** Every rule is a condition on the rows
  as they are, not on what the last pass did.
"""

from __future__ import annotations

import enum
import functools
import sqlite3
from typing import Final

from .write_backend import WriteBackend, registered_write

__all__ = ["HousekeepingStorage", "Prune"]


class Prune(enum.Enum):
    """A kind of row to delete; ``cutoff_ms`` is what the rule compares with."""

    #: Federation transactions received before ``cutoff_ms``.
    RECEIVED_TRANSACTIONS = "received_transactions"
    #: Client transaction IDs of sends and redactions recorded before ``cutoff_ms``.
    CLIENT_TRANSACTIONS = "client_transactions"
    #: Client transaction IDs of sends and redactions of deleted devices.
    CLIENT_TRANSACTIONS_OF_GONE_DEVICES = "client_transactions_of_gone_devices"
    #: To-device transaction IDs recorded before ``cutoff_ms``.
    TO_DEVICE_TRANSACTIONS = "to_device_transactions"
    #: To-device transaction IDs of deleted devices.
    TO_DEVICE_TRANSACTIONS_OF_GONE_DEVICES = "to_device_transactions_of_gone_devices"
    #: To-device messages waiting for a device that was deleted.
    TO_DEVICE_INBOX_OF_GONE_DEVICES = "to_device_inbox_of_gone_devices"
    #: URL previews expired by ``cutoff_ms``.
    URL_PREVIEWS = "url_previews"
    #: Login tokens expired by ``cutoff_ms``.
    LOGIN_TOKENS = "login_tokens"
    #: OpenID tokens expired by ``cutoff_ms``.
    OPENID_TOKENS = "openid_tokens"
    #: Registration-token sessions expired by ``cutoff_ms``.
    REGISTRATION_TOKEN_SESSIONS = "registration_token_sessions"
    #: Sliding sync connections whose newest position was made before
    #: ``cutoff_ms`` (so every position of theirs is refused), or whose
    #: device was deleted; with their positions and rooms.
    SLIDING_SYNC_CONNECTIONS = "sliding_sync_connections"


#: A row (aliased ``t``) of a device that no longer exists.
_GONE: Final = (
    "t.device_id != '' AND NOT EXISTS (SELECT 1 FROM devices AS d"
    " WHERE d.user_id = t.user_id AND d.device_id = t.device_id)"
)


#: Per rule with a single table: the table and the condition on its rows
#: (aliased ``t``), with ``:cutoff`` where the rule compares with it.
_RULES: Final[dict[Prune, tuple[str, str]]] = {
    Prune.RECEIVED_TRANSACTIONS: ("received_transactions", "t.received_ts < :cutoff"),
    Prune.CLIENT_TRANSACTIONS: ("client_transactions", "t.created_ts < :cutoff"),
    Prune.CLIENT_TRANSACTIONS_OF_GONE_DEVICES: (
        "client_transactions",
        _GONE,
    ),
    Prune.TO_DEVICE_TRANSACTIONS: ("to_device_transactions", "t.created_ts < :cutoff"),
    Prune.TO_DEVICE_TRANSACTIONS_OF_GONE_DEVICES: (
        "to_device_transactions",
        _GONE,
    ),
    Prune.TO_DEVICE_INBOX_OF_GONE_DEVICES: ("to_device_inbox", _GONE),
    # The reads take a row as valid while expires_ts > now.
    Prune.URL_PREVIEWS: ("url_previews", "t.expires_ts <= :cutoff"),
    Prune.LOGIN_TOKENS: ("login_tokens", "t.expires_ts <= :cutoff"),
    Prune.OPENID_TOKENS: ("openid_tokens", "t.expires_ts <= :cutoff"),
    Prune.REGISTRATION_TOKEN_SESSIONS: ("registration_token_sessions", "t.expires_ts <= :cutoff"),
}

#: A connection's rows are deleted with it: it counts as this many rows of
#: the write's limit, so that a write stays short with rooms to delete.
_ROWS_PER_CONNECTION: Final = 100


class HousekeepingStorage:
    """Deletes rows no longer of use, a bounded write at a time."""

    def __init__(self, actor: WriteBackend) -> None:
        self._actor = actor

    async def prune(self, rule: Prune, *, cutoff_ms: int, limit: int) -> int:
        """Delete at most ``limit`` rows of ``rule`` in one write; how many went
        (for sliding sync, connections, each with its positions and rooms).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return await self._actor.submit(
            functools.partial(_prune, rule=rule.value, cutoff_ms=cutoff_ms, limit=limit)
        )


@registered_write
def _prune(conn: sqlite3.Connection, *, rule: str, cutoff_ms: int, limit: int) -> int:
    which = Prune(rule)
    if which is Prune.SLIDING_SYNC_CONNECTIONS:
        return _prune_connections(conn, cutoff_ms, max(1, limit // _ROWS_PER_CONNECTION))
    table, condition = _RULES[which]
    # Selecting the rowids first keeps the delete to ``limit`` rows without
    # SQLite's optional DELETE ... LIMIT.
    return conn.execute(
        f"DELETE FROM {table} WHERE rowid IN"
        f" (SELECT t.rowid FROM {table} AS t WHERE {condition} LIMIT :limit)",
        {"cutoff": cutoff_ms, "limit": limit},
    ).rowcount


def _prune_connections(conn: sqlite3.Connection, cutoff_ms: int, limit: int) -> int:
    stale = [
        int(conn_key)
        for (conn_key,) in conn.execute(
            f"""
            SELECT t.conn_key FROM sliding_sync_connections AS t
            WHERE COALESCE((SELECT MAX(p.made_ms) FROM sliding_sync_positions AS p
                            WHERE p.conn_key = t.conn_key), 0) < :cutoff
               OR {_GONE}
            LIMIT :limit
            """,
            {"cutoff": cutoff_ms, "limit": limit},
        )
    ]
    for table in ("sliding_sync_rooms", "sliding_sync_positions", "sliding_sync_connections"):
        conn.executemany(f"DELETE FROM {table} WHERE conn_key = ?", [(key,) for key in stale])
    return len(stale)
