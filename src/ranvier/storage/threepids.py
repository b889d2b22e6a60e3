"""Third-party identifiers: the addresses on users' accounts
(``user_threepids``), and the validation sessions that prove a user
receives mail at one (``threepid_validation_sessions``), for
:mod:`ranvier.core.threepids` and :mod:`ranvier.core.email_validation`.

Invariants
----------

* **An address is on one account at most.** ``(medium, address)`` is the
  key of ``user_threepids``; adding one that another user has is refused
  in the write that would add it, so two racing adds cannot both win.
* **A session proves one thing once.** Adding its address (to an account,
  or to one registered with it), or resetting a password with it, deletes
  the session in the same write; a second use,
  from this process or another, finds nothing.
* **Tokens are stored hashed** (SHA-256): the table alone does not
  validate anyone's address. They are compared in constant time.
* **A session expires** at ``expires_ts``, validated or not: the mail's
  token, and what it proved, count for the token's lifetime only.
* **Each write survives being run twice** (a worker's write repeated across
  a restart of the main process): saving a session again finds its own row
  with the same attempt and leaves it; a validation again finds the session
  validated. An add or a reset run again finds its session used up and
  answers "unvalidated", changing nothing more: the first run's answer was
  lost, and the client, told to validate again, finds the address added
  (or the password set) when it looks. Handing a used session out twice to
  be sure of an answer would be worse.
"""

from __future__ import annotations

import functools
import hmac
import sqlite3
from dataclasses import dataclass
from typing import Final, Literal

from .accounts import NewAccount, NewDevice, _change_password, _create_account
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = [
    "NewValidationSession",
    "PasswordReset",
    "ThreepidStorage",
    "UserThreepid",
    "ValidationSession",
]

#: ``keep_only_device`` of a password change that keeps no device: no
#: device has an empty ID.
_NO_DEVICE: Final = ""

Validation = Literal["validated", "unknown", "expired", "incorrect"]
Use = Literal["unvalidated", "in_use"]


@dataclass(frozen=True, slots=True)
class ValidationSession:
    """A session as a ``requestToken`` repeat needs it."""

    sid: str
    send_attempt: int


@dataclass(frozen=True, slots=True)
class NewValidationSession:
    """A token just mailed for ``sid`` (new, or an earlier session of the
    same client secret and address, which then gets the new token)."""

    sid: str
    medium: str
    address: str
    client_secret: str
    token_hash: bytes
    send_attempt: int
    next_link: str | None
    created_ts: int
    expires_ts: int


@dataclass(frozen=True, slots=True)
class UserThreepid:
    """One identifier on an account, as ``GET /account/3pid`` lists it."""

    medium: str
    address: str
    validated_at: int
    added_at: int


@dataclass(frozen=True, slots=True)
class PasswordReset:
    """A password reset done: whose, and how many devices were logged out."""

    user_id: str
    devices_gone: int


