"""Local accounts, their devices and their access tokens, in SQLite.

Access tokens are stored as their SHA-256 only and passwords as their
argon2id hash only: a copy of the database lets nobody log in.

Invariants
----------

* **One write per change.** Creating an account with its first device and
  token, or logging a device in, is one write: a failure leaves nothing
  half made.
* **Taken is taken.** Whether a user ID is free is decided by the primary
  key of ``users`` inside the write, not by a read before it, so two
  registrations of one name cannot both succeed. The one write that made
  an account, run again, finds its own row (by its salted password hash
  or its token's hash) and succeeds again: that is a repeat, not a second
  registration.
* **A device has one token**, two for a while after a refresh
  (:mod:`ranvier.storage.refresh_tokens`). Logging a device in again
  replaces its tokens; logging out removes the device with its tokens, and
  the refresh tokens go with the access tokens they were issued with.
  The pushers the device set go in the same write
  (:func:`ranvier.storage.pushers.delete_device_pushers`).
* **A puppet token is no device's.** The token an admin is given to act as
  a user (``puppet_tokens``) is kept apart from the user's devices and
  their tokens: the user's own logouts leave it, as Synapse's do. It goes
  when it is logged out itself, and with the admin's tokens (the admin's
  ``/logout/all``, password change with logout, deactivation, loss of
  admin rights: :func:`ranvier.storage.admin_writes.set_admin`), and with
  the user's deactivation.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

import msgspec

from ranvier.errors import MatrixError

from .deactivation import remove_account_data
from .erasure import mark_erased
from .pushers import delete_device_pushers
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = [
    "OPENID_TOKEN_LIFETIME_MS",
    "AccountFlags",
    "AccountStorage",
    "DeactivatedAccount",
    "NewAccount",
    "NewDevice",
    "NewPuppetToken",
    "PasswordLogin",
    "RegistrationClaim",
    "SessionRegisteredError",
    "TokenOwner",
    "UserInUseError",
]


#: How long an OpenID token lasts: the hour the spec's example gives.
OPENID_TOKEN_LIFETIME_MS: Final = 3_600_000


class UserInUseError(MatrixError):
    """The user ID asked for already has an account (deactivated ones too:
    a user ID is never given to a second person).
    """

    errcode = "M_USER_IN_USE"
    http_status = 400

    def __init__(self, user_id: str) -> None:
        super().__init__(f"the user ID {user_id} is already taken")
        self.user_id = user_id


@dataclass(frozen=True, slots=True)
class RegistrationClaim:
    """The user-interactive authentication session a registration is made
    in (:mod:`ranvier.storage.uia`), claimed in the account's own write.

    ``write_id`` is drawn anew for each attempt: it is how the write, run
    again, knows the claim it finds as its own rather than another
    request's in the same session.
    """

    session_id: str
    write_id: str
    #: Until when a retry in the session is answered with this registration.
    expires_ts: int


class SessionRegisteredError(MatrixError):
    """The registration's session made an account already, through another
    request: ``user_id`` is that account's, and nothing was written."""

    errcode = "RANVIER_UIA_SESSION_REGISTERED"
    http_status = 400

    def __init__(self, user_id: str) -> None:
        super().__init__(f"this authentication session already registered {user_id}")
        self.user_id = user_id


