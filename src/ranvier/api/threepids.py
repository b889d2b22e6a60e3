"""Third-party identifiers (e-mail addresses, phone numbers): none are kept.

The server sends no e-mail and no text messages, so it can neither check
that a user owns an address nor reset a password through one, and
``/capabilities`` says ``m.3pid_changes`` is off. Clients still ask:
``GET /account/3pid`` lists no identifiers, and every ``requestToken``
endpoint is refused, so a client can say why rather than meet an unknown
endpoint: adding an identifier with 400 ``M_THREEPID_MEDIUM_NOT_SUPPORTED``
(the code spec v1.13 gives a server that takes no addresses of the
medium), registration and password reset with 403 ``M_THREEPID_DENIED``
(the only refusal their definitions name). So are adding an identifier (no validation
session can exist) and binding one at an identity server (the server talks
to none). Deleting or unbinding one leaves the account as it is, without
it, and answers ``no-support``: the spec's answer when the server cannot
tell an identity server to forget it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.account import json_object, optional_str
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.errors import MatrixError
from ranvier.web import Handler, Request, Router

__all__ = ["add_threepid_routes"]

#: Where a client asks the server to send a validation token, other than
#: to add an identifier to its account.
_REQUEST_TOKEN_PATHS = tuple(
    f"/{base}/{medium}/requestToken"
    for base in ("register", "account/password")
    for medium in ("email", "msisdn")
)
#: The names the adding endpoints' refusals give each medium.
_MEDIUM_NAMES: Final = {"email": "e-mail addresses", "msisdn": "phone numbers"}


_MEDIA = ("email", "msisdn")


def _check_identifier(body: Mapping[str, Any]) -> None:
    """A delete or unbind request's identifier: a known medium, an address."""
    for key in ("medium", "address"):
        if body.get(key) is None:
            raise MatrixError(f"'{key}' is required", errcode="M_MISSING_PARAM", http_status=400)
        optional_str(body, key)
    if body["medium"] not in _MEDIA:
        raise MatrixError(
            f"'medium' must be one of {', '.join(_MEDIA)}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    optional_str(body, "id_server")


def add_threepid_routes(router: Router, *, auth: Auth) -> None:
    """Serve ``GET /account/3pid``, refuse the ``requestToken``, ``add`` and
    ``bind`` endpoints, and answer ``delete`` and ``unbind``."""

    async def threepids(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {"threepids": []}

    async def request_token(request: Request) -> Mapping[str, Any]:
        raise MatrixError(
            "this server does not use e-mail addresses or phone numbers",
            errcode="M_THREEPID_DENIED",
            http_status=403,
        )

    def refuse_medium(medium: str) -> Handler:
        async def request_add_token(request: Request) -> Mapping[str, Any]:
            raise MatrixError(
                f"this server does not add {_MEDIUM_NAMES[medium]} to accounts",
                errcode="M_THREEPID_MEDIUM_NOT_SUPPORTED",
                http_status=400,
            )

        return request_add_token

    async def refuse_identifier(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        raise MatrixError(
            "this server keeps no e-mail addresses or phone numbers and uses no identity server",
            errcode="M_THREEPID_DENIED",
            http_status=403,
        )

    async def forget_identifier(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        _check_identifier(json_object(request))
        return {"id_server_unbind_result": "no-support"}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/account/3pid", threepids)
        router.add("POST", f"{prefix}/account/3pid/add", refuse_identifier)
        router.add("POST", f"{prefix}/account/3pid/bind", refuse_identifier)
        router.add("POST", f"{prefix}/account/3pid/delete", forget_identifier)
        router.add("POST", f"{prefix}/account/3pid/unbind", forget_identifier)
        for path in _REQUEST_TOKEN_PATHS:
            router.add("POST", prefix + path, request_token)
        for medium in _MEDIA:
            router.add(
                "POST", f"{prefix}/account/3pid/{medium}/requestToken", refuse_medium(medium)
            )
