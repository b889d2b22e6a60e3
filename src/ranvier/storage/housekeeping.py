"""Pruning of rows that have served their purpose (:mod:`ranvier.core.housekeeping`).

Each :class:`Prune` names one kind of row that no request needs any more:
a record older than the window it answers within, a token past its expiry,
a row of a device that was deleted, a device-list change that a newer
change of the same user stands for. :meth:`HousekeepingStorage.prune` runs
one write that deletes at most ``limit`` such rows and says how many went,
so that a caller deleting many rows holds the writer for one short write
at a time and other writes go between. The rows are looked for first on a
reader connection, which may scan a table (rows of deleted devices have no
index to find them by); the write deletes those rows by rowid, each only if
it still meets the rule, so the writer never scans.

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
import json
import sqlite3
from typing import Final

from .e2e_keys import E2eKeyStorage
from .membership_sql import MEMBERSHIP, membership_of
from .readers import ReaderPool
from .redacted_content import prune_redacted_content, waiting_redactions
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
    #: Single sign-on logins expired by ``cutoff_ms`` (never taken at a callback).
    SSO_SESSIONS = "sso_sessions"
    #: E-mail validation sessions expired by ``cutoff_ms`` (used or not).
    THREEPID_VALIDATION_SESSIONS = "threepid_validation_sessions"
    #: User-interactive authentication sessions expired by ``cutoff_ms``
    #: (a finished one's answer kept for its retries until then).
    UIA_SESSIONS = "uia_sessions"
    #: Sliding sync connections whose newest position was made before
    #: ``cutoff_ms`` (so every position of theirs is refused), or whose
    #: device was deleted; with their positions and rooms.
    SLIDING_SYNC_CONNECTIONS = "sliding_sync_connections"
    #: A user's device-list changes with a newer change of the same user at
    #: or below ``cutoff_ms``, which for this rule is a position of the
    #: device-list stream, not a time (see :data:`_SUPERSEDED_CHANGE`).
    SUPERSEDED_DEVICE_LIST_CHANGES = "superseded_device_list_changes"
    #: Other servers' users' kept device lists
    #: (:mod:`ranvier.storage.remote_device_lists`) once they share no room
    #: with this server: a row is used only while they do, and would be
    #: fetched again after a break anyway. ``cutoff_ms`` is not used.
    UNSHARED_DEVICE_LISTS = "unshared_device_lists"
    #: The original content of events redacted by redactions received
    #: before ``cutoff_ms``: not a delete but a rewrite of each event's JSON
    #: (:mod:`ranvier.storage.redacted_content`); counted by redactions.
    REDACTED_CONTENT = "redacted_content"


#: A row (aliased ``t``) of a device that no longer exists.
_GONE: Final = (
    "t.device_id != '' AND NOT EXISTS (SELECT 1 FROM devices AS d"
    " WHERE d.user_id = t.user_id AND d.device_id = t.device_id)"
)


#: A device-list change (aliased ``t``) of a user who changed again later,
#: at a position at or below ``:cutoff``. Every read of the table asks which
#: users changed in a span ``(after, upto]`` (``/sync``, ``/keys/changes``,
#: sliding sync's e2ee extension, replication's catch-up, which wakes the
#: same users for either row): with ``upto`` at or past ``:cutoff``, a span
#: holding this row holds the newer one too, so the answer keeps the user.
#: A user's newest row is never deleted, so a token below it, however old,
#: still finds the user.
_SUPERSEDED_CHANGE: Final = (
    "EXISTS (SELECT 1 FROM device_list_changes AS n WHERE n.user_id = t.user_id"
    " AND n.stream_id > t.stream_id AND n.stream_id <= :cutoff)"
)

#: A kept device list (aliased ``t``) of a user joined to no room that one
#: of this server's users (a row of ``users``) is joined to.
_UNSHARED: Final = f"""NOT EXISTS (
    SELECT 1 FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id
    WHERE cs.type = 'm.room.member' AND cs.state_key = t.user_id AND {MEMBERSHIP} = 'join'
    AND EXISTS (
        SELECT 1 FROM current_state AS ours JOIN users AS u ON u.user_id = ours.state_key
        JOIN events AS oe ON oe.event_id = ours.event_id
        WHERE ours.room_id = cs.room_id AND ours.type = 'm.room.member'
        AND {membership_of("oe")} = 'join'))"""

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
    Prune.SSO_SESSIONS: ("sso_sessions", "t.expires_ts <= :cutoff"),
    Prune.THREEPID_VALIDATION_SESSIONS: (
        "threepid_validation_sessions",
        "t.expires_ts <= :cutoff",
    ),
    Prune.UIA_SESSIONS: ("uia_sessions", "t.expires_ts <= :cutoff"),
    Prune.SUPERSEDED_DEVICE_LIST_CHANGES: ("device_list_changes", _SUPERSEDED_CHANGE),
    Prune.UNSHARED_DEVICE_LISTS: ("remote_device_lists", _UNSHARED),
}


#: A sliding sync connection (aliased ``t``) none of whose positions is
#: younger than ``:cutoff``, or of a device that no longer exists.
_STALE_CONNECTION: Final = (
    "(COALESCE((SELECT MAX(p.made_ms) FROM sliding_sync_positions AS p"
    " WHERE p.conn_key = t.conn_key), 0) < :cutoff OR " + _GONE + ")"
)

#: A connection's rows are deleted with it: it counts as this many rows of
#: the write's limit, so that a write stays short with rooms to delete.
_ROWS_PER_CONNECTION: Final = 100


class HousekeepingStorage:
    """Deletes rows no longer of use, a bounded write at a time."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool, e2e_keys: E2eKeyStorage) -> None:
        self._actor = actor
        self._readers = readers
        self._e2e_keys = e2e_keys

    async def device_lists_position(self) -> int:
        """The device-list stream's position now: what a later pass may
        take as the position every reader has reached."""
        return await self._e2e_keys.device_lists_position()

    async def prune(self, rule: Prune, *, cutoff_ms: int, limit: int) -> int:
        """Delete at most ``limit`` rows of ``rule`` in one write; how many went
        (for sliding sync, connections, each with its positions and rooms).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if rule is Prune.SLIDING_SYNC_CONNECTIONS:
            limit = max(1, limit // _ROWS_PER_CONNECTION)
        found = await self._readers.read(
            functools.partial(_find, rule=rule, cutoff_ms=cutoff_ms, limit=limit)
        )
        if not found:
            return 0
        return await self._actor.submit(
            functools.partial(_delete, rule=rule.value, cutoff_ms=cutoff_ms, keys=found)
        )


def _find(conn: sqlite3.Connection, *, rule: Prune, cutoff_ms: int, limit: int) -> list[int]:
    if rule is Prune.REDACTED_CONTENT:
        return waiting_redactions(conn, cutoff_ms=cutoff_ms, limit=limit)
    if rule is Prune.SLIDING_SYNC_CONNECTIONS:
        table, key, condition = "sliding_sync_connections", "conn_key", _STALE_CONNECTION
    else:
        (table, condition), key = _RULES[rule], "rowid"
    return [
        int(found)
        for (found,) in conn.execute(
            f"SELECT t.{key} FROM {table} AS t WHERE {condition} LIMIT :limit",
            {"cutoff": cutoff_ms, "limit": limit},
        )
    ]


@registered_write
def _delete(conn: sqlite3.Connection, *, rule: str, cutoff_ms: int, keys: list[int]) -> int:
    which = Prune(rule)
    if which is Prune.REDACTED_CONTENT:
        return prune_redacted_content(conn, cutoff_ms=cutoff_ms, rowids=keys)
    wanted = {"cutoff": cutoff_ms, "keys": json.dumps(keys)}
    if which is Prune.SLIDING_SYNC_CONNECTIONS:
        stale = [
            int(conn_key)
            for (conn_key,) in conn.execute(
                "SELECT t.conn_key FROM sliding_sync_connections AS t"
                " WHERE t.conn_key IN (SELECT value FROM json_each(:keys))"
                f" AND {_STALE_CONNECTION}",
                wanted,
            )
        ]
        for table in ("sliding_sync_rooms", "sliding_sync_positions", "sliding_sync_connections"):
            conn.executemany(f"DELETE FROM {table} WHERE conn_key = ?", [(key,) for key in stale])
        return len(stale)
    table, condition = _RULES[which]
    # The rule is checked again: a row may have come back into use (its
    # device logged in again) since it was found.
    return conn.execute(
        f"DELETE FROM {table} AS t"
        f" WHERE t.rowid IN (SELECT value FROM json_each(:keys)) AND {condition}",
        wanted,
    ).rowcount
