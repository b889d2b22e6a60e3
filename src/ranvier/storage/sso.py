"""Which local user an identity provider's subject logs in as
(``sso_subjects``, :mod:`ranvier.core.sso`).

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
"""

from __future__ import annotations

import functools
import sqlite3

from .accounts import NewAccount, _create_account
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["SsoStorage"]


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


def _sso_user(conn: sqlite3.Connection, *, idp_id: str, subject: str) -> str | None:
    row = conn.execute(
        "SELECT user_id FROM sso_subjects WHERE idp_id = ? AND subject = ?", (idp_id, subject)
    ).fetchone()
    return None if row is None else str(row[0])


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
