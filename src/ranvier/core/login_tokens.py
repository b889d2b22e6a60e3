"""Login tokens (``m.login.token``): a logged-in user makes a short-lived,
single-use token (``POST /_matrix/client/v1/login/get_token``) with which
another device logs in as them, without the password.

Invariants
----------

* **Only with the password, every time.** Making a token goes through
  user-interactive authentication with the password on each request, as the
  spec asks: a token is a new login, and consent is asked for each.
* **A token logs in once, before it expires.** It is spent in the write
  that logs the device in (:mod:`ranvier.storage.login_tokens`); a second
  login with it, or one after its lifetime, is 403 ``M_FORBIDDEN``, as the
  spec answers a token that is not valid.
* **Stored hashed**, as access tokens are: 256 random bits, kept as their
  SHA-256.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Final, Protocol

from ranvier.core.accounts import Accounts, Login, hash_access_token
from ranvier.errors import MatrixError
from ranvier.storage.accounts import NewDevice

__all__ = [
    "DEFAULT_LOGIN_TOKEN_LIFETIME_MS",
    "LOGIN_TOKEN_PREFIX",
    "LoginTokenStore",
    "LoginTokens",
]

#: Every login token starts with this, so that a leaked one is recognisable.
LOGIN_TOKEN_PREFIX: Final = "rvl_"

#: The two minutes the spec recommends.
DEFAULT_LOGIN_TOKEN_LIFETIME_MS: Final = 120_000


class LoginTokenStore(Protocol):
    """What login tokens need from storage
    (:class:`ranvier.storage.login_tokens.LoginTokenStorage`)."""

    async def add_login_token(
        self, token_hash: bytes, user_id: str, expires_ts: int, now_ts: int
    ) -> None: ...

    async def login_token_user(self, token_hash: bytes, now_ts: int) -> str | None: ...

    async def log_in_with_token(
        self, token_hash: bytes, now_ts: int, device: NewDevice
    ) -> bool: ...


def _invalid_token() -> MatrixError:
    return MatrixError(
        "the login token is not valid: unknown, already used, or expired",
        errcode="M_FORBIDDEN",
        http_status=403,
    )


class LoginTokens:
    """Makes login tokens and logs devices in with them.

    ``clock_ms`` (the wall clock in milliseconds) may be replaced by tests.
    """

    def __init__(
        self,
        store: LoginTokenStore,
        accounts: Accounts,
        *,
        lifetime_ms: int = DEFAULT_LOGIN_TOKEN_LIFETIME_MS,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self.lifetime_ms = lifetime_ms
        self.clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000

    async def issue(self, user_id: str) -> str:
        """A new login token for ``user_id``, lasting :attr:`lifetime_ms`.
        The caller has checked the user's password."""
        token = LOGIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock_ms()
        await self._store.add_login_token(
            hash_access_token(token), user_id, now + self.lifetime_ms, now
        )
        return token

    async def log_in(
        self,
        token: str,
        *,
        device_id: str | None = None,
        device_display_name: str | None = None,
        refresh: bool = False,
    ) -> Login:
        """Log a device in as the user ``token`` was made for, spending it.
        Raises 403 ``M_FORBIDDEN`` for a token unknown, used or expired.
        """
        token_hash = hash_access_token(token)
        now = self.clock_ms()
        user_id = await self._store.login_token_user(token_hash, now)
        if user_id is None:
            raise _invalid_token()

        async def add(device: NewDevice) -> None:
            if not await self._store.log_in_with_token(token_hash, now, device):
                raise _invalid_token()

        return await self._accounts.login_by(
            user_id,
            add,
            device_id=device_id,
            device_display_name=device_display_name,
            refresh=refresh,
        )
