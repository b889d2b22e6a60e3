"""Registration tokens and the registration sessions holding a use of one.

Invariants
----------

* **A use is taken inside the writer.** Whether a token still has a use
  free is counted in the same write that takes it, so two sessions cannot
  both take its last use.
* **Pending is counted, not kept.** A session that took a use and has not
  finished holds it until its ``expires_ts``: ``pending`` is the number of
  such sessions, so a session abandoned gives its use back when it expires
  without anything having to run then. Expired sessions are deleted by the
  next write that takes a use.
* **Completing is one write with the account.** The account is created and
  the use moved from pending to ``completed`` in one write, or neither is.
  The session is kept (marked with the user it made) until it expires, so
  that write run again (a worker's, repeated after the main process
  restarted) is recognised as a repeat and succeeds again.
* **A deleted token takes its sessions with it**: a registration that had
  taken a use of it cannot complete.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Literal

# Creating the account is the accounts module's write, run here inside this one.
from .accounts import NewAccount, NewDevice
from .accounts import _create_account as _create_account_in
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["UNCHANGED", "RegistrationTokenStorage", "TokenRecord", "TokenUse", "Unchanged"]

#: What taking a use of a token in a session came to: ``taken`` (now, or
#: already by this session), ``invalid`` (unknown, expired or used up),
#: ``changed`` (the session holds a use of another token), ``finished``
#: (the session already registered its account).
TokenUse = Literal["taken", "invalid", "changed", "finished"]

Unchanged = Literal["unchanged"]
#: An attribute an update leaves as it is.
UNCHANGED: Unchanged = "unchanged"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the admin API shows it. ``pending`` is counted at the time
    the record was read."""

    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def is_valid(self, now_ts: int) -> bool:
        """Whether a new registration may take a use of it at ``now_ts``."""
        unexpired = self.expiry_time is None or self.expiry_time > now_ts
        return unexpired and (
            self.uses_allowed is None or self.pending + self.completed < self.uses_allowed
        )


