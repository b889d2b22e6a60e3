"""Refresh tokens in SQLite: exchanging one for a new pair, and retiring the
older pair once the new one is used.

Invariants
----------

* **A refresh token lives and dies with its access token.** Its row
  references the access token issued with it, ``ON DELETE CASCADE``: every
  write that deletes access tokens (logouts, a device logged in again, a
  password change, deactivation) drops the refresh tokens too, with no code
  of its own.
* **The older pair stays until the newer is used.** A refresh adds a pair
  pointing back (``previous_hash``) at the refresh token spent; the spent
  token and its access token keep working, so a client that lost the answer
  can refresh again. Using the new access token or the new refresh token
  deletes the older access token, and with it the older refresh token.
* **An unused successor is replaced, not added to.** Refreshing again with
  a token whose successor was never used deletes that successor first: a
  device holds at most two pairs.
* **Each write survives being run twice.** A refresh repeated finds the
  pair it made and answers it again; retiring finds nothing more to retire.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass

from .accounts import TokenOwner
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["RefreshTokenStorage", "TokenPair"]


@dataclass(frozen=True, slots=True)
class TokenPair:
    """The hashes of a new access token and of the refresh token issued with it."""

    access_token_hash: bytes
    refresh_token_hash: bytes
    created_ts: int
    expires_ts: int


class RefreshTokenStorage:
    """Refresh tokens over the storage actor."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def refresh(self, refresh_token_hash: bytes, pair: TokenPair) -> TokenOwner | None:
        """Exchange the refresh token ``refresh_token_hash`` for ``pair``, for
        the same device; None if the token is unknown (logged out, or retired
        by a newer pair's use) or its account deactivated.
        """
        return await self._actor.submit(
            functools.partial(_refresh, refresh_token_hash=refresh_token_hash, pair=pair)
        )

    async def retire_older(self, access_token_hash: bytes) -> None:
        """The access token ``access_token_hash`` came from a refresh and is
        used: delete the pair the refresh spent, if it is still there.
        """
        await self._actor.submit(
            functools.partial(_retire_older, access_token_hash=access_token_hash)
        )


def _owner_of_refresh_token(conn: sqlite3.Connection, token_hash: bytes) -> TokenOwner | None:
    row = conn.execute(
        "SELECT t.user_id, t.device_id, u.admin, t.expires_ts FROM refresh_tokens AS r"
        " JOIN access_tokens AS t ON t.token_hash = r.access_token_hash"
        " JOIN users AS u ON u.user_id = t.user_id"
        " WHERE r.token_hash = ? AND u.deactivated = 0",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    user_id, device_id, admin, expires_ts = row
    return TokenOwner(user_id, device_id, bool(admin), expires_ts)


def _retire_older_than(conn: sqlite3.Connection, refresh_token_hash: bytes) -> None:
    """Delete the access token (and so the refresh token) that the refresh
    token ``refresh_token_hash`` was exchanged for."""
    conn.execute(
        "DELETE FROM access_tokens WHERE token_hash IN"
        " (SELECT p.access_token_hash FROM refresh_tokens AS r"
        " JOIN refresh_tokens AS p ON p.token_hash = r.previous_hash WHERE r.token_hash = ?)",
        (refresh_token_hash,),
    )


@registered_write
def _refresh(
    conn: sqlite3.Connection, *, refresh_token_hash: bytes, pair: TokenPair
) -> TokenOwner | None:
    made = _owner_of_refresh_token(conn, pair.refresh_token_hash)
    if made is not None:
        # This very write, run before: its pair is there.
        return made
    owner = _owner_of_refresh_token(conn, refresh_token_hash)
    if owner is None:
        return None
    # Using a refresh token retires the pair it came from ...
    _retire_older_than(conn, refresh_token_hash)
    # ... and replaces a successor made earlier that was never used.
    conn.execute(
        "DELETE FROM access_tokens WHERE token_hash IN"
        " (SELECT access_token_hash FROM refresh_tokens WHERE previous_hash = ?)",
        (refresh_token_hash,),
    )
    conn.execute(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts)"
        " VALUES (?, ?, ?, ?, ?)",
        (pair.access_token_hash, owner.user_id, owner.device_id, pair.created_ts, pair.expires_ts),
    )
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, access_token_hash, previous_hash)"
        " VALUES (?, ?, ?)",
        (pair.refresh_token_hash, pair.access_token_hash, refresh_token_hash),
    )
    return TokenOwner(owner.user_id, owner.device_id, owner.admin, pair.expires_ts)


@registered_write
def _retire_older(conn: sqlite3.Connection, *, access_token_hash: bytes) -> None:
    row = conn.execute(
        "SELECT token_hash FROM refresh_tokens WHERE access_token_hash = ?", (access_token_hash,)
    ).fetchone()
    if row is not None:
        _retire_older_than(conn, bytes(row[0]))