class ThreepidStorage:
    """Identifiers and validation sessions over the storage actor and the reader pool."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def open_session(
        self, medium: str, address: str, client_secret: str, *, now_ms: int
    ) -> ValidationSession | None:
        """The unvalidated, unexpired session of this client secret for
        ``address``: a ``requestToken`` repeat answers its ``sid``."""
        return await self._readers.read(
            functools.partial(
                _open_session,
                medium=medium,
                address=address,
                client_secret=client_secret,
                now_ms=now_ms,
            )
        )

    async def save_session(self, session: NewValidationSession) -> str:
        """Store ``session`` (its token replacing an older one's, when
        its ``send_attempt`` is higher); answers the ``sid``."""
        return await self._actor.submit(functools.partial(_save_session, session=session))

    async def validate_session(
        self, sid: str, client_secret: str, token_hash: bytes, *, now_ms: int
    ) -> tuple[Validation, str | None]:
        """Mark the session validated if ``token_hash`` is its token's;
        what happened, and the session's ``next_link``."""
        return await self._actor.submit(
            functools.partial(
                _validate_session,
                sid=sid,
                client_secret=client_secret,
                token_hash=token_hash,
                now_ms=now_ms,
            )
        )

    async def owner(self, medium: str, address: str) -> str | None:
        """The user ``address`` is on the account of, or None."""
        return await self._readers.read(functools.partial(_owner, medium=medium, address=address))

    async def threepids_of(self, user_id: str) -> list[UserThreepid]:
        """The identifiers on ``user_id``'s account, oldest first."""
        return await self._readers.read(functools.partial(_threepids_of, user_id=user_id))

    async def add_threepid(
        self, user_id: str, sid: str, client_secret: str, medium: str, *, now_ms: int
    ) -> Literal["added"] | Use:
        """Add the address the session validated to ``user_id``'s account,
        using up the session; "unvalidated" (no such session, not validated,
        or expired) and "in_use" (another account's) leave everything as it was."""
        return await self._actor.submit(
            functools.partial(
                _add_threepid,
                user_id=user_id,
                sid=sid,
                client_secret=client_secret,
                medium=medium,
                now_ms=now_ms,
            )
        )

    async def create_account_with_threepid(
        self,
        account: NewAccount,
        device: NewDevice | None,
        sid: str,
        client_secret: str,
        medium: str,
        *,
        now_ms: int,
    ) -> Literal["created"] | Use:
        """Create ``account`` (and log ``device`` in) with the address the
        session validated on it, using up the session: one write. Raises
        :class:`~ranvier.storage.accounts.UserInUseError` for a taken user
        ID; "unvalidated" and "in_use" create nothing."""
        return await self._actor.submit(
            functools.partial(
                _create_account_with_threepid,
                account=account,
                device=device,
                sid=sid,
                client_secret=client_secret,
                medium=medium,
                now_ms=now_ms,
            )
        )

    async def delete_threepid(self, user_id: str, medium: str, address: str) -> bool:
        """Take ``address`` off ``user_id``'s account; False if it was not on it."""
        return await self._actor.submit(
            functools.partial(_delete_threepid, user_id=user_id, medium=medium, address=address)
        )

    async def reset_password(
        self,
        sid: str,
        client_secret: str,
        medium: str,
        password_hash: str,
        *,
        logout_devices: bool,
        now_ms: int,
    ) -> PasswordReset | Literal["unvalidated", "no_account"]:
        """Give the account the session's address is on ``password_hash``,
        using up the session, and with ``logout_devices`` log out every
        device of it: one write. "unvalidated" and "no_account" (the
        address on no account by now) change nothing."""
        return await self._actor.submit(
            functools.partial(
                _reset_password,
                sid=sid,
                client_secret=client_secret,
                medium=medium,
                password_hash=password_hash,
                logout_devices=logout_devices,
                now_ms=now_ms,
            )
        )


def _open_session(
    conn: sqlite3.Connection, *, medium: str, address: str, client_secret: str, now_ms: int
) -> ValidationSession | None:
    row = conn.execute(
        "SELECT sid, send_attempt FROM threepid_validation_sessions"
        " WHERE client_secret = ? AND medium = ? AND address = ?"
        " AND validated_ts IS NULL AND expires_ts > ? ORDER BY created_ts DESC LIMIT 1",
        (client_secret, medium, address, now_ms),
    ).fetchone()
    return None if row is None else ValidationSession(str(row[0]), int(row[1]))


@registered_write
def _save_session(conn: sqlite3.Connection, *, session: NewValidationSession) -> str:
    conn.execute(
        "INSERT INTO threepid_validation_sessions (sid, medium, address, client_secret,"
        " token_hash, send_attempt, next_link, created_ts, expires_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (sid) DO UPDATE SET token_hash = excluded.token_hash,"
        " send_attempt = excluded.send_attempt, next_link = excluded.next_link,"
        " expires_ts = excluded.expires_ts"
        " WHERE excluded.send_attempt > threepid_validation_sessions.send_attempt",
        (
            session.sid,
            session.medium,
            session.address,
            session.client_secret,
            session.token_hash,
            session.send_attempt,
            session.next_link,
            session.created_ts,
            session.expires_ts,
        ),
    )
    return session.sid


@registered_write
def _validate_session(
    conn: sqlite3.Connection, *, sid: str, client_secret: str, token_hash: bytes, now_ms: int
) -> tuple[Validation, str | None]:
    row = conn.execute(
        "SELECT client_secret, token_hash, expires_ts, next_link"
        " FROM threepid_validation_sessions WHERE sid = ?",
        (sid,),
    ).fetchone()
    # A wrong secret is an unknown session: the sid alone tells nothing.
    if row is None or not hmac.compare_digest(str(row[0]), client_secret):
        return "unknown", None
    stored_hash, expires_ts, next_link = bytes(row[1]), int(row[2]), row[3]
    if expires_ts <= now_ms:
        return "expired", None
    if not hmac.compare_digest(stored_hash, token_hash):
        return "incorrect", None
    conn.execute(
        "UPDATE threepid_validation_sessions SET validated_ts = ?"
        " WHERE sid = ? AND validated_ts IS NULL",
        (now_ms, sid),
    )
    return "validated", None if next_link is None else str(next_link)