@dataclass(frozen=True, slots=True)
class NewAccount:
    """An account to create. ``password_hash`` is None for an account that
    cannot log in with a password.
    """

    user_id: str
    password_hash: str | None
    admin: bool
    created_ts: int
    #: The profile's display name, written with the account; None: unset.
    display_name: str | None = None
    #: A guest account (:mod:`ranvier.core.guests`): made without credentials,
    #: allowed a subset of the client API until it is upgraded.
    guest: bool = False
    #: The authentication session the account is registered in, if any.
    session: RegistrationClaim | None = None


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device logging in, with the hash of the access token it is given."""

    user_id: str
    device_id: str
    display_name: str | None
    token_hash: bytes
    created_ts: int
    #: When the access token stops working; None: never.
    expires_ts: int | None = None
    #: The hash of the refresh token issued with the access token, if one is.
    refresh_token_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewPuppetToken:
    """An access token with which the admin ``admin_id`` acts as ``user_id``."""

    token_hash: bytes
    user_id: str
    admin_id: str
    created_ts: int
    #: When the token stops working; None: never.
    expires_ts: int | None


@dataclass(frozen=True, slots=True)
class DeactivatedAccount:
    """What deactivating an account did to its devices."""

    #: The device-list position the devices' removal moved the stream to;
    #: None when the account had none left (a deactivation run again).
    device_list_position: int | None
    #: The devices removed, with their keys and waiting messages.
    devices: list[str]


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    """What a password login needs to know of an account."""

    user_id: str
    password_hash: str | None
    admin: bool
    deactivated: bool
    #: A locked account is given no new token until it is unlocked.
    locked: bool = False


@dataclass(frozen=True, slots=True)
class AccountFlags:
    """What admins set on an account that a request acting as it must heed."""

    locked: bool
    suspended: bool
    shadow_banned: bool = False
    deactivated: bool = False


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Whose access token a hash is."""

    user_id: str
    device_id: str
    admin: bool
    #: When the token stops working; None: never.
    expires_ts: int | None = None
    #: Whether the token came from a refresh whose older pair is still kept,
    #: to be retired now that the new one is used.
    replaces_older: bool = False
    #: Whether an admin locked or suspended the account.
    locked: bool = False
    suspended: bool = False
    #: Whether the account is a guest's (:mod:`ranvier.core.guests`).
    guest: bool = False
    #: Whether an admin shadow-banned the account (:mod:`ranvier.core.shadow_bans`).
    shadow_banned: bool = False
    #: The admin acting as the user, for a puppet token; ``device_id`` is
    #: then empty.
    puppeted_by: str | None = None


