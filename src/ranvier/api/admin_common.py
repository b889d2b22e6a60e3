"""What every admin endpoint shares: only a server admin's access token
gets past :func:`require_admin`, with the answers Synapse gives (401
without a usable token, 403 ``M_FORBIDDEN`` "You are not a server admin"
with someone else's), and the paging parameters its lists read alike.
Also ``GET /_synapse/admin/v1/server_version``, which asks no token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import ranvier
from ranvier.api.auth import Auth
from ranvier.api.query_params import integer_param, invalid_param
from ranvier.core.accounts import Requester
from ranvier.errors import MatrixError
from ranvier.protocol.numbers import is_decimal_number
from ranvier.web import Request, Router

__all__ = [
    "ADMIN_V1",
    "ADMIN_V2",
    "SERVER_VERSION_PATH",
    "add_server_version_route",
    "body_object",
    "page_params",
    "report_id_param",
    "require_admin",
]

ADMIN_V1: Final = "/_synapse/admin/v1"
ADMIN_V2: Final = "/_synapse/admin/v2"
SERVER_VERSION_PATH: Final = f"{ADMIN_V1}/server_version"

_DEFAULT_LIMIT: Final = 100
_MAX_LIMIT: Final = 1000


async def require_admin(auth: Auth, request: Request) -> Requester:
    """The requester, if a server admin; 403 otherwise."""
    requester = await auth.get_user(request)
    if not requester.is_admin:
        raise MatrixError("You are not a server admin", errcode="M_FORBIDDEN", http_status=403)
    return requester


def body_object(request: Request) -> Mapping[str, Any]:
    """The JSON object the request carries; an empty body is an empty one."""
    if request.content is None and not request.body.strip():
        return {}
    if not isinstance(request.content, dict):
        raise MatrixError(
            "the request body must be a JSON object", errcode="M_NOT_JSON", http_status=400
        )
    return request.content


def page_params(request: Request) -> tuple[int, int, bool]:
    """``from`` (an offset), ``limit`` and whether ``dir`` is ``b``."""
    offset = integer_param(request, "from") or 0
    limit = integer_param(request, "limit")
    if limit is None:
        limit = _DEFAULT_LIMIT
    if not 1 <= limit <= _MAX_LIMIT:
        raise invalid_param(f"limit must be from 1 to {_MAX_LIMIT}")
    direction = request.query_value("dir") or "f"
    if direction not in ("f", "b"):
        raise invalid_param(f"dir must be f or b, not {direction[:40]!r}")
    return offset, limit, direction == "b"


def add_server_version_route(router: Router) -> None:
    """``GET /_synapse/admin/v1/server_version``: open to anyone, as on
    Synapse (the federation ``/version`` tells the same)."""

    async def server_version(request: Request) -> Mapping[str, Any]:
        return {"server_version": ranvier.__version__}

    router.add("GET", SERVER_VERSION_PATH, server_version)


def report_id_param(request: Request) -> int:
    """The ``report_id`` path parameter of an event or user report: 400
    ``M_INVALID_PARAM`` unless it is a number a report could have."""
    raw = request.path_params["report_id"]
    if not is_decimal_number(raw) or len(raw) > 15:
        raise MatrixError(
            "the report ID must be a positive integer",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return int(raw)