def _validated(
    conn: sqlite3.Connection, *, sid: str, client_secret: str, medium: str, now_ms: int
) -> tuple[str, int] | None:
    """The address a usable session validated, and when."""
    row = conn.execute(
        "SELECT client_secret, address, validated_ts FROM threepid_validation_sessions"
        " WHERE sid = ? AND medium = ? AND validated_ts IS NOT NULL AND expires_ts > ?",
        (sid, medium, now_ms),
    ).fetchone()
    if row is None or not hmac.compare_digest(str(row[0]), client_secret):
        return None
    return str(row[1]), int(row[2])


def _owner(conn: sqlite3.Connection, *, medium: str, address: str) -> str | None:
    row = conn.execute(
        "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", (medium, address)
    ).fetchone()
    return None if row is None else str(row[0])


def _threepids_of(conn: sqlite3.Connection, *, user_id: str) -> list[UserThreepid]:
    return [
        UserThreepid(str(medium), str(address), int(validated), int(added))
        for medium, address, validated, added in conn.execute(
            "SELECT medium, address, validated_ts, added_ts FROM user_threepids"
            " WHERE user_id = ? ORDER BY added_ts, address",
            (user_id,),
        )
    ]


@registered_write
def _add_threepid(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    sid: str,
    client_secret: str,
    medium: str,
    now_ms: int,
) -> Literal["added"] | Use:
    validated = _validated(conn, sid=sid, client_secret=client_secret, medium=medium, now_ms=now_ms)
    if validated is None:
        return "unvalidated"
    address, validated_ts = validated
    owner = _owner(conn, medium=medium, address=address)
    if owner is not None and owner != user_id:
        return "in_use"
    conn.execute(
        "INSERT INTO user_threepids (medium, address, user_id, validated_ts, added_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (medium, address) DO NOTHING",
        (medium, address, user_id, validated_ts, now_ms),
    )
    conn.execute("DELETE FROM threepid_validation_sessions WHERE sid = ?", (sid,))
    return "added"


@registered_write
def _create_account_with_threepid(
    conn: sqlite3.Connection,
    *,
    account: NewAccount,
    device: NewDevice | None,
    sid: str,
    client_secret: str,
    medium: str,
    now_ms: int,
) -> Literal["created"] | Use:
    """Run twice, the second run finds the session used up and answers
    "unvalidated", creating nothing: the account the first made stays, its
    answer lost; the user logs in to it with the password they chose."""
    validated = _validated(conn, sid=sid, client_secret=client_secret, medium=medium, now_ms=now_ms)
    if validated is None:
        return "unvalidated"
    address, validated_ts = validated
    if _owner(conn, medium=medium, address=address) is not None:
        return "in_use"
    _create_account(conn, account=account, device=device)
    conn.execute(
        "INSERT INTO user_threepids (medium, address, user_id, validated_ts, added_ts)"
        " VALUES (?, ?, ?, ?, ?)",
        (medium, address, account.user_id, validated_ts, now_ms),
    )
    conn.execute("DELETE FROM threepid_validation_sessions WHERE sid = ?", (sid,))
    return "created"


@registered_write
def _delete_threepid(conn: sqlite3.Connection, *, user_id: str, medium: str, address: str) -> bool:
    return (
        conn.execute(
            "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
            (user_id, medium, address),
        ).rowcount
        > 0
    )


@registered_write
def _reset_password(
    conn: sqlite3.Connection,
    *,
    sid: str,
    client_secret: str,
    medium: str,
    password_hash: str,
    logout_devices: bool,
    now_ms: int,
) -> PasswordReset | Literal["unvalidated", "no_account"]:
    """Run twice, the second run finds the session used up and answers
    "unvalidated": the password was set by the first, whose answer was
    lost; the client is told to validate again, which is the safe side."""
    validated = _validated(conn, sid=sid, client_secret=client_secret, medium=medium, now_ms=now_ms)
    if validated is None:
        return "unvalidated"
    user_id = _owner(conn, medium=medium, address=validated[0])
    if user_id is None:
        return "no_account"
    gone = _change_password(
        conn,
        user_id=user_id,
        password_hash=password_hash,
        keep_only_device=_NO_DEVICE if logout_devices else None,
    )
    conn.execute("DELETE FROM threepid_validation_sessions WHERE sid = ?", (sid,))
    return PasswordReset(user_id, gone)
