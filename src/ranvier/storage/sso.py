"""Which local user an identity provider's subject logs in as
(``sso_subjects``), and the logins under way between the redirect to the
provider and its callback (``sso_sessions``), for :mod:`ranvier.core.sso`.

Invariants
----------

* **A subject is one user, for good.** ``(idp_id, subject)`` is the key;
  once written, a later login of the subject finds the same user, whatever
  its username claim says by then.
* **An account made for a subject is made with its mapping**, in one
  write: a login that fails half-way leaves neither.
* **Each write survives being run twice.** Linking a subject already
  linked answers the user it is linked to, so a repeated write (or a second
  callback racing the first) never maps a subject to two users.
* **A session is handed out once.** Taking it deletes it in the same write
  that reads it, so a second callback with the same ``state``, in this
  process or another, finds nothing; an expired one is deleted and refused.
  Sessions are keyed by the SHA-256 of ``state``: the table alone does not
  let anyone answer a callback.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass, field
from typing import Literal

from .accounts import NewAccount, _create_account
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["SsoSession", "SsoStorage"]


@dataclass(frozen=True, slots=True)
class SsoSession:
    """A login under way: what the callback needs to finish it. The nonce
    and the PKCE verifier stay out of ``repr``, and so out of logs."""

    idp_id: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_url: str
    #: Wall-clock milliseconds; the session is refused from then on.
    expires_ts: int
    #: The user-interactive authentication session this sign-on confirms
    #: (:mod:`ranvier.core.uia`); None for a login.
    uia_session: str | None = None
    #: The SHA-256 of the cookie of the browser that started a confirmation:
    #: only that browser's callback may finish it.
    browser_hash: bytes | None = field(default=None, repr=False)


class SsoStorage:
    """The subject-to-user mapping over the storage actor and the reader pool."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def sso_user(self, idp_id: str, subject: str) -> str | None:
        """The user ``subject`` of ``idp_id`` logs in as, or None before its first login."""
        return await self._readers.read(
            functools.partial(_sso_user, idp_id=idp_id, subject=subject)
        )

    async def sso_links(self, user_id: str) -> list[str]:
        """The identity providers ``user_id`` has a subject linked at."""
        return await self._readers.read(functools.partial(_sso_links, user_id=user_id))

    async def create_sso_account(self, account: NewAccount, idp_id: str, subject: str) -> str:
        """Create ``account`` linked to ``subject``, in one write; answers
        the user the subject logs in as (another, when a racing login linked
        it first, and then nothing is created). Raises
        :class:`~ranvier.storage.accounts.UserInUseError` if the user ID is taken.
        """
        return await self._actor.submit(
            functools.partial(_create_sso_account, account=account, idp_id=idp_id, subject=subject)
        )

    async def link_sso_user(self, idp_id: str, subject: str, user_id: str, now_ts: int) -> str:
        """Link ``subject`` to the existing ``user_id`` unless it is linked
        already; answers the user it is linked to."""
        return await self._actor.submit(
            functools.partial(
                _link_sso_user, idp_id=idp_id, subject=subject, user_id=user_id, now_ts=now_ts
            )
        )

    async def create_sso_session(
        self, state_hash: bytes, session: SsoSession, *, now_ms: int, max_sessions: int
    ) -> bool:
        """Store ``session`` under ``state_hash``; False, with nothing
        stored, when ``max_sessions`` unexpired sessions exist already."""
        return await self._actor.submit(
            functools.partial(
                _create_sso_session,
                state_hash=state_hash,
                session=session,
                now_ms=now_ms,
                max_sessions=max_sessions,
            )
        )

    async def take_sso_session(
        self, state_hash: bytes, *, now_ms: int
    ) -> SsoSession | Literal["expired"] | None:
        """Delete the session under ``state_hash`` and answer it; "expired"
        (deleted too) when it expired by ``now_ms``, None when there is none
        (never made, already taken, or swept)."""
        return await self._actor.submit(
            functools.partial(_take_sso_session, state_hash=state_hash, now_ms=now_ms)
        )