class RegistrationTokenStorage:
    """Registration tokens over the storage actor (writes) and the reader
    pool (reads). ``now_ts`` is the caller's wall clock, in milliseconds."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    # Registration.

    async def use_token(
        self, session_id: str, token: str, *, now_ts: int, expires_ts: int
    ) -> TokenUse:
        """Take a use of ``token`` for ``session_id``, held until ``expires_ts``."""
        return await self._actor.submit(
            functools.partial(
                _use_token,
                session_id=session_id,
                token=token,
                now_ts=now_ts,
                expires_ts=expires_ts,
            )
        )

    async def register_with_token(
        self, account: NewAccount, device: NewDevice | None, *, session_id: str, now_ts: int
    ) -> bool:
        """Create ``account`` (and ``device``) and complete the use
        ``session_id`` holds, in one write; False, with nothing written, if
        the session holds no use at ``now_ts``. Raises
        :class:`~ranvier.storage.accounts.UserInUseError` as creating the
        account does.
        """
        return await self._actor.submit(
            functools.partial(
                _register_with_token,
                account=account,
                device=device,
                session_id=session_id,
                now_ts=now_ts,
            )
        )

    async def session_token(self, session_id: str, now_ts: int) -> str | None:
        """The token whose use ``session_id`` holds at ``now_ts``, if any."""
        return await self._readers.read(
            functools.partial(_session_token, session_id=session_id, now_ts=now_ts)
        )

    # Administration.

    async def create_token(
        self, token: str, *, uses_allowed: int | None, expiry_time: int | None
    ) -> bool:
        """Add ``token``; False if it exists already."""
        return await self._actor.submit(
            functools.partial(
                _create_token, token=token, uses_allowed=uses_allowed, expiry_time=expiry_time
            )
        )

    async def update_token(
        self,
        token: str,
        *,
        uses_allowed: int | Unchanged | None = UNCHANGED,
        expiry_time: int | Unchanged | None = UNCHANGED,
    ) -> bool:
        """Change what is given of ``token``; False if there is no such token."""
        return await self._actor.submit(
            functools.partial(
                _update_token, token=token, uses_allowed=uses_allowed, expiry_time=expiry_time
            )
        )

    async def delete_token(self, token: str) -> bool:
        """Delete ``token`` and the sessions holding uses of it; False if
        there was no such token."""
        return await self._actor.submit(functools.partial(_delete_token, token=token))

    async def get_token(self, token: str, now_ts: int) -> TokenRecord | None:
        return await self._readers.read(functools.partial(_get_tokens, token=token, now_ts=now_ts))

    async def list_tokens(self, now_ts: int) -> list[TokenRecord]:
        """Every token, in the order of their names."""
        return await self._readers.read(functools.partial(_list_tokens, now_ts=now_ts))


_RECORD = (
    "SELECT t.token, t.uses_allowed,"
    " (SELECT COUNT(*) FROM registration_token_sessions AS s"
    "  WHERE s.token = t.token AND s.user_id IS NULL AND s.expires_ts > ?),"
    " t.completed, t.expiry_time FROM registration_tokens AS t"
)


def _record(conn: sqlite3.Connection, token: str, now_ts: int) -> TokenRecord | None:
    row = conn.execute(f"{_RECORD} WHERE t.token = ?", (now_ts, token)).fetchone()
    return None if row is None else TokenRecord(*row)


def _get_tokens(conn: sqlite3.Connection, *, token: str, now_ts: int) -> TokenRecord | None:
    return _record(conn, token, now_ts)


def _list_tokens(conn: sqlite3.Connection, *, now_ts: int) -> list[TokenRecord]:
    return [TokenRecord(*row) for row in conn.execute(f"{_RECORD} ORDER BY t.token", (now_ts,))]


def _session_token(conn: sqlite3.Connection, *, session_id: str, now_ts: int) -> str | None:
    row = conn.execute(
        "SELECT token FROM registration_token_sessions"
        " WHERE session_id = ? AND user_id IS NULL AND expires_ts > ?",
        (session_id, now_ts),
    ).fetchone()
    return None if row is None else str(row[0])


@registered_write
def _use_token(
    conn: sqlite3.Connection, *, session_id: str, token: str, now_ts: int, expires_ts: int
) -> TokenUse:
    conn.execute("DELETE FROM registration_token_sessions WHERE expires_ts <= ?", (now_ts,))
    held = conn.execute(
        "SELECT token, user_id FROM registration_token_sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if held is not None:
        if held[1] is not None:
            return "finished"
        return "taken" if held[0] == token else "changed"
    record = _record(conn, token, now_ts)
    if record is None or not record.is_valid(now_ts):
        return "invalid"
    conn.execute(
        "INSERT INTO registration_token_sessions (session_id, token, expires_ts, user_id)"
        " VALUES (?, ?, ?, NULL)",
        (session_id, token, expires_ts),
    )
    return "taken"


@registered_write
def _register_with_token(
    conn: sqlite3.Connection,
    *,
    account: NewAccount,
    device: NewDevice | None,
    session_id: str,
    now_ts: int,
) -> bool:
    held = conn.execute(
        "SELECT token, expires_ts, user_id FROM registration_token_sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if held is None:
        return False
    token, expires_ts, user_id = held
    if user_id is not None:
        if user_id != account.user_id:
            return False
        # This write repeated: the account is found as its own.
        _create_account_in(conn, account=account, device=device)
        return True
    if expires_ts <= now_ts:
        return False
    _create_account_in(conn, account=account, device=device)
    conn.execute(
        "UPDATE registration_token_sessions SET user_id = ? WHERE session_id = ?",
        (account.user_id, session_id),
    )
    conn.execute(
        "UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?", (token,)
    )
    return True


@registered_write
def _create_token(
    conn: sqlite3.Connection, *, token: str, uses_allowed: int | None, expiry_time: int | None
) -> bool:
    inserted = conn.execute(
        "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_time)"
        " VALUES (?, ?, 0, ?) ON CONFLICT (token) DO NOTHING",
        (token, uses_allowed, expiry_time),
    )
    return inserted.rowcount == 1


@registered_write
def _update_token(
    conn: sqlite3.Connection,
    *,
    token: str,
    uses_allowed: int | Unchanged | None,
    expiry_time: int | Unchanged | None,
) -> bool:
    exists = conn.execute("SELECT 1 FROM registration_tokens WHERE token = ?", (token,)).fetchone()
    if exists is None:
        return False
    if uses_allowed != UNCHANGED:
        conn.execute(
            "UPDATE registration_tokens SET uses_allowed = ? WHERE token = ?",
            (uses_allowed, token),
        )
    if expiry_time != UNCHANGED:
        conn.execute(
            "UPDATE registration_tokens SET expiry_time = ? WHERE token = ?", (expiry_time, token)
        )
    return True


@registered_write
def _delete_token(conn: sqlite3.Connection, *, token: str) -> bool:
    conn.execute("DELETE FROM registration_token_sessions WHERE token = ?", (token,))
    return conn.execute("DELETE FROM registration_tokens WHERE token = ?", (token,)).rowcount == 1
