"""Room previews: ``GET /rooms/{roomId}/initialSync`` and ``GET /events``
(:mod:`ranvier.core.room_previews`).

``/events`` is served for the spec's peeking form only, with ``room_id``;
the deprecated event stream of all the user's rooms (the same path without
it) is left to ``/sync``, so a request without ``room_id`` gets 400
``M_MISSING_PARAM``. Both routes take ``limit``, and ``/events`` takes
``from`` and ``timeout`` (milliseconds); every one needs an access token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.room_previews import RoomPreviews
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

from .query_params import integer_param, invalid_param

__all__ = ["add_room_preview_routes"]

_V3: Final = "/_matrix/client/v3"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def _checked_room_id(room_id: str) -> str:
    if not room_id.startswith("!"):
        raise invalid_param(f"{room_id[:80]!r} is not a room ID")
    return room_id


def add_room_preview_routes(router: Router, *, auth: _Auth, previews: RoomPreviews) -> None:
    """Serve ``/rooms/{roomId}/initialSync`` and ``/events?room_id=...``."""

    async def get_initial_sync(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await previews.initial_sync(
            requester,
            _checked_room_id(request.path_params["room_id"]),
            limit=integer_param(request, "limit"),
        )

    async def get_events(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        room_id = request.query_value("room_id")
        if room_id is None:
            raise MatrixError(
                "room_id is required: only a room's events are streamed here;"
                " /sync follows all of a user's rooms",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        return await previews.events(
            requester,
            _checked_room_id(room_id),
            from_token=request.query_value("from"),
            timeout_ms=integer_param(request, "timeout"),
            limit=integer_param(request, "limit"),
        )

    router.add("GET", f"{_V3}/rooms/{{room_id}}/initialSync", get_initial_sync)
    router.add("GET", f"{_V3}/events", get_events)
