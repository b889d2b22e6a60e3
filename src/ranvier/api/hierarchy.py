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
from ranvier.web import Request, Router

from .query_params import flag_param, integer_param

__all__ = ["add_hierarchy_route"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def add_hierarchy_route(router: Router, *, auth: _Auth, hierarchy: RoomHierarchy) -> None:
    """Serve ``/rooms/{roomId}/hierarchy``."""

    async def get_hierarchy(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await hierarchy.get_hierarchy(
            requester.user_id,
            request.path_params["room_id"],
            from_token=request.query_value("from"),
            limit=integer_param(request, "limit"),
            max_depth=integer_param(request, "max_depth"),
            suggested_only=flag_param(request, "suggested_only") or False,
        )

    router.add("GET", f"{_V1}/rooms/{{room_id}}/hierarchy", get_hierarchy)
