"""``GET /rooms/{roomId}/context/{eventId}`` (:mod:`ranvier.core.event_context`).

The handler checks the query's form (``limit`` a non-negative integer,
``filter`` a JSON ``RoomEventFilter``) and hands the rest to core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.event_context import EventContexts
from ranvier.web import Request, Router

from .query_params import integer_param, room_event_filter_param

__all__ = ["add_event_context_route"]

_V3: Final = "/_matrix/client/v3"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def add_event_context_route(router: Router, *, auth: _Auth, contexts: EventContexts) -> None:
    """Serve ``/rooms/{roomId}/context/{eventId}``."""

    async def get_context(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await contexts.get_context(
            requester,
            request.path_params["room_id"],
            request.path_params["event_id"],
            limit=integer_param(request, "limit"),
            event_filter=room_event_filter_param(request),
        )

    router.add("GET", f"{_V3}/rooms/{{room_id}}/context/{{event_id}}", get_context)
