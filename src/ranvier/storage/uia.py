"""User-interactive authentication sessions (``uia_sessions``), for
:mod:`ranvier.core.uia`.

Invariants
----------

* **A session is one user's, for one operation.** ``user_id`` and
  ``operation`` are written when the session is opened and never changed,
  except that a registration's session, opened for nobody, is claimed by
  the account it made in that account's own write
  (:func:`ranvier.storage.accounts._create_account`): an account made in a
  session never exists without the session saying so, nor the other way.
* **A finished session keeps its answer.** ``result`` is written once, by
  the request that succeeded; a later write finds it set and leaves it, so
  the first answer is the one every retry gets.
* **A stage is completed only while the session is open**: unexpired,
  unfinished and the named user's.
* **Each write survives being run twice**: opening inserts or finds its own
  row, completing adds a stage already there as nothing, finishing finds
  the answer set.
* Expired sessions are deleted by the next write that opens one.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass

import msgspec

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["NewUiaSession", "UiaSession", "UiaStorage"]


@dataclass(frozen=True, slots=True)
class NewUiaSession:
    """A session to open."""

    session_id: str
    operation: str
    #: None for a registration, until the account is made.
    user_id: str | None
    #: The SHA-256 of the access token that asked, for a user's session.
    token_hash: bytes | None
    expires_ts: int


@dataclass(frozen=True, slots=True)
class UiaSession:
    """A session as stored."""

    session_id: str
    operation: str
    user_id: str | None
    token_hash: bytes | None
    #: Stages completed out of band, in order.
    completed: tuple[str, ...]
    #: Set with ``result`` when the request succeeded.
    request_hash: bytes | None
    #: The answer's JSON, once the request succeeded.
    result: str | None
    expires_ts: int


class UiaStorage:
    """Sessions over the storage actor (writes) and the reader pool (reads)."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def open_uia_session(self, session: NewUiaSession, *, now_ms: int) -> None:
        """Store ``session``, sweeping sessions expired by ``now_ms``."""
        await self._actor.submit(functools.partial(_open_session, session=session, now_ms=now_ms))

    async def uia_session(self, session_id: str) -> UiaSession | None:
        """The session, expired or not; None if there is none."""
        return await self._readers.read(functools.partial(_session, session_id=session_id))

    async def complete_uia_stage(
        self, session_id: str, user_id: str, stage: str, *, now_ms: int
    ) -> bool:
        """Record ``stage`` done in ``user_id``'s open session; False, with
        nothing written, when the session is not open (unknown, expired,
        finished or another user's)."""
        return await self._actor.submit(
            functools.partial(
                _complete_stage, session_id=session_id, user_id=user_id, stage=stage, now_ms=now_ms
            )
        )

    async def finish_uia_session(
        self, session_id: str, user_id: str, request_hash: bytes, result: str
    ) -> None:
        """Keep ``result`` as the answer of ``user_id``'s session, unless it
        has one already."""
        await self._actor.submit(
            functools.partial(
                _finish_session,
                session_id=session_id,
                user_id=user_id,
                request_hash=request_hash,
                result=result,
            )
        )


_COLUMNS = "session_id, operation, user_id, token_hash, completed, request_hash, result, expires_ts"


def _session(conn: sqlite3.Connection, *, session_id: str) -> UiaSession | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM uia_sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return None
    completed = msgspec.json.decode(row[4], type=tuple[str, ...])
    return UiaSession(
        session_id=str(row[0]),
        operation=str(row[1]),
        user_id=None if row[2] is None else str(row[2]),
        token_hash=None if row[3] is None else bytes(row[3]),
        completed=completed,
        request_hash=None if row[5] is None else bytes(row[5]),
        result=None if row[6] is None else str(row[6]),
        expires_ts=int(row[7]),
    )


@registered_write
def _open_session(conn: sqlite3.Connection, *, session: NewUiaSession, now_ms: int) -> None:
    """Run twice, the second run finds its own row (the ID is drawn at random
    for each session) and leaves it."""
    conn.execute("DELETE FROM uia_sessions WHERE expires_ts <= ?", (now_ms,))
    conn.execute(
        "INSERT INTO uia_sessions (session_id, operation, user_id, token_hash, expires_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
        (
            session.session_id,
            session.operation,
            session.user_id,
            session.token_hash,
            session.expires_ts,
        ),
    )


@registered_write
def _complete_stage(
    conn: sqlite3.Connection, *, session_id: str, user_id: str, stage: str, now_ms: int
) -> bool:
    found = _session(conn, session_id=session_id)
    if (
        found is None
        or found.user_id != user_id
        or found.result is not None
        or found.expires_ts <= now_ms
    ):
        return False
    if stage not in found.completed:
        conn.execute(
            "UPDATE uia_sessions SET completed = ? WHERE session_id = ?",
            (msgspec.json.encode([*found.completed, stage]).decode(), session_id),
        )
    return True


@registered_write
def _finish_session(
    conn: sqlite3.Connection, *, session_id: str, user_id: str, request_hash: bytes, result: str
) -> None:
    conn.execute(
        "UPDATE uia_sessions SET request_hash = ?, result = ?"
        " WHERE session_id = ? AND user_id = ? AND result IS NULL",
        (request_hash, result, session_id, user_id),
    )