class AccountStorage:
    """Accounts, devices and access tokens over the storage actor (writes)
    and the reader pool (reads).
    """

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    # Writes.

    async def create_account(self, account: NewAccount, device: NewDevice | None = None) -> None:
        """Create ``account`` and, if given, its first device and token.

        Raises :class:`UserInUseError` if the user ID is taken.
        """
        await self._actor.submit(functools.partial(_create_account, account=account, device=device))

    async def upgrade_guest(
        self,
        user_id: str,
        password_hash: str,
        device: NewDevice | None,
        session: RegistrationClaim | None = None,
    ) -> None:
        """Make the guest ``user_id`` a full account with ``password_hash``
        and, if given, log ``device`` in, in one write; the guest's devices,
        tokens and rooms stay. ``session`` is claimed in the same write, as
        a registration's is.

        Raises MatrixError ``M_FORBIDDEN`` if ``user_id`` is not an active
        guest account, :class:`SessionRegisteredError` if another request
        of the session made an account first.
        """
        await self._actor.submit(
            functools.partial(
                _upgrade_guest,
                user_id=user_id,
                password_hash=password_hash,
                device=device,
                session=session,
            )
        )

    async def add_device(self, device: NewDevice) -> None:
        """Log ``device`` in: create it if new (an existing one keeps its
        display name) and make ``device.token_hash`` its only token.

        Raises MatrixError ``M_FORBIDDEN`` if the user has no account.
        """
        await self._actor.submit(functools.partial(_add_device, device=device))

    async def create_device(
        self, user_id: str, device_id: str, display_name: str | None, created_ts: int
    ) -> bool:
        """Create a device with no access token (an application service's,
        spec v1.17); False when the user has it already, which is left as is.

        Raises MatrixError ``M_FORBIDDEN`` if the user has no account.
        """
        return await self._actor.submit(
            functools.partial(
                _create_device,
                user_id=user_id,
                device_id=device_id,
                display_name=display_name,
                created_ts=created_ts,
            )
        )

    async def add_puppet_token(self, token: NewPuppetToken) -> None:
        """Keep a puppet token; those expired by its making go in the same
        write.

        Raises MatrixError 404 ``M_NOT_FOUND`` if the user has no account,
        400 ``M_INVALID_PARAM`` if it is deactivated, and 403
        ``M_FORBIDDEN`` if the admin is no longer an active admin: each read
        in the write, so that a deactivation or demotion that committed
        since the caller looked is not outrun.
        """
        await self._actor.submit(functools.partial(_add_puppet_token, token=token))

    async def delete_device_of_token(self, token_hash: bytes) -> TokenOwner | None:
        """Log out the device ``token_hash`` belongs to: the device goes with
        every token it has; a puppet token goes alone. Returns whose it was,
        or None for an unknown token.
        """
        return await self._actor.submit(
            functools.partial(_delete_device_of_token, token_hash=token_hash)
        )

    async def delete_devices(self, user_id: str) -> int:
        """Log out every device of ``user_id``, and the puppet tokens they
        were given as an admin; return how many tokens went."""
        return await self._actor.submit(functools.partial(_delete_devices, user_id=user_id))

    async def delete_user_devices(self, user_id: str, device_ids: Collection[str]) -> int:
        """Log out the named devices of ``user_id`` (each with its tokens);
        return how many devices there were to delete.
        """
        return await self._actor.submit(
            functools.partial(_delete_user_devices, user_id=user_id, device_ids=tuple(device_ids))
        )

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._actor.submit(
            functools.partial(_set_password_hash, user_id=user_id, password_hash=password_hash)
        )

    async def change_password(
        self, user_id: str, password_hash: str, *, keep_only_device: str | None
    ) -> int:
        """Give ``user_id`` a new password hash and, unless
        ``keep_only_device`` is None, log out every other device of theirs
        and the puppet tokens they were given as an admin in the same write.
        Returns how many devices were logged out.
        """
        return await self._actor.submit(
            functools.partial(
                _change_password,
                user_id=user_id,
                password_hash=password_hash,
                keep_only_device=keep_only_device,
            )
        )

    async def deactivate_account(
        self, user_id: str, *, erase: bool = False
    ) -> DeactivatedAccount | None:
        """Mark ``user_id`` deactivated, log out all their devices, drop the
        puppet tokens acting as them or given to them, erase their e-mail
        addresses, and with ``erase`` mark the account erased
        (:mod:`ranvier.storage.erasure`), in one write, which removes what
        :mod:`ranvier.storage.deactivation` lists too (account data, key
        backups, the devices' keys …); None, writing nothing, if there is no
        such account.
        """
        return await self._actor.submit(
            functools.partial(_deactivate_account, user_id=user_id, erase=erase)
        )

    async def add_openid_token(self, token_hash: bytes, user_id: str, expires_ts: int) -> None:
        """Keep an OpenID token (its hash) of ``user_id`` until ``expires_ts``;
        expired ones go in the same write.
        """
        await self._actor.submit(
            functools.partial(
                _add_openid_token, token_hash=token_hash, user_id=user_id, expires_ts=expires_ts
            )
        )

    # Reads.

    async def user_exists(self, user_id: str) -> bool:
        """Whether ``user_id`` has an account here, deactivated or not."""
        return await self._readers.read(functools.partial(_user_exists, user_id=user_id))

    async def has_device(self, user_id: str, device_id: str) -> bool:
        """Whether ``user_id`` has the device ``device_id``."""
        return await self._readers.read(
            functools.partial(_has_device, user_id=user_id, device_id=device_id)
        )

    async def get_password_login(self, user_id: str) -> PasswordLogin | None:
        return await self._readers.read(functools.partial(_get_password_login, user_id=user_id))

    async def get_account_flags(self, user_id: str) -> AccountFlags | None:
        """Whether ``user_id`` is locked, suspended, shadow-banned or
        deactivated; None if there is no such account."""
        return await self._readers.read(functools.partial(_get_account_flags, user_id=user_id))

    async def get_token_owner(self, token_hash: bytes) -> TokenOwner | None:
        """The owner of an access token, or None if no active account has it;
        for a puppet token, the user it acts as, while that account is
        active and the admin it was given to still an active admin."""
        return await self._readers.read(functools.partial(_get_token_owner, token_hash=token_hash))

    async def get_openid_token_owner(self, token_hash: bytes, now_ts: int) -> str | None:
        """The user an OpenID token was issued to, None if unknown, expired
        at ``now_ts`` or its account deactivated.
        """
        return await self._readers.read(
            functools.partial(_get_openid_token_owner, token_hash=token_hash, now_ts=now_ts)
        )

    async def rooms_to_leave(self, user_id: str) -> list[str]:
        """The rooms ``user_id`` is joined to, invited to or knocking on:
        by current state, or, for rooms known here only through outliers (an
        invite from another server), by the latest member event about them.
        """
        return await self._readers.read(functools.partial(_rooms_to_leave, user_id=user_id))


