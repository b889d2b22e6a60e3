"""Shared-secret registration at ``/_synapse/admin/v1/register``.

Synapse's way of making accounts without open registration, kept in the
same shape so that its ``register_new_matrix_user`` script and the tools
built on the endpoint work here too: ``GET`` hands out a nonce; ``POST``
sends the nonce, the username, the password, the admin flag and an
HMAC-SHA1, keyed with the shared secret, of ``nonce NUL username NUL
password NUL (admin|notadmin)``. Whoever knows the secret can make any
account, admins included, so the endpoint does not exist (404) unless a
secret is configured.

Each nonce is good for one attempt, right or wrong, within a minute of being
handed out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import trio

from ranvier.api.account import json_object, optional_bool, optional_str
from ranvier.core.accounts import MAX_PASSWORD_LENGTH, Accounts
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import Request, Router

__all__ = [
    "NONCE_LIFETIME_SECONDS",
    "REGISTER_PATH",
    "SharedSecretRegistration",
    "add_admin_routes",
]

REGISTER_PATH: Final = "/_synapse/admin/v1/register"

#: How long a nonce may be used after it is handed out.
NONCE_LIFETIME_SECONDS: Final = 60.0

# Nonces are handed out to anyone who asks; past this many outstanding, the
# oldest are dropped, so asking does not fill memory.
_MAX_NONCES: Final = 10_000
_MAX_USERNAME_LENGTH: Final = 512


def _bad_request(message: str, errcode: str = "M_UNKNOWN") -> MatrixError:
    return MatrixError(message, errcode=errcode, http_status=400)


class SharedSecretRegistration:
    """Nonces and MAC checks for shared-secret registration.

    Times come from Trio's clock, so tests run on a mock clock.
    """

    def __init__(self, accounts: Accounts, shared_secret: str) -> None:
        if not shared_secret:
            raise ValueError("the shared secret must not be empty")
        self._accounts = accounts
        self._key = shared_secret.encode("utf-8")
        # Nonce -> when it expires, oldest first.
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def new_nonce(self) -> str:
        self._drop_expired()
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = trio.current_time() + NONCE_LIFETIME_SECONDS
        while len(self._nonces) > _MAX_NONCES:
            self._nonces.popitem(last=False)
        return nonce

    def _drop_expired(self) -> None:
        now = trio.current_time()
        while self._nonces:
            nonce, expires = next(iter(self._nonces.items()))
            if expires > now:
                return
            del self._nonces[nonce]

    def mac(self, nonce: str, username: str, password: str, *, admin: bool) -> str:
        """The hex HMAC-SHA1 a request must carry."""
        message = b"\x00".join(
            [
                nonce.encode("utf-8"),
                username.encode("utf-8"),
                password.encode("utf-8"),
                b"admin" if admin else b"notadmin",
            ]
        )
        return hmac.new(self._key, message, hashlib.sha1).hexdigest()

    async def register(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Check a ``POST`` body and make the account it asks for."""
        self._drop_expired()
        nonce = body.get("nonce")
        if nonce is None:
            raise _bad_request("'nonce' is required", "M_BAD_JSON")
        if not isinstance(nonce, str) or self._nonces.pop(nonce, None) is None:
            # Popped: a nonce is spent by any attempt, good or bad.
            raise _bad_request("unrecognised nonce")
        username = optional_str(body, "username")
        if username is None:
            raise BadJsonError("'username' is required")
        if len(username) > _MAX_USERNAME_LENGTH or "\x00" in username:
            raise _bad_request("invalid username")
        password = optional_str(body, "password")
        if password is None:
            raise BadJsonError("'password' is required")
        if len(password) > MAX_PASSWORD_LENGTH or "\x00" in password:
            raise _bad_request("invalid password")
        admin = optional_bool(body, "admin")
        if body.get("user_type") is not None:
            raise _bad_request("invalid user type: this server has none")
        optional_str(body, "displayname")
        mac = optional_str(body, "mac")
        if mac is None:
            raise BadJsonError("'mac' is required")
        expected = self.mac(nonce, username, password, admin=admin)
        if not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8")):
            raise MatrixError("HMAC incorrect", errcode="M_FORBIDDEN", http_status=403)
        registration = await self._accounts.register(username.lower(), password, admin=admin)
        return {
            "user_id": registration.user_id,
            "home_server": self._accounts.server_name,
            "access_token": registration.access_token,
            "device_id": registration.device_id,
        }


def add_admin_routes(router: Router, *, accounts: Accounts, shared_secret: str | None) -> None:
    """Serve shared-secret registration if ``shared_secret`` is set; without
    one the path is unknown (404 ``M_UNRECOGNIZED``), as on a server that
    never had it.
    """
    if shared_secret is None:
        return
    registration = SharedSecretRegistration(accounts, shared_secret)

    async def get_nonce(request: Request) -> Mapping[str, Any]:
        return {"nonce": registration.new_nonce()}

    async def post_register(request: Request) -> Mapping[str, Any]:
        return await registration.register(json_object(request))

    router.add("GET", REGISTER_PATH, get_nonce)
    router.add("POST", REGISTER_PATH, post_register)
