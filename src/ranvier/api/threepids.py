"""Third-party identifiers (e-mail addresses, phone numbers): none are kept.

The server sends no e-mail and no text messages, so it can neither check
that a user owns an address nor reset a password through one, and
``/capabilities`` says ``m.3pid_changes`` is off. Clients still ask:
``GET /account/3pid`` lists no identifiers, and every ``requestToken``
endpoint (registration, adding an identifier, password reset) is refused
with the spec's 403 ``M_THREEPID_DENIED``, so a client can say why rather
than meet an unknown endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_threepid_routes"]

#: Where a client asks the server to send a validation token.
_REQUEST_TOKEN_PATHS = tuple(
    f"/{base}/{medium}/requestToken"
    for base in ("register", "account/3pid", "account/password")
    for medium in ("email", "msisdn")
)


def add_threepid_routes(router: Router, *, auth: Auth) -> None:
    """Serve ``GET /account/3pid`` and refuse the ``requestToken`` endpoints."""

    async def threepids(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {"threepids": []}

    async def request_token(request: Request) -> Mapping[str, Any]:
        raise MatrixError(
            "this server does not use e-mail addresses or phone numbers",
            errcode="M_THREEPID_DENIED",
            http_status=403,
        )

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/account/3pid", threepids)
        for path in _REQUEST_TOKEN_PATHS:
            router.add("POST", prefix + path, request_token)