@registered_write
def _create_account(
    conn: sqlite3.Connection, *, account: NewAccount, device: NewDevice | None
) -> None:
    if account.session is not None and _claimed_before(conn, account.session):
        # This very write run again: the account, its device and the claim
        # were all made by its first run.
        return
    try:
        conn.execute(
            "INSERT INTO users (user_id, password_hash, admin, created_ts, deactivated, is_guest)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            (
                account.user_id,
                account.password_hash,
                int(account.admin),
                account.created_ts,
                int(account.guest),
            ),
        )
    except sqlite3.IntegrityError:
        # The primary key: someone has the name, whenever they took it,
        # unless it is this very write repeated.
        if not _is_repeat(conn, account, device):
            raise UserInUseError(account.user_id) from None
    else:
        if account.display_name is not None:
            conn.execute(
                "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                (account.user_id, account.display_name),
            )
    if device is not None:
        _add_device(conn, device=device)
    if account.session is not None:
        _claim_session(conn, account.user_id, account.session)


def _claimed_before(conn: sqlite3.Connection, claim: RegistrationClaim) -> bool:
    """Whether ``claim`` is this write's own, made by a run of it before."""
    row = conn.execute(
        "SELECT write_id FROM uia_sessions WHERE session_id = ? AND operation = 'register'",
        (claim.session_id,),
    ).fetchone()
    return row is not None and row[0] == claim.write_id


def _claim_session(conn: sqlite3.Connection, user_id: str, claim: RegistrationClaim) -> None:
    """Mark the registration's session as having made ``user_id``; raise
    :class:`SessionRegisteredError` (the savepoint then drops the account
    too) when another request of the session made one first. A session
    that is gone (never opened, or swept) is opened here: the account is
    still the one it made."""
    row = conn.execute(
        "SELECT user_id FROM uia_sessions WHERE session_id = ? AND operation = 'register'",
        (claim.session_id,),
    ).fetchone()
    if row is not None and row[0] is not None:
        raise SessionRegisteredError(str(row[0]))
    conn.execute(
        "INSERT INTO uia_sessions (session_id, operation, user_id, write_id, expires_ts)"
        " VALUES (?, 'register', ?, ?, ?) ON CONFLICT (session_id) DO UPDATE"
        " SET user_id = excluded.user_id, write_id = excluded.write_id,"
        " expires_ts = excluded.expires_ts WHERE uia_sessions.operation = 'register'",
        (claim.session_id, user_id, claim.write_id, claim.expires_ts),
    )


def _is_repeat(conn: sqlite3.Connection, account: NewAccount, device: NewDevice | None) -> bool:
    """Whether the account already there is this one, made by this same
    write before (a worker's write repeated after the main process that ran
    it restarted).

    Only a random secret of the write tells that apart from another
    registration of the name: the password hash (salted) or the new
    device's token hash. Without either, the name counts as taken.
    """
    row = conn.execute(
        "SELECT password_hash, admin, created_ts FROM users WHERE user_id = ?",
        (account.user_id,),
    ).fetchone()
    if row is None or tuple(row) != (account.password_hash, int(account.admin), account.created_ts):
        return False
    if account.password_hash is not None:
        return True
    if device is None:
        return False
    token = conn.execute(
        "SELECT 1 FROM access_tokens WHERE token_hash = ? AND user_id = ?",
        (device.token_hash, account.user_id),
    ).fetchone()
    return token is not None


