"""``POST /_matrix/client/v1/login/get_token``: a login token for another
device of the requesting user (:mod:`ranvier.core.login_tokens`), served
only where ``[registration] login_token_enabled`` is set.

Each request asks for the password through user-interactive
authentication: a request without ``auth`` is answered 401 with the flows,
a wrong password 401 with ``M_FORBIDDEN``, as the other password-guarded
endpoints answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.api.account import json_object
from ranvier.api.auth import Auth
from ranvier.core.devices import AuthRequired
from ranvier.web import JsonResponse, Request, Router

__all__ = ["GET_LOGIN_TOKEN_PATH", "add_login_token_route"]

GET_LOGIN_TOKEN_PATH: Final = "/_matrix/client/v1/login/get_token"


class PasswordCheck(Protocol):
    """User-interactive authentication with the password
    (:class:`ranvier.core.devices.Devices`)."""

    async def authenticate(self, user_id: str, auth: object) -> None: ...


class LoginTokenIssuer(Protocol):
    """:class:`ranvier.core.login_tokens.LoginTokens`."""

    lifetime_ms: int

    async def issue(self, user_id: str) -> str: ...


def add_login_token_route(
    router: Router, *, auth: Auth, uia: PasswordCheck, tokens: LoginTokenIssuer
) -> None:
    """Serve ``/login/get_token``."""

    async def get_token(request: Request) -> JsonResponse | Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        try:
            await uia.authenticate(requester.user_id, body.get("auth"))
        except AuthRequired as required:
            return JsonResponse(required.body, status=401)
        token = await tokens.issue(requester.user_id)
        return {"login_token": token, "expires_in_ms": tokens.lifetime_ms}

    router.add("POST", GET_LOGIN_TOKEN_PATH, get_token)
