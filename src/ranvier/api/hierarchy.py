"""``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` (:mod:`ranvier.core.hierarchy`).

The handler checks the query's form (``limit`` greater than zero,
``max_depth`` not negative, ``suggested_only`` true or false) and hands the
rest to core; it needs an access token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.hierarchy import RoomHierarchy
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_hierarchy_route"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _integer(request: Request, name: str) -> int | None:
    value = request.query_value(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 15:
        raise _invalid(f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def _flag(request: Request, name: str) -> bool:
    value = request.query_value(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise _invalid(f"{name} must be true or false, not {value[:40]!r}")
    return value == "true"


def add_hierarchy_route(router: Router, *, auth: _Auth, hierarchy: RoomHierarchy) -> None:
    """Serve ``/rooms/{roomId}/hierarchy``."""

    async def get_hierarchy(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await hierarchy.get_hierarchy(
            requester.user_id,
            request.path_params["room_id"],
            from_token=request.query_value("from"),
            limit=_integer(request, "limit"),
            max_depth=_integer(request, "max_depth"),
            suggested_only=_flag(request, "suggested_only"),
        )

    router.add("GET", f"{_V1}/rooms/{{room_id}}/hierarchy", get_hierarchy)