@registered_write
def _upgrade_guest(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    password_hash: str,
    device: NewDevice | None,
    session: RegistrationClaim | None = None,
) -> None:
    if session is not None:
        if _claimed_before(conn, session):
            # This very write run again: its first run did all of it.
            return
        _claim_session(conn, user_id, session)
    upgraded = conn.execute(
        "UPDATE users SET is_guest = 0, password_hash = ?"
        " WHERE user_id = ? AND is_guest = 1 AND deactivated = 0",
        (password_hash, user_id),
    ).rowcount
    if not upgraded:
        # This very write run again (a worker's, repeated after the main
        # process restarted) finds its own salted hash there: not a refusal.
        row = conn.execute(
            "SELECT password_hash FROM users WHERE user_id = ?", (user_id,)
        ).fetchone()
        if row is None or row[0] != password_hash:
            raise MatrixError(
                f"{user_id} is not a guest account", errcode="M_FORBIDDEN", http_status=403
            )
    if device is not None:
        _add_device(conn, device=device)


@registered_write
def _add_device(conn: sqlite3.Connection, *, device: NewDevice) -> None:
    try:
        conn.execute(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ts = excluded.last_seen_ts",
            (
                device.user_id,
                device.device_id,
                device.display_name,
                device.created_ts,
                device.created_ts,
            ),
        )
    except sqlite3.IntegrityError:
        # The foreign key to users.
        raise MatrixError(
            f"{device.user_id} has no account", errcode="M_FORBIDDEN", http_status=403
        ) from None
    conn.execute(
        "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?",
        (device.user_id, device.device_id),
    )
    conn.execute(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts)"
        " VALUES (?, ?, ?, ?, ?)",
        (device.token_hash, device.user_id, device.device_id, device.created_ts, device.expires_ts),
    )
    if device.refresh_token_hash is not None:
        conn.execute(
            "INSERT INTO refresh_tokens (token_hash, access_token_hash) VALUES (?, ?)",
            (device.refresh_token_hash, device.token_hash),
        )


@registered_write
def _create_device(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    display_name: str | None,
    created_ts: int,
) -> bool:
    try:
        return (
            conn.execute(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO NOTHING",
                (user_id, device_id, display_name, created_ts),
            ).rowcount
            == 1
        )
    except sqlite3.IntegrityError:
        # The foreign key to users.
        raise MatrixError(
            f"{user_id} has no account", errcode="M_FORBIDDEN", http_status=403
        ) from None


@registered_write
def _add_puppet_token(conn: sqlite3.Connection, *, token: NewPuppetToken) -> None:
    user = conn.execute(
        "SELECT deactivated FROM users WHERE user_id = ?", (token.user_id,)
    ).fetchone()
    if user is None:
        raise MatrixError(f"user {token.user_id} not found", errcode="M_NOT_FOUND", http_status=404)
    if user[0]:
        raise MatrixError(
            f"{token.user_id} is deactivated", errcode="M_INVALID_PARAM", http_status=400
        )
    admin = conn.execute(
        "SELECT 1 FROM users WHERE user_id = ? AND admin = 1 AND deactivated = 0",
        (token.admin_id,),
    ).fetchone()
    if admin is None:
        raise MatrixError("You are not a server admin", errcode="M_FORBIDDEN", http_status=403)
    # Tokens are made in order of time: one expired by this one's making is
    # of no more use to anyone.
    conn.execute("DELETE FROM puppet_tokens WHERE expires_ts <= ?", (token.created_ts,))
    conn.execute(
        "INSERT INTO puppet_tokens (token_hash, user_id, admin_id, created_ts, expires_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO NOTHING",
        (token.token_hash, token.user_id, token.admin_id, token.created_ts, token.expires_ts),
    )


