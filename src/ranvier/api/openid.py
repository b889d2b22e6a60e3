"""``POST /user/{userId}/openid/request_token``: a token that proves to a
third party (a widget, an integration manager) who the user is, which that
party checks with this server's federation endpoint
(:mod:`ranvier.federation.openid`). It lasts an hour and opens nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_openid_routes"]


class OpenIdIssuer(Protocol):
    """:class:`ranvier.core.accounts.Accounts`."""

    server_name: str

    async def issue_openid_token(self, user_id: str) -> tuple[str, int]: ...


def add_openid_routes(router: Router, *, auth: Auth, issuer: OpenIdIssuer) -> None:
    """Serve ``/user/{userId}/openid/request_token`` for the user themselves."""

    async def request_token(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        json_object(request)
        user_id = request.path_params["user_id"]
        if user_id != requester.user_id:
            raise MatrixError(
                f"{requester.user_id} may not ask for tokens of {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        token, expires_in = await issuer.issue_openid_token(user_id)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": issuer.server_name,
            "expires_in": expires_in,
        }

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/user/{{user_id}}/openid/request_token", request_token)
