"""``GET /_matrix/federation/v1/openid/userinfo``: another party (a widget's
server, an integration manager) hands back an OpenID token one of our users
gave it, and learns whose it is.

The route is not signed with X-Matrix: whoever holds the token may ask, and
the token, short-lived and good for nothing else, is the whole proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["USERINFO_PATH", "add_openid_route"]

USERINFO_PATH: Final = "/_matrix/federation/v1/openid/userinfo"


class OpenIdTokens(Protocol):
    """:class:`ranvier.core.accounts.Accounts`."""

    async def openid_user(self, token: str) -> str | None: ...


def add_openid_route(router: Router, tokens: OpenIdTokens) -> None:
    """Serve the userinfo endpoint: ``{"sub": user_id}`` for a live token."""

    async def userinfo(request: Request) -> Mapping[str, Any]:
        token = request.query_value("access_token")
        if not token:
            raise MatrixError(
                "the query parameter 'access_token' is required",
                errcode="M_MISSING_TOKEN",
                http_status=401,
            )
        user_id = await tokens.openid_user(token)
        if user_id is None:
            raise MatrixError(
                "the token is not known or has expired",
                errcode="M_UNKNOWN_TOKEN",
                http_status=401,
            )
        return {"sub": user_id}

    router.add("GET", USERINFO_PATH, userinfo, authenticated=False)
