"""``POST /_matrix/client/v1/login/get_token``: a login token for another
device of the requesting user (:mod:`ranvier.core.login_tokens`), served
only where ``[registration] login_token_enabled`` is set.

Each request asks the user to prove who they are again through
user-interactive authentication (:mod:`ranvier.core.uia`): a request
without ``auth`` is answered 401 with the flows, a wrong password 401 with
``M_FORBIDDEN``, as the other guarded endpoints answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.api.account import json_object
from ranvier.api.auth import Auth
from ranvier.core.uia import LOGIN_TOKEN, AuthRequired, UserInteractiveAuth
from ranvier.web import JsonResponse, Request, Router

__all__ = ["GET_LOGIN_TOKEN_PATH", "add_login_token_route"]

GET_LOGIN_TOKEN_PATH: Final = "/_matrix/client/v1/login/get_token"


class LoginTokenIssuer(Protocol):
    """:class:`ranvier.core.login_tokens.LoginTokens`."""

    lifetime_ms: int

    async def issue(self, user_id: str) -> str: ...


def add_login_token_route(
    router: Router, *, auth: Auth, uia: UserInteractiveAuth, tokens: LoginTokenIssuer
) -> None:
    """Serve ``/login/get_token``."""

    async def get_token(request: Request) -> JsonResponse | Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        try:
            ticket = await uia.check(
                requester.user_id, requester.token_hash, LOGIN_TOKEN, body.get("auth"), request={}
            )
        except AuthRequired as required:
            return JsonResponse(required.body, status=401)
        # A session's answer is kept for its retry, but a login token is a
        # secret kept only as its hash: the retry of a finished session is
        # given a token of its own, as good as the lost one, which expires
        # unused.
        token = await tokens.issue(requester.user_id)
        if ticket.answer is None:
            await ticket.done({})
        return {"login_token": token, "expires_in_ms": tokens.lifetime_ms}

    router.add("POST", GET_LOGIN_TOKEN_PATH, get_token)