def _sso_user(conn: sqlite3.Connection, *, idp_id: str, subject: str) -> str | None:
    row = conn.execute(
        "SELECT user_id FROM sso_subjects WHERE idp_id = ? AND subject = ?", (idp_id, subject)
    ).fetchone()
    return None if row is None else str(row[0])


def _sso_links(conn: sqlite3.Connection, *, user_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT idp_id FROM sso_subjects WHERE user_id = ? ORDER BY idp_id", (user_id,)
    ).fetchall()
    return [str(idp_id) for (idp_id,) in rows]


@registered_write
def _create_sso_account(
    conn: sqlite3.Connection, *, account: NewAccount, idp_id: str, subject: str
) -> str:
    linked = _sso_user(conn, idp_id=idp_id, subject=subject)
    if linked is not None:
        return linked
    _create_account(conn, account=account, device=None)
    conn.execute(
        "INSERT INTO sso_subjects (idp_id, subject, user_id, created_ts) VALUES (?, ?, ?, ?)",
        (idp_id, subject, account.user_id, account.created_ts),
    )
    return account.user_id


@registered_write
def _link_sso_user(
    conn: sqlite3.Connection, *, idp_id: str, subject: str, user_id: str, now_ts: int
) -> str:
    conn.execute(
        "INSERT INTO sso_subjects (idp_id, subject, user_id, created_ts) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (idp_id, subject) DO NOTHING",
        (idp_id, subject, user_id, now_ts),
    )
    linked = _sso_user(conn, idp_id=idp_id, subject=subject)
    assert linked is not None  # written just above, or there already
    return linked


@registered_write
def _create_sso_session(
    conn: sqlite3.Connection,
    *,
    state_hash: bytes,
    session: SsoSession,
    now_ms: int,
    max_sessions: int,
) -> bool:
    """Run twice, the second run finds its own row (the state is drawn at
    random for each login), counts the others as the first did and answers
    the same, leaving one row."""
    (others,) = conn.execute(
        "SELECT COUNT(*) FROM sso_sessions WHERE expires_ts > ? AND state_hash != ?",
        (now_ms, state_hash),
    ).fetchone()
    if others >= max_sessions:
        return False
    conn.execute(
        "INSERT INTO sso_sessions"
        " (state_hash, idp_id, nonce, code_verifier, redirect_url, expires_ts,"
        " uia_session, browser_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (state_hash) DO NOTHING",
        (
            state_hash,
            session.idp_id,
            session.nonce,
            session.code_verifier,
            session.redirect_url,
            session.expires_ts,
            session.uia_session,
            session.browser_hash,
        ),
    )
    return True


@registered_write
def _take_sso_session(
    conn: sqlite3.Connection, *, state_hash: bytes, now_ms: int
) -> SsoSession | Literal["expired"] | None:
    """Run twice (a worker's take repeated after the main process committed
    the first and restarted before answering), the second run finds the row
    gone and answers None: that callback is refused as "already used" and
    the user starts the login again. The first answer reached nobody, so the
    session is handed out to no one; answering it again would let a replayed
    callback in through a restart, which is worse than a login to retry.
    """
    row = conn.execute(
        "DELETE FROM sso_sessions WHERE state_hash = ?"
        " RETURNING idp_id, nonce, code_verifier, redirect_url, expires_ts,"
        " uia_session, browser_hash",
        (state_hash,),
    ).fetchone()
    if row is None:
        return None
    idp_id, nonce, code_verifier, redirect_url, expires_ts, uia_session, browser_hash = row
    if expires_ts <= now_ms:
        return "expired"
    return SsoSession(
        idp_id=str(idp_id),
        nonce=str(nonce),
        code_verifier=str(code_verifier),
        redirect_url=str(redirect_url),
        expires_ts=int(expires_ts),
        uia_session=None if uia_session is None else str(uia_session),
        browser_hash=None if browser_hash is None else bytes(browser_hash),
    )
