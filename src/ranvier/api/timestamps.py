"""``GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`` (:mod:`ranvier.core.timestamps`).

``ts`` (milliseconds since the epoch) and ``dir`` (``b`` or ``f``) are
both required: one missing is 400 ``M_MISSING_PARAM``, one that is not
what the spec allows 400 ``M_INVALID_PARAM``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.timestamps import EventsByTimestamp
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

from .query_params import integer_param, invalid_param

__all__ = ["add_timestamp_route"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def _missing(name: str) -> MatrixError:
    return MatrixError(
        f"the query parameter {name!r} is required", errcode="M_MISSING_PARAM", http_status=400
    )


def add_timestamp_route(router: Router, *, auth: _Auth, lookup: EventsByTimestamp) -> None:
    """Serve ``/rooms/{roomId}/timestamp_to_event``."""

    async def timestamp_to_event(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        ts = integer_param(request, "ts")
        if ts is None:
            raise _missing("ts")
        direction = request.query_value("dir")
        if direction is None:
            raise _missing("dir")
        if direction not in ("b", "f"):
            raise invalid_param(f"dir must be b or f, not {direction[:40]!r}")
        room_id = request.path_params["room_id"]
        return await lookup.find(requester.user_id, room_id, ts, "b" if direction == "b" else "f")

    router.add("GET", f"{_V1}/rooms/{{room_id}}/timestamp_to_event", timestamp_to_event)