@registered_write
def _delete_device_of_token(conn: sqlite3.Connection, *, token_hash: bytes) -> TokenOwner | None:
    row = conn.execute(
        "SELECT t.user_id, t.device_id, u.admin FROM access_tokens AS t"
        " JOIN users AS u ON u.user_id = t.user_id WHERE t.token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return _delete_puppet_token(conn, token_hash)
    user_id, device_id, admin = row
    conn.execute(
        "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    conn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
    delete_device_pushers(conn, user_id=user_id, device_ids=(device_id,))
    return TokenOwner(user_id, device_id, bool(admin))


def _delete_puppet_token(conn: sqlite3.Connection, token_hash: bytes) -> TokenOwner | None:
    row = conn.execute(
        "SELECT p.user_id, p.admin_id, u.admin FROM puppet_tokens AS p"
        " JOIN users AS u ON u.user_id = p.user_id WHERE p.token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    user_id, admin_id, admin = row
    conn.execute("DELETE FROM puppet_tokens WHERE token_hash = ?", (token_hash,))
    return TokenOwner(user_id, "", bool(admin), puppeted_by=admin_id)


@registered_write
def _delete_devices(conn: sqlite3.Connection, *, user_id: str) -> int:
    deleted = conn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,)).rowcount
    # Those the user acts as another with, not those acting as the user.
    deleted += conn.execute("DELETE FROM puppet_tokens WHERE admin_id = ?", (user_id,)).rowcount
    conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
    delete_device_pushers(conn, user_id=user_id)
    return deleted


@registered_write
def _delete_user_devices(
    conn: sqlite3.Connection, *, user_id: str, device_ids: tuple[str, ...]
) -> int:
    deleted = 0
    for device_id in device_ids:
        conn.execute(
            "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
        deleted += conn.execute(
            "DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).rowcount
    delete_device_pushers(conn, user_id=user_id, device_ids=device_ids)
    return deleted


@registered_write
def _set_password_hash(conn: sqlite3.Connection, *, user_id: str, password_hash: str) -> None:
    conn.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id))


def _user_exists(conn: sqlite3.Connection, *, user_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone()
    return row is not None


def _has_device(conn: sqlite3.Connection, *, user_id: str, device_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    ).fetchone()
    return row is not None


def _get_password_login(conn: sqlite3.Connection, *, user_id: str) -> PasswordLogin | None:
    row = conn.execute(
        "SELECT password_hash, admin, deactivated, locked FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    password_hash, admin, deactivated, locked = row
    return PasswordLogin(user_id, password_hash, bool(admin), bool(deactivated), bool(locked))


def _get_account_flags(conn: sqlite3.Connection, *, user_id: str) -> AccountFlags | None:
    row = conn.execute(
        "SELECT locked, suspended, shadow_banned, deactivated FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    return AccountFlags(bool(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))


def _get_token_owner(conn: sqlite3.Connection, *, token_hash: bytes) -> TokenOwner | None:
    row = conn.execute(
        "SELECT t.user_id, t.device_id, u.admin, t.expires_ts,"
        " EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.access_token_hash = t.token_hash"
        " AND r.previous_hash IS NOT NULL), u.locked, u.suspended, u.is_guest, u.shadow_banned"
        " FROM access_tokens AS t JOIN users AS u ON u.user_id = t.user_id"
        " WHERE t.token_hash = ? AND u.deactivated = 0",
        (token_hash,),
    ).fetchone()
    if row is None:
        return _get_puppet_token_owner(conn, token_hash)
    user_id, device_id, admin, expires_ts, replaces_older, locked, suspended, guest, banned = row
    return TokenOwner(
        user_id,
        device_id,
        bool(admin),
        expires_ts,
        bool(replaces_older),
        locked=bool(locked),
        suspended=bool(suspended),
        guest=bool(guest),
        shadow_banned=bool(banned),
    )


def _get_puppet_token_owner(conn: sqlite3.Connection, token_hash: bytes) -> TokenOwner | None:
    row = conn.execute(
        "SELECT p.user_id, p.admin_id, u.admin, p.expires_ts, u.locked, u.suspended,"
        " u.is_guest, u.shadow_banned FROM puppet_tokens AS p"
        " JOIN users AS u ON u.user_id = p.user_id"
        " JOIN users AS a ON a.user_id = p.admin_id"
        " WHERE p.token_hash = ? AND u.deactivated = 0 AND a.deactivated = 0 AND a.admin = 1",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    user_id, admin_id, admin, expires_ts, locked, suspended, guest, banned = row
    return TokenOwner(
        user_id,
        "",
        bool(admin),
        expires_ts,
        locked=bool(locked),
        suspended=bool(suspended),
        guest=bool(guest),
        shadow_banned=bool(banned),
        puppeted_by=admin_id,
    )


@registered_write
def _change_password(
    conn: sqlite3.Connection, *, user_id: str, password_hash: str, keep_only_device: str | None
) -> int:
    conn.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id))
    if keep_only_device is None:
        return 0
    conn.execute(
        "DELETE FROM access_tokens WHERE user_id = ? AND device_id != ?",
        (user_id, keep_only_device),
    )
    conn.execute("DELETE FROM puppet_tokens WHERE admin_id = ?", (user_id,))
    delete_device_pushers(conn, user_id=user_id, keep_device=keep_only_device)
    return conn.execute(
        "DELETE FROM devices WHERE user_id = ? AND device_id != ?", (user_id, keep_only_device)
    ).rowcount


@registered_write
def _deactivate_account(
    conn: sqlite3.Connection, *, user_id: str, erase: bool = False
) -> DeactivatedAccount | None:
    found = conn.execute("UPDATE users SET deactivated = 1 WHERE user_id = ?", (user_id,)).rowcount
    if not found:
        return None
    if erase:
        mark_erased(conn, user_id)
    conn.execute("DELETE FROM puppet_tokens WHERE user_id = ? OR admin_id = ?", (user_id, user_id))
    position, devices = remove_account_data(conn, user_id=user_id)
    return DeactivatedAccount(position, devices)


@registered_write
def _add_openid_token(
    conn: sqlite3.Connection, *, token_hash: bytes, user_id: str, expires_ts: int
) -> None:
    # Tokens are made in order of time: one expired by this one's making is
    # of no more use to anyone.
    conn.execute(
        "DELETE FROM openid_tokens WHERE expires_ts <= ? - ?",
        (expires_ts, OPENID_TOKEN_LIFETIME_MS),
    )
    conn.execute(
        "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)"
        " ON CONFLICT (token_hash) DO NOTHING",
        (token_hash, user_id, expires_ts),
    )


def _get_openid_token_owner(
    conn: sqlite3.Connection, *, token_hash: bytes, now_ts: int
) -> str | None:
    row = conn.execute(
        "SELECT o.user_id FROM openid_tokens AS o JOIN users AS u ON u.user_id = o.user_id"
        " WHERE o.token_hash = ? AND o.expires_ts > ? AND u.deactivated = 0",
        (token_hash, now_ts),
    ).fetchone()
    return None if row is None else str(row[0])


_LEAVABLE = ("join", "invite", "knock")


def _membership_of(json: bytes | str) -> object:
    content = msgspec.json.decode(json).get("content")
    return content.get("membership") if isinstance(content, dict) else None


def _rooms_to_leave(conn: sqlite3.Connection, *, user_id: str) -> list[str]:
    rooms: list[str] = []
    for room_id, json in conn.execute(
        "SELECT cs.room_id, e.json FROM current_state AS cs"
        " JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.type = 'm.room.member' AND cs.state_key = ?",
        (user_id,),
    ):
        if _membership_of(json) in _LEAVABLE:
            rooms.append(str(room_id))
    latest: dict[str, object] = {}
    for room_id, json in conn.execute(
        "SELECT e.room_id, e.json FROM rooms AS r JOIN events AS e ON e.room_id = r.room_id"
        " WHERE NOT EXISTS"
        " (SELECT 1 FROM current_state_groups AS c WHERE c.room_id = r.room_id)"
        " AND e.type = 'm.room.member' AND e.state_key = ? ORDER BY e.stream_ordering",
        (user_id,),
    ):
        latest[str(room_id)] = _membership_of(json)
    rooms.extend(room_id for room_id, membership in latest.items() if membership in _LEAVABLE)
    return rooms
