"""``GET /sync``, the filter endpoints and ``GET /rooms/{roomId}/messages``.

The handlers here read the request's parameters, check their form and
hand over to :mod:`ranvier.core.sync`, :mod:`ranvier.core.filters` and
:mod:`ranvier.core.pagination`; every one needs an access token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.filters import UserFilters
from ranvier.core.pagination import RoomMessages
from ranvier.core.sync import SyncHandler
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

from .query_params import (
    direction_param,
    flag_param,
    integer_param,
    invalid_param,
    room_event_filter_param,
)

__all__ = ["add_sync_routes"]

_V3: Final = "/_matrix/client/v3"
_PRESENCE_STATES: Final = frozenset({"online", "offline", "unavailable"})


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def _own(requester: Requester, user_id: str) -> None:
    if requester.user_id != user_id:
        raise MatrixError(
            f"{requester.user_id} cannot use the filters of {user_id}",
            errcode="M_FORBIDDEN",
            http_status=403,
        )


def add_sync_routes(
    router: Router,
    *,
    auth: _Auth,
    sync: SyncHandler,
    filters: UserFilters,
    messages: RoomMessages,
) -> None:
    """Serve ``/sync``, ``/user/{userId}/filter`` and ``/rooms/{roomId}/messages``."""

    async def get_sync(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        presence = request.query_value("set_presence")
        if presence is not None and presence not in _PRESENCE_STATES:
            raise invalid_param(
                f"set_presence must be online, offline or unavailable, not {presence!r}"
            )
        event_filter = await filters.resolve(requester.user_id, request.query_value("filter"))
        return await sync.sync(
            requester,
            since=request.query_value("since"),
            timeout_ms=integer_param(request, "timeout") or 0,
            filter=event_filter,
            full_state=flag_param(request, "full_state") or False,
            set_presence=presence or "online",
            use_state_after=flag_param(request, "use_state_after") or False,
        )

    async def post_filter(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        _own(requester, request.path_params["user_id"])
        return {"filter_id": await filters.create(requester.user_id, request.content)}

    async def get_filter(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        _own(requester, request.path_params["user_id"])
        return await filters.get(requester.user_id, request.path_params["filter_id"])

    async def get_messages(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        way = direction_param(request)
        event_filter = room_event_filter_param(request)
        return await messages.get_messages(
            requester,
            request.path_params["room_id"],
            direction=way,
            from_token=request.query_value("from"),
            to_token=request.query_value("to"),
            limit=integer_param(request, "limit"),
            event_filter=event_filter,
        )

    router.add("GET", f"{_V3}/sync", get_sync)
    router.add("POST", f"{_V3}/user/{{user_id}}/filter", post_filter)
    router.add("GET", f"{_V3}/user/{{user_id}}/filter/{{filter_id}}", get_filter)
    router.add("GET", f"{_V3}/rooms/{{room_id}}/messages", get_messages)
