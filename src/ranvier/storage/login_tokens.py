"""Login tokens (``m.login.token``) in SQLite: short-lived, single use, kept
as their SHA-256.

Invariants
----------

* **A token logs in once.** Taking the token and adding the device it logs
  in are one write, so two logins with one token cannot both succeed and a
  failed login does not spend it.
* **Expired tokens are swept, not served.** Reads and takes compare the
  expiry with the caller's clock; making a token deletes those expired.
* **Each write survives being run twice.** A login repeated finds its own
  device's token (its random hash) and succeeds again.
"""

from __future__ import annotations

import functools
import sqlite3

from .accounts import NewDevice, _add_device
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["LoginTokenStorage"]


class LoginTokenStorage:
    """Login tokens over the storage actor (writes) and the reader pool (reads)."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def add_login_token(
        self, token_hash: bytes, user_id: str, expires_ts: int, now_ts: int
    ) -> None:
        """Keep a login token of ``user_id`` until ``expires_ts``; tokens
        expired at ``now_ts`` go in the same write."""
        await self._actor.submit(
            functools.partial(
                _add_login_token,
                token_hash=token_hash,
                user_id=user_id,
                expires_ts=expires_ts,
                now_ts=now_ts,
            )
        )

    async def login_token_user(self, token_hash: bytes, now_ts: int) -> str | None:
        """Whose unexpired login token ``token_hash`` is (None if nobody's,
        or the account is deactivated)."""
        return await self._readers.read(
            functools.partial(_login_token_user, token_hash=token_hash, now_ts=now_ts)
        )

    async def log_in_with_token(self, token_hash: bytes, now_ts: int, device: NewDevice) -> bool:
        """Spend the login token and log ``device`` in with it, in one write.
        False (and nothing written) if the token is not ``device.user_id``'s
        unexpired token any more."""
        return await self._actor.submit(
            functools.partial(
                _log_in_with_token, token_hash=token_hash, now_ts=now_ts, device=device
            )
        )


@registered_write
def _add_login_token(
    conn: sqlite3.Connection, *, token_hash: bytes, user_id: str, expires_ts: int, now_ts: int
) -> None:
    conn.execute("DELETE FROM login_tokens WHERE expires_ts <= ?", (now_ts,))
    conn.execute(
        "INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)"
        " ON CONFLICT (token_hash) DO NOTHING",
        (token_hash, user_id, expires_ts),
    )


def _login_token_user(conn: sqlite3.Connection, *, token_hash: bytes, now_ts: int) -> str | None:
    row = conn.execute(
        "SELECT l.user_id FROM login_tokens AS l JOIN users AS u ON u.user_id = l.user_id"
        " WHERE l.token_hash = ? AND l.expires_ts > ? AND u.deactivated = 0",
        (token_hash, now_ts),
    ).fetchone()
    return None if row is None else str(row[0])


@registered_write
def _log_in_with_token(
    conn: sqlite3.Connection, *, token_hash: bytes, now_ts: int, device: NewDevice
) -> bool:
    taken = conn.execute(
        "DELETE FROM login_tokens WHERE token_hash = ? AND user_id = ? AND expires_ts > ?"
        " AND user_id IN (SELECT user_id FROM users WHERE deactivated = 0)",
        (token_hash, device.user_id, now_ts),
    ).rowcount
    if not taken:
        # This login run before has left its device's token.
        repeat = conn.execute(
            "SELECT 1 FROM access_tokens WHERE token_hash = ? AND user_id = ? AND device_id = ?",
            (device.token_hash, device.user_id, device.device_id),
        ).fetchone()
        return repeat is not None
    _add_device(conn, device=device)
    return True
