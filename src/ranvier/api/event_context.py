"""``GET /rooms/{roomId}/context/{eventId}`` (:mod:`ranvier.core.event_context`).

The handler checks the query's form (``limit`` a non-negative integer,
``filter`` a JSON ``RoomEventFilter``) and hands the rest to core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

import msgspec

from ranvier.core.accounts import Requester
from ranvier.core.event_context import EventContexts
from ranvier.core.filters import RoomEventFilter, parse_room_event_filter
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_event_context_route", "query_limit", "room_event_filter"]

_V3: Final = "/_matrix/client/v3"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def query_limit(request: Request) -> int | None:
    """The ``limit`` query parameter: a non-negative integer, or None."""
    value = request.query_value("limit")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 15:
        raise _invalid(f"limit must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def room_event_filter(request: Request) -> RoomEventFilter | None:
    """The ``filter`` query parameter, a JSON ``RoomEventFilter``, or None."""
    raw = request.query_value("filter")
    if raw is None:
        return None
    try:
        content = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _invalid(f"the filter parameter is not valid JSON: {exc}") from None
    return parse_room_event_filter(content)


def add_event_context_route(router: Router, *, auth: _Auth, contexts: EventContexts) -> None:
    """Serve ``/rooms/{roomId}/context/{eventId}``."""

    async def get_context(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await contexts.get_context(
            requester,
            request.path_params["room_id"],
            request.path_params["event_id"],
            limit=query_limit(request),
            event_filter=room_event_filter(request),
        )

    router.add("GET", f"{_V3}/rooms/{{room_id}}/context/{{event_id}}", get_context)
