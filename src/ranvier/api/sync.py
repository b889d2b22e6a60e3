"""``GET /sync``, the filter endpoints and ``GET /rooms/{roomId}/messages``.

The handlers here read the request's parameters, check their form and
hand over to :mod:`ranvier.core.sync`, :mod:`ranvier.core.filters` and
:mod:`ranvier.core.pagination`; every one needs an access token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

import msgspec

from ranvier.core.accounts import Requester
from ranvier.core.filters import UserFilters, parse_room_event_filter
from ranvier.core.pagination import RoomMessages
from ranvier.core.sync import SyncHandler
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_sync_routes"]

_V3: Final = "/_matrix/client/v3"
_PRESENCE_STATES: Final = frozenset({"online", "offline", "unavailable"})


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


def _boolean(request: Request, name: str) -> bool:
    value = request.query_value(name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise _invalid(f"{name} must be true or false, not {value[:40]!r}")


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
            raise _invalid(f"set_presence must be online, offline or unavailable, not {presence!r}")
        event_filter = await filters.resolve(requester.user_id, request.query_value("filter"))
        return await sync.sync(
            requester,
            since=request.query_value("since"),
            timeout_ms=_integer(request, "timeout") or 0,
            filter=event_filter,
            full_state=_boolean(request, "full_state"),
            set_presence=presence or "online",
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
        direction = request.query_value("dir") or "b"
        if direction not in ("b", "f"):
            raise _invalid(f"dir must be b or f, not {direction[:40]!r}")
        raw_filter = request.query_value("filter")
        event_filter = None
        if raw_filter is not None:
            try:
                content = msgspec.json.decode(raw_filter)
            except msgspec.DecodeError as exc:
                raise _invalid(f"the filter parameter is not valid JSON: {exc}") from None
            event_filter = parse_room_event_filter(content)
        way: Literal["b", "f"] = "b" if direction == "b" else "f"
        return await messages.get_messages(
            requester,
            request.path_params["room_id"],
            direction=way,
            from_token=request.query_value("from"),
            to_token=request.query_value("to"),
            limit=_integer(request, "limit"),
            event_filter=event_filter,
        )

    router.add("GET", f"{_V3}/sync", get_sync)
    router.add("POST", f"{_V3}/user/{{user_id}}/filter", post_filter)
    router.add("GET", f"{_V3}/user/{{user_id}}/filter/{{filter_id}}", get_filter)
    router.add("GET", f"{_V3}/rooms/{{room_id}}/messages", get_messages)
