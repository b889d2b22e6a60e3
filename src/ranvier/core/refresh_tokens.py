"""Refresh tokens and access tokens that expire (spec: "Refreshing access
tokens").

A client that says it supports refresh tokens (``refresh_token: true`` on
``/login`` or ``/register``) gets an access token that lasts
``access_token_lifetime_ms`` and a refresh token; other clients get access
tokens that never expire, as before. ``/refresh`` exchanges a refresh token
for a new pair of the same device (:meth:`ranvier.core.accounts.Accounts.refresh`).

Invariants
----------

* **An expired token is a soft logout.** It is answered 401
  ``M_UNKNOWN_TOKEN`` with ``soft_logout: true``: the device and what the
  client keeps for it are still good, a refresh or a login with the same
  device ID carries on.
* **The older pair lasts until the newer is used**, as the spec asks, so a
  client that lost the answer to a refresh can refresh again; after that the
  older refresh token is refused, 401 ``M_UNKNOWN_TOKEN``.
* **Tokens are stored hashed**, as access tokens are
  (:func:`ranvier.core.accounts.hash_access_token`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.accounts import TokenOwner
from ranvier.storage.refresh_tokens import TokenPair

__all__ = [
    "DEFAULT_ACCESS_TOKEN_LIFETIME_MS",
    "REFRESH_TOKEN_PREFIX",
    "RefreshTokenStore",
    "Refreshed",
    "TokenPair",
    "expired_token_error",
    "generate_refresh_token",
    "unknown_refresh_token_error",
]

#: Every refresh token starts with this, so that a leaked one is recognisable.
REFRESH_TOKEN_PREFIX: Final = "rvr_"

#: How long an access token issued with a refresh token lasts by default.
DEFAULT_ACCESS_TOKEN_LIFETIME_MS: Final = 5 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Refreshed:
    """The answer to a refresh: the new tokens are their only copies."""

    access_token: str
    refresh_token: str
    expires_in_ms: int


class RefreshTokenStore(Protocol):
    """What refreshing needs from storage
    (:class:`ranvier.storage.refresh_tokens.RefreshTokenStorage`)."""

    async def refresh(self, refresh_token_hash: bytes, pair: TokenPair) -> TokenOwner | None: ...

    async def retire_older(self, access_token_hash: bytes) -> None: ...


def generate_refresh_token() -> str:
    """A new refresh token: 256 random bits, as an access token has."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def expired_token_error() -> MatrixError:
    """The answer to a request with an expired access token."""
    return MatrixError(
        "the access token has expired: refresh it, or log in again with the same device",
        errcode="M_UNKNOWN_TOKEN",
        http_status=401,
        soft_logout=True,
    )


def unknown_refresh_token_error() -> MatrixError:
    """The answer to an unknown refresh token, or one retired by a newer pair's use."""
    return MatrixError(
        "the refresh token is not known: it was logged out, or replaced by a newer one"
        " that has been used",
        errcode="M_UNKNOWN_TOKEN",
        http_status=401,
        soft_logout=False,
    )
