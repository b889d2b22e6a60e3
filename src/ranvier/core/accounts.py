"""Local accounts: registration, password login, access tokens and devices.

Every authenticated client request turns its access token into a
:class:`Requester`; the request handlers of the client API take that value and
nothing else about the caller.

Invariants
----------

* **Secrets are stored hashed.** Passwords as argon2id hashes, access tokens
  as their SHA-256: neither can be recovered from the database.
* **Hashing stays off the event loop.** argon2id takes tens of milliseconds
  of CPU and tens of MiB by design; it runs in worker threads (argon2
  releases the GIL), a few at a time.
* **A wrong password and an unknown user look alike.** Both are refused with
  the same error after the same work (an unknown user's attempt is checked
  against a hash of a random password), so a login cannot tell which names
  exist.
* **A logged-out device is gone.** Logging out deletes the device with its
  tokens; :attr:`Accounts.on_devices_logged_out` then forgets what else
  was kept for it (its encryption keys, its waiting to-device messages),
  as deleting the device through ``/devices`` does.
* **A token that was logged out is refused at once.** Token lookups are
  served from an in-process cache; logging out drops the entries it
  invalidates, and a lookup that was reading storage while a logout ran does
  not put its (now stale) answer in the cache.
* **An expired token is refused even from the cache.** Each cached token
  keeps its expiry, checked on every lookup; refresh tokens and expiry are
  :mod:`ranvier.core.refresh_tokens`'s.
* **An admin acting as a user is on record.** A puppet token
  (:meth:`Accounts.issue_puppet_token`) acts as its user with no device of
  theirs; every one issued is logged, with its admin and expiry. Whatever
  logs out the admin's tokens drops it from the cache, as its storage does
  (:mod:`ranvier.storage.accounts`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import argon2
import trio

from ranvier.core.guests import new_guest_localpart
from ranvier.core.refresh_tokens import (
    DEFAULT_ACCESS_TOKEN_LIFETIME_MS,
    Refreshed,
    RefreshTokenStore,
    TokenPair,
    expired_token_error,
    generate_refresh_token,
    unknown_refresh_token_error,
)
from ranvier.errors import MatrixError
from ranvier.storage.accounts import (
    OPENID_TOKEN_LIFETIME_MS,
    AccountFlags,
    DeactivatedAccount,
    NewAccount,
    NewDevice,
    NewPuppetToken,
    PasswordLogin,
    RegistrationClaim,
    TokenOwner,
    UserInUseError,
)

__all__ = [
    "ACCESS_TOKEN_PREFIX",
    "MAX_PASSWORD_LENGTH",
    "AccountFlags",
    "AccountStore",
    "Accounts",
    "Login",
    "NewAccount",
    "NewDevice",
    "Registration",
    "Requester",
    "UserInUseError",
    "hash_access_token",
    "locked_error",
]

#: Every access token starts with this, so that a leaked one is recognisable
#: (secret scanners, logs).
ACCESS_TOKEN_PREFIX: Final = "rvt_"

#: Longer passwords are refused: hashing them costs time, and nobody types one.
MAX_PASSWORD_LENGTH: Final = 512

_MAX_USER_ID_BYTES: Final = 255
_LOCALPART: Final = re.compile(r"[a-z0-9._=\-/+]+")
_DEVICE_ID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_GENERATED_LOCALPART_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_MAX_DEVICE_ID_LENGTH: Final = 255
_BAD_LOGIN: Final = "invalid username or password"

_log: Final = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Requester:
    """Who made a client request, as its access token says.

    ``token_hash`` is the SHA-256 of the access token the request carried, so
    that logging out can drop exactly that token without the token itself ever
    being kept.
    """

    user_id: str
    device_id: str
    is_admin: bool
    token_hash: bytes
    #: The application service whose ``as_token`` the request carried, if
    #: one's; ``device_id`` is then empty, a service having no device.
    app_service: str | None = None
    #: Whether the rate limits apply (not to a service that asked to be
    #: left unlimited, nor ever to a service's own sender).
    rate_limited: bool = True
    #: Whether an admin locked the account (refused but for logging out:
    #: :class:`ranvier.api.auth.Auth`) or suspended it (some actions refused:
    #: :mod:`ranvier.core.suspension`). Read with the token, so that no
    #: request pays a read more for them.
    locked: bool = False
    suspended: bool = False
    #: Whether the account is a guest's, allowed only part of the client
    #: API (:mod:`ranvier.api.guest_routes`); read with the token, as the
    #: flags above are.
    guest: bool = False
    #: Whether an admin shadow-banned the account: what it sends to others
    #: is answered as sent and dropped (:mod:`ranvier.core.shadow_bans`).
    #: Read with the token, as the flags above are.
    shadow_banned: bool = False
    #: The admin acting as the user through a puppet token
    #: (:meth:`Accounts.issue_puppet_token`); ``device_id`` is then empty,
    #: the token being no device of the user's.
    puppeted_by: str | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    """A new account, and its first login unless the login was inhibited."""

    user_id: str
    device_id: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    expires_in_ms: int | None = None


def _registered(user_id: str, issued: Login | None) -> Registration:
    """An account made or upgraded, with the login issued with it, if any."""
    if issued is None:
        return Registration(user_id)
    return Registration(
        user_id, issued.device_id, issued.access_token, issued.refresh_token, issued.expires_in_ms
    )


@dataclass(frozen=True, slots=True)
class Login:
    """A device logged in: the access token is its only copy."""

    user_id: str
    device_id: str
    access_token: str
    #: With a refresh token the access token expires in ``expires_in_ms``.
    refresh_token: str | None = None
    expires_in_ms: int | None = None


class AccountStore(Protocol):
    """What :class:`Accounts` needs from storage."""

    async def create_account(
        self, account: NewAccount, device: NewDevice | None = None
    ) -> None: ...

    async def add_device(self, device: NewDevice) -> None: ...

    async def upgrade_guest(
        self,
        user_id: str,
        password_hash: str,
        device: NewDevice | None,
        session: RegistrationClaim | None = None,
    ) -> None: ...

    async def create_device(
        self, user_id: str, device_id: str, display_name: str | None, created_ts: int
    ) -> bool: ...

    async def has_device(self, user_id: str, device_id: str) -> bool: ...

    async def add_puppet_token(self, token: NewPuppetToken) -> None: ...

    async def delete_device_of_token(self, token_hash: bytes) -> TokenOwner | None: ...

    async def delete_devices(self, user_id: str) -> int: ...

    async def delete_user_devices(self, user_id: str, device_ids: Collection[str]) -> int: ...

    async def set_password_hash(self, user_id: str, password_hash: str) -> None: ...

    async def change_password(
        self, user_id: str, password_hash: str, *, keep_only_device: str | None
    ) -> int: ...

    async def deactivate_account(
        self, user_id: str, *, erase: bool = False
    ) -> DeactivatedAccount | None: ...

    async def add_openid_token(self, token_hash: bytes, user_id: str, expires_ts: int) -> None: ...

    async def get_openid_token_owner(self, token_hash: bytes, now_ts: int) -> str | None: ...

    async def user_exists(self, user_id: str) -> bool: ...

    async def get_password_login(self, user_id: str) -> PasswordLogin | None: ...

    async def get_token_owner(self, token_hash: bytes) -> TokenOwner | None: ...

    async def get_account_flags(self, user_id: str) -> AccountFlags | None: ...


def hash_access_token(token: str) -> bytes:
    """The SHA-256 an access token is stored and looked up as.

    A fast hash is enough here, unlike for passwords: a token has 256 random
    bits, so there is nothing to guess.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()


def _invalid_username(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_USERNAME", http_status=400)


class Accounts:
    """Registers local users, logs their devices in and out, and says whose
    an access token is.

    ``password_hasher`` defaults to argon2-cffi's recommended argon2id
    parameters (RFC 9106's low-memory choice); tests pass cheaper ones.
    ``wall_clock_ms`` stamps creation times and tells when a token expires
    (:attr:`clock_ms`, which tests may replace). At most ``token_cache_size``
    tokens are remembered; the least recently used go first. Without
    ``refresh_store`` no refresh token is issued, whoever asks: access
    tokens then never expire.
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: AccountStore,
        password_hasher: argon2.PasswordHasher | None = None,
        wall_clock_ms: Callable[[], int] | None = None,
        token_cache_size: int = 10_000,
        hashing_threads: int = 2,
        refresh_store: RefreshTokenStore | None = None,
        access_token_lifetime_ms: int = DEFAULT_ACCESS_TOKEN_LIFETIME_MS,
    ) -> None:
        self.server_name = server_name
        self._store = store
        self._hasher = password_hasher if password_hasher is not None else argon2.PasswordHasher()
        self.clock_ms = wall_clock_ms if wall_clock_ms is not None else _wall_clock_ms
        self._refresh_store = refresh_store
        self._lifetime_ms = access_token_lifetime_ms
        # Each cached token with when it expires (None: never).
        self._cache: OrderedDict[bytes, tuple[Requester, int | None]] = OrderedDict()
        self._cache_size = token_cache_size
        # Bumped by every logout, so that a lookup that overlapped one does
        # not cache what it read before the logout committed.
        self._logouts = 0
        self._hashing = trio.CapacityLimiter(hashing_threads)
        self._decoy_hash: str | None = None
        #: Told after each write that invalidates tokens, so that other
        #: processes caching tokens (workers) can hear of it.
        self.on_tokens_invalidated: Callable[[], None] | None = None
        #: Told the user after ``logout`` and ``logout_all``, to forget
        #: what else was kept for the devices gone
        #: (:meth:`ranvier.core.e2e_keys.E2eKeys.devices_logged_out`).
        self.on_devices_logged_out: Callable[[str], Awaitable[None]] | None = None
        #: Told the user and device after a login that created the device,
        #: so that those sharing a room with the user, the user's own other
        #: devices and other servers hear the device list changed
        #: (:meth:`ranvier.core.e2e_keys.E2eKeys.device_added`).
        self.on_device_added: Callable[[str, str], Awaitable[None]] | None = None
        #: Told the user, the device-list position and the devices after a
        #: deactivation removed the devices with their keys in its own
        #: write, so that those sharing a room with the user hear of it
        #: (:meth:`ranvier.core.e2e_keys.E2eKeys.devices_removed`).
        self.on_devices_removed: Callable[[str, int, list[str]], Awaitable[None]] | None = None

    # User IDs.

    def user_id_for(self, localpart: str) -> str:
        """The user ID of ``localpart`` here, checked against the spec's
        grammar for new user IDs; raises ``M_INVALID_USERNAME``.
        """
        if not localpart:
            raise _invalid_username("the username is empty")
        if not _LOCALPART.fullmatch(localpart):
            raise _invalid_username(
                f"the username {localpart!r} may hold only a-z, 0-9 and . _ = - / +"
            )
        user_id = f"@{localpart}:{self.server_name}"
        if len(user_id.encode("utf-8")) > _MAX_USER_ID_BYTES:
            raise _invalid_username(
                f"the user ID {user_id} is longer than {_MAX_USER_ID_BYTES} bytes"
            )
        return user_id

    async def check_username_available(self, localpart: str) -> str:
        """The user ID ``localpart`` would have; raises ``M_INVALID_USERNAME``
        or ``M_USER_IN_USE``. Only advice: registering decides for real.
        """
        user_id = self.user_id_for(localpart)
        if await self._store.user_exists(user_id):
            raise UserInUseError(user_id)
        return user_id

    async def user_exists(self, user_id: str) -> bool:
        """Whether ``user_id`` has an account here (deactivated ones too)."""
        return await self._store.user_exists(user_id)

    async def account_flags(self, user_id: str) -> AccountFlags | None:
        """Whether ``user_id`` is locked, suspended or shadow-banned, read
        afresh (for an application service acting as the user); None if
        there is no account."""
        return await self._store.get_account_flags(user_id)

    async def has_device(self, user_id: str, device_id: str) -> bool:
        """Whether ``user_id`` has the device ``device_id`` (one an application
        service acts with: its ``device_id`` query parameter)."""
        return await self._store.has_device(user_id, device_id)

    async def create_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        """Create a device of ``user_id`` with no access token, for the
        application service that manages the user's devices itself (spec
        v1.17); False if the user has it already.
        """
        _check_device_id(device_id)
        return await self._store.create_device(user_id, device_id, display_name, self.clock_ms())

    # Registration and login.

    async def register(
        self,
        localpart: str | None,
        password: str | None,
        *,
        admin: bool = False,
        login: bool = True,
        device_id: str | None = None,
        device_display_name: str | None = None,
        create: Callable[[NewAccount, NewDevice | None], Awaitable[None]] | None = None,
        refresh: bool = False,
        display_name: str | None = None,
        guest: bool = False,
        session: RegistrationClaim | None = None,
    ) -> Registration:
        """Create an account; log a device in too unless ``login`` is False.

        ``localpart`` None picks a free one. ``password`` None makes an
        account that cannot log in with a password. Raises
        ``M_INVALID_USERNAME``, ``M_USER_IN_USE``, or ``M_WEAK_PASSWORD`` /
        ``M_INVALID_PARAM`` for a password that is empty or too long.
        ``create`` writes the account in place of the account store, when
        something else must be written with it in one write (a registration
        token's use completed:
        :meth:`ranvier.core.registration_tokens.RegistrationTokens.completing`).
        ``refresh`` asks for a refresh token with the access token.
        ``display_name`` starts the profile, in the account's own write.
        ``guest`` makes a guest account (:mod:`ranvier.core.guests`), whose
        generated localpart is all digits, which no other registration may take.
        ``session`` is the user-interactive authentication session the
        account is claimed by, in its own write (:mod:`ranvier.core.uia`);
        ``SessionRegisteredError`` when another request of it made one.
        """
        write = create if create is not None else self._store.create_account
        if localpart is not None:
            self.user_id_for(localpart)
        if device_id is not None:
            _check_device_id(device_id)
        password_hash = None if password is None else await self.hash_password(password)
        while True:
            if localpart is not None:
                user_id = self.user_id_for(localpart)
            else:
                user_id = self.user_id_for(
                    new_guest_localpart() if guest else _generate_localpart()
                )
            now = self.clock_ms()
            account = NewAccount(
                user_id,
                password_hash,
                admin=admin,
                created_ts=now,
                display_name=display_name,
                guest=guest,
                session=session,
            )
            device = issued = None
            if login:
                device, issued = self._issue(
                    user_id, device_id, device_display_name, refresh=refresh, now=now
                )
            try:
                await write(account, device)
            except UserInUseError:
                if localpart is not None:
                    raise
                continue  # A generated name that was taken: draw again.
            return _registered(user_id, issued)

    async def upgrade_guest(
        self,
        user_id: str,
        password: str,
        *,
        login: bool = True,
        device_id: str | None = None,
        device_display_name: str | None = None,
        refresh: bool = False,
        session: RegistrationClaim | None = None,
    ) -> Registration:
        """Make the guest ``user_id`` a full account with ``password``, and
        log a new device in unless ``login`` is False, in one write, which
        claims the registration ``session`` if given.

        The user ID, rooms, devices and tokens stay: the guest's token now
        acts for a full account (the spec says nothing of ending it, and
        Synapse keeps it). Raises ``M_FORBIDDEN`` for an account that is
        not a guest's (an upgrade already made, a deactivated guest), and
        :class:`~ranvier.storage.accounts.SessionRegisteredError` when the
        session made an account already.
        """
        if device_id is not None:
            _check_device_id(device_id)
        password_hash = await self.hash_password(password)
        device = issued = None
        if login:
            device, issued = self._issue(
                user_id, device_id, device_display_name, refresh=refresh, now=self.clock_ms()
            )
        with self._invalidating(lambda cached: cached.user_id == user_id):
            await self._store.upgrade_guest(user_id, password_hash, device, session)
        return _registered(user_id, issued)

    async def login_with_password(
        self,
        user: str | None,
        password: str,
        *,
        device_id: str | None = None,
        device_display_name: str | None = None,
        refresh: bool = False,
    ) -> Login:
        """Log a device in with a password. ``user`` is a local user ID or
        its localpart, in any case; None for nobody (an e-mail address on
        no account), refused as an unknown user is.

        A device ID already the user's gets a new token in place of its old
        one. Raises ``M_FORBIDDEN`` for an unknown user or a wrong password
        alike, ``M_USER_DEACTIVATED`` for a deactivated account's right
        password, and 401 ``M_USER_LOCKED`` for a locked one's: the spec has
        a locked account obtain no new access token until it is unlocked.
        """
        if device_id is not None:
            _check_device_id(device_id)
        _check_password_length(password)
        user_id = None if user is None else self._local_user_id(user)
        record = None if user_id is None else await self._store.get_password_login(user_id)
        stored_hash = None if record is None else record.password_hash
        if stored_hash is None:
            # The same work as a real check, so that timing does not tell.
            await self._verify(await self._decoy(), password)
            raise MatrixError(_BAD_LOGIN, errcode="M_FORBIDDEN", http_status=403)
        assert record is not None
        if not await self._verify(stored_hash, password):
            raise MatrixError(_BAD_LOGIN, errcode="M_FORBIDDEN", http_status=403)
        if record.deactivated:
            raise MatrixError(
                f"{record.user_id} has been deactivated",
                errcode="M_USER_DEACTIVATED",
                http_status=403,
            )
        # Only after the password: a guess must not learn of the lock.
        _check_unlocked(record)
        if self._hasher.check_needs_rehash(stored_hash):
            await self._store.set_password_hash(record.user_id, await self.hash_password(password))
        return await self._new_login(record.user_id, device_id, device_display_name, refresh)

    async def login_as(
        self,
        user_id: str,
        *,
        device_id: str | None = None,
        device_display_name: str | None = None,
        refresh: bool = False,
    ) -> Login:
        """Log a device of ``user_id`` in without a password: for an
        application service logging in one of its users, which the caller
        has checked. Raises ``M_FORBIDDEN`` for an unknown user,
        ``M_USER_DEACTIVATED`` for a deactivated one and ``M_USER_LOCKED``
        for a locked one.
        """
        if device_id is not None:
            _check_device_id(device_id)
        record = await self._store.get_password_login(user_id)
        if record is None:
            raise MatrixError(f"{user_id} has no account", errcode="M_FORBIDDEN", http_status=403)
        if record.deactivated:
            raise MatrixError(
                f"{user_id} has been deactivated", errcode="M_USER_DEACTIVATED", http_status=403
            )
        _check_unlocked(record)
        return await self._new_login(record.user_id, device_id, device_display_name, refresh)

    async def login_by(
        self,
        user_id: str,
        add: Callable[[NewDevice], Awaitable[None]],
        *,
        device_id: str | None = None,
        device_display_name: str | None = None,
        refresh: bool = False,
    ) -> Login:
        """Log a device of ``user_id`` in through ``add``, a write that adds
        the device together with something else (a login token spent:
        :class:`ranvier.core.login_tokens.LoginTokens`); the caller has
        checked the user. ``add`` raises to refuse the login.
        """
        if device_id is not None:
            _check_device_id(device_id)
        return await self._new_login(user_id, device_id, device_display_name, refresh, add=add)

    async def _new_login(
        self,
        user_id: str,
        device_id: str | None,
        device_display_name: str | None,
        refresh: bool,
        *,
        add: Callable[[NewDevice], Awaitable[None]] | None = None,
    ) -> Login:
        """A new access token for the device (a new device when none is named)."""
        device, issued = self._issue(
            user_id, device_id, device_display_name, refresh=refresh, now=self.clock_ms()
        )
        new = device_id is None or not await self._store.has_device(user_id, device_id)
        # Logging a device in again replaces its token: the old one goes
        # from the cache as from storage.
        with self._invalidating(
            lambda cached: (cached.user_id, cached.device_id) == (device.user_id, device.device_id)
        ):
            await (add if add is not None else self._store.add_device)(device)
        if new and self.on_device_added is not None:
            await self.on_device_added(user_id, device.device_id)
        return issued

    def _issue(
        self,
        user_id: str,
        device_id: str | None,
        device_display_name: str | None,
        *,
        refresh: bool,
        now: int,
    ) -> tuple[NewDevice, Login]:
        """A device to log in with a new access token (and a refresh token,
        when asked and offered), and what the client is told of them."""
        token = _generate_access_token()
        refresh_token = expires_in_ms = None
        if refresh and self._refresh_store is not None:
            refresh_token = generate_refresh_token()
            expires_in_ms = self._lifetime_ms
        device = NewDevice(
            user_id,
            device_id if device_id is not None else _generate_device_id(),
            device_display_name,
            hash_access_token(token),
            now,
            None if expires_in_ms is None else now + expires_in_ms,
            None if refresh_token is None else hash_access_token(refresh_token),
        )
        return device, Login(user_id, device.device_id, token, refresh_token, expires_in_ms)

    def local_user_id(self, user: str) -> str | None:
        """The local user ID a login names (a user ID or a localpart, in any
        case), or None if it cannot be one of ours.
        """
        return self._local_user_id(user)

    # Tokens.

    async def get_requester(self, access_token: str) -> Requester | None:
        """Who ``access_token`` belongs to, or None if nobody's (unknown,
        logged out, or the account deactivated).

        Raises 401 ``M_UNKNOWN_TOKEN`` with ``soft_logout`` for an expired
        token. The first use of a token that came from a refresh retires the
        pair the refresh spent.
        """
        token_hash = hash_access_token(access_token)
        cached = self._cache.get(token_hash)
        if cached is not None:
            self._cache.move_to_end(token_hash)
            requester, expires_ts = cached
            self._check_unexpired(expires_ts)
            return requester
        logouts = self._logouts
        owner = await self._store.get_token_owner(token_hash)
        if owner is None:
            return None
        self._check_unexpired(owner.expires_ts)
        requester = Requester(
            owner.user_id,
            owner.device_id,
            owner.admin,
            token_hash,
            locked=owner.locked,
            suspended=owner.suspended,
            guest=owner.guest,
            shadow_banned=owner.shadow_banned,
            puppeted_by=owner.puppeted_by,
        )
        if owner.replaces_older and self._refresh_store is not None:
            store = self._refresh_store
            with self._invalidating(
                lambda cached: (
                    (cached.user_id, cached.device_id) == (requester.user_id, requester.device_id)
                    and cached.token_hash != token_hash
                )
            ):
                await store.retire_older(token_hash)
            # Not cached this time: the write counts as a logout.
            return requester
        if logouts == self._logouts:
            self._cache[token_hash] = (requester, owner.expires_ts)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return requester

    def _check_unexpired(self, expires_ts: int | None) -> None:
        if expires_ts is not None and self.clock_ms() >= expires_ts:
            raise expired_token_error()

    async def refresh(self, refresh_token: str) -> Refreshed:
        """Exchange ``refresh_token`` for a new access token and refresh token
        of the same device. The older access token keeps working until the
        new pair is used; raises 401 ``M_UNKNOWN_TOKEN`` for a refresh token
        that is unknown, logged out, or retired by a newer pair's use, and
        ``M_USER_LOCKED`` while the account is locked.
        """
        if self._refresh_store is None:
            raise unknown_refresh_token_error()
        store = self._refresh_store
        access_token = _generate_access_token()
        new_refresh_token = generate_refresh_token()
        now = self.clock_ms()
        pair = TokenPair(
            hash_access_token(access_token),
            hash_access_token(new_refresh_token),
            now,
            now + self._lifetime_ms,
        )
        # The pair the spent token came from goes: its access token too.
        owners: list[tuple[str, str]] = []
        with self._invalidating(
            lambda cached: (
                (cached.user_id, cached.device_id) in owners
                and cached.token_hash != pair.access_token_hash
            )
        ):
            owner = await store.refresh(hash_access_token(refresh_token), pair)
            if owner is not None:
                owners.append((owner.user_id, owner.device_id))
        if owner is None:
            raise unknown_refresh_token_error()
        # Refused after the exchange, which leaves the spent pair working
        # and its unused successor to be replaced: the session survives the
        # lock, and the client is handed no new token.
        flags = await self._store.get_account_flags(owner.user_id)
        if flags is not None and flags.locked:
            raise locked_error()
        return Refreshed(access_token, new_refresh_token, self._lifetime_ms)

    async def issue_puppet_token(
        self, admin_id: str, user_id: str, *, expires_ts: int | None = None
    ) -> str:
        """A new access token with which the admin ``admin_id`` acts as
        ``user_id`` (Synapse's admin "login as a user"), until
        ``expires_ts`` if given.

        The token is no device of the user's: it is not listed among their
        devices and their own logouts leave it; it is logged out by itself,
        with the admin's tokens, by the user's deactivation, or by the
        admin's loss of admin rights. The caller has checked the admin and
        the user; storage checks both again in its write (404 for no
        account, 400 for a deactivated one, 403 for an admin no longer one).
        """
        token = _generate_access_token()
        now = self.clock_ms()
        await self._store.add_puppet_token(
            NewPuppetToken(hash_access_token(token), user_id, admin_id, now, expires_ts)
        )
        until = "with no expiry" if expires_ts is None else f"until {_iso_time(expires_ts)}"
        _log.info("admin %s was given an access token acting as %s, %s", admin_id, user_id, until)
        return token

    async def logout(self, requester: Requester) -> None:
        """Log out the device ``requester`` used: its tokens and the device
        go. A puppet token goes alone, having no device."""
        if requester.puppeted_by is not None:
            with self._invalidating(lambda cached: cached.token_hash == requester.token_hash):
                await self._store.delete_device_of_token(requester.token_hash)
            _log.info(
                "admin %s logged out an access token acting as %s",
                requester.puppeted_by,
                requester.user_id,
            )
            return
        with self._invalidating(
            lambda cached: (
                (cached.user_id, cached.device_id) == (requester.user_id, requester.device_id)
            )
        ):
            await self._store.delete_device_of_token(requester.token_hash)
        await self._devices_logged_out(requester.user_id)

    async def logout_all(self, user_id: str) -> None:
        """Log out every device of ``user_id``, and the puppet tokens they
        were given as an admin. Puppet tokens acting as ``user_id`` stay,
        as on Synapse: the admin's, not the user's, to end."""
        with self._invalidating(lambda cached: _owned_by(cached, user_id)):
            await self._store.delete_devices(user_id)
        await self._devices_logged_out(user_id)

    async def _devices_logged_out(self, user_id: str) -> None:
        if self.on_devices_logged_out is not None:
            await self.on_devices_logged_out(user_id)

    async def logout_devices(self, user_id: str, device_ids: Collection[str]) -> int:
        """Log out (delete) the named devices of ``user_id``; their tokens
        stop working at once. Returns how many of them existed.
        """
        wanted = frozenset(device_ids)
        with self._invalidating(
            lambda cached: cached.user_id == user_id and cached.device_id in wanted
        ):
            return await self._store.delete_user_devices(user_id, wanted)

    async def has_password(self, user_id: str) -> bool:
        """Whether ``user_id`` can log in with a password: one was set and
        the account is not deactivated (a user made by single sign-on has
        none)."""
        record = await self._store.get_password_login(user_id)
        return record is not None and record.password_hash is not None and not record.deactivated

    async def check_password(self, user_id: str, password: str) -> bool:
        """Whether ``password`` is the password of the local ``user_id``
        (for re-authenticating a sensitive request). An account without a
        password, or a deactivated one, has no right password.
        """
        _check_password_length(password)
        record = await self._store.get_password_login(user_id)
        if record is None or record.password_hash is None or record.deactivated:
            await self._verify(await self._decoy(), password)
            return False
        return await self._verify(record.password_hash, password)

    # Changing the password, deactivating.

    async def change_password(
        self, requester: Requester, new_password: str, *, logout_devices: bool
    ) -> None:
        """Give the requester a new password (hashed as registration hashes
        it). With ``logout_devices`` every other device of theirs is logged
        out in the same write, as ``logout`` would, with the puppet tokens
        they were given as an admin; the requesting device stays. Raises
        ``M_WEAK_PASSWORD`` / ``M_INVALID_PARAM`` as :meth:`hash_password`
        does.
        """
        password_hash = await self.hash_password(new_password)
        user_id, kept = requester.user_id, requester.device_id
        keep_only = kept if logout_devices else None
        with self._invalidating(
            lambda cached: (
                logout_devices
                and (
                    (cached.user_id == user_id and cached.device_id != kept)
                    or cached.puppeted_by == user_id
                )
            )
        ):
            gone = await self._store.change_password(
                user_id, password_hash, keep_only_device=keep_only
            )
        if gone:
            await self._devices_logged_out(user_id)

    async def reset_password(
        self,
        new_password: str,
        write: Callable[[str], Awaitable[tuple[str, int]]],
        *,
        logout_devices: bool,
    ) -> str:
        """Set a password without the old one: ``write`` is given the new
        hash and sets it, for the account it finds (a validated e-mail
        session's: :mod:`ranvier.core.threepids`), logging out every device
        of it with ``logout_devices``; it answers whose account and how many
        devices went, or raises to refuse. The tokens go from the cache as
        :meth:`change_password`'s do. Returns the user ID.
        """
        password_hash = await self.hash_password(new_password)
        users: list[str] = []
        gone = 0
        with self._invalidating(
            lambda cached: logout_devices and any(_owned_by(cached, user) for user in users)
        ):
            user_id, gone = await write(password_hash)
            users.append(user_id)
        if gone:
            await self._devices_logged_out(user_id)
        return user_id

    async def deactivate(self, user_id: str, *, erase: bool = False) -> None:
        """Mark ``user_id`` deactivated: every device logged out, no login
        or token of theirs accepted again, the user ID never handed out
        again (the account's row stays); with ``erase``, marked erased in
        the same write (:mod:`ranvier.storage.erasure`), which removes the
        devices' keys, the account data, key backups and the rest
        :mod:`ranvier.storage.deactivation` lists. What else deactivation
        undoes (rooms, profile) is
        :class:`ranvier.core.deactivation.Deactivation`'s.
        """
        with self._invalidating(lambda cached: _owned_by(cached, user_id)):
            deactivated = await self._store.deactivate_account(user_id, erase=erase)
        if deactivated is None or deactivated.device_list_position is None:
            return
        if self.on_devices_removed is not None:
            await self.on_devices_removed(
                user_id, deactivated.device_list_position, deactivated.devices
            )

    # OpenID.

    async def issue_openid_token(self, user_id: str) -> tuple[str, int]:
        """A new OpenID token for ``user_id`` and how many seconds it lasts:
        other servers (a widget's) exchange it for the user ID through
        :meth:`openid_user`, and for nothing else.
        """
        token = secrets.token_urlsafe(32)
        expires_ts = self.clock_ms() + OPENID_TOKEN_LIFETIME_MS
        await self._store.add_openid_token(hash_access_token(token), user_id, expires_ts)
        return token, OPENID_TOKEN_LIFETIME_MS // 1000

    async def openid_user(self, token: str) -> str | None:
        """Whose unexpired OpenID token ``token`` is, or None."""
        return await self._store.get_openid_token_owner(hash_access_token(token), self.clock_ms())

    # Passwords.

    async def hash_password(self, password: str) -> str:
        """The argon2id hash of ``password``, made in a worker thread."""
        _check_password_length(password)
        if not password:
            raise MatrixError("the password is empty", errcode="M_WEAK_PASSWORD", http_status=400)
        return await trio.to_thread.run_sync(self._hasher.hash, password, limiter=self._hashing)

    async def _verify(self, password_hash: str, password: str) -> bool:
        return await trio.to_thread.run_sync(
            _verify, self._hasher, password_hash, password, limiter=self._hashing
        )

    async def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = await trio.to_thread.run_sync(
                self._hasher.hash, secrets.token_urlsafe(16), limiter=self._hashing
            )
        return self._decoy_hash

    def _local_user_id(self, user: str) -> str | None:
        """The user ID a login names, or None if it cannot be a local user."""
        if user.startswith("@"):
            localpart, _, server = user[1:].partition(":")
            if server != self.server_name:
                return None
        else:
            localpart = user
        # User IDs are made lower case; people type them as they like.
        localpart = localpart.lower()
        try:
            return self.user_id_for(localpart)
        except MatrixError:
            return None

    def forget_tokens_of(self, user_id: str) -> None:
        """Drop the cached tokens of ``user_id`` after a write that changed
        what a lookup answers for them (the admin flag), here and, through
        :attr:`on_tokens_invalidated`, in the processes told; the puppet
        tokens they were given as an admin too, which taking the flag away
        ends."""
        with self._invalidating(lambda cached: _owned_by(cached, user_id)):
            pass

    def forget_cached_tokens(self) -> None:
        """Drop every cached token: another process may have logged some out."""
        self._logouts += 1
        self._cache.clear()

    @contextlib.contextmanager
    def _invalidating(self, matches: Callable[[Requester], bool]) -> Iterator[None]:
        """Around a write that invalidates tokens: drop the cached tokens that
        ``matches`` selects once the write is done (or abandoned), and keep
        every lookup that overlapped it from caching what it read.
        """
        try:
            yield
        finally:
            self._logouts += 1
            for token_hash in [key for key, value in self._cache.items() if matches(value[0])]:
                del self._cache[token_hash]
            if self.on_tokens_invalidated is not None:
                self.on_tokens_invalidated()


def _owned_by(cached: Requester, user_id: str) -> bool:
    """Whether a token is one ``user_id`` holds: their own, or a puppet
    token they were given as an admin."""
    return cached.user_id == user_id or cached.puppeted_by == user_id


def _iso_time(ts_ms: int) -> str:
    """``ts_ms`` as a UTC date and time, for the log."""
    try:
        moment = datetime.datetime.fromtimestamp(ts_ms / 1000, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{ts_ms} ms after the epoch"
    return moment.isoformat(timespec="seconds")


def _verify(hasher: argon2.PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        # A stored hash that is not argon2's: no password matches it.
        return False


def locked_error() -> MatrixError:
    """401 ``M_USER_LOCKED`` with ``soft_logout``: the client keeps its
    session, which works again once the account is unlocked."""
    return MatrixError(
        "this account has been locked by the server's administrators",
        errcode="M_USER_LOCKED",
        http_status=401,
        soft_logout=True,
    )


def _check_unlocked(record: PasswordLogin) -> None:
    if record.locked:
        raise locked_error()


def _check_password_length(password: str) -> None:
    if len(password) > MAX_PASSWORD_LENGTH:
        raise MatrixError(
            f"the password is longer than {MAX_PASSWORD_LENGTH} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def _check_device_id(device_id: str) -> None:
    if not device_id or len(device_id) > _MAX_DEVICE_ID_LENGTH:
        raise MatrixError(
            f"a device ID must be 1 to {_MAX_DEVICE_ID_LENGTH} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def _generate_access_token() -> str:
    return ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)


def _generate_device_id() -> str:
    return "".join(secrets.choice(_DEVICE_ID_ALPHABET) for _ in range(10))


def _generate_localpart() -> str:
    return "".join(secrets.choice(_GENERATED_LOCALPART_ALPHABET) for _ in range(12))


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
