"""``POST /_matrix/client/v3/knock/{roomIdOrAlias}``: asking to be let into
a room whose join rule is ``knock`` (or ``knock_restricted``).

The ``via`` and older ``server_name`` query parameters (each repeatable)
name servers to knock through when this server is not in the room; the
body's optional ``reason`` goes into the knock. Whether the knock is
allowed is for the room's auth rules (:mod:`ranvier.core.knocks`).
Withdrawing a knock is ``POST /rooms/{roomId}/leave``
(:mod:`ranvier.api.rooms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.core.knocks import RoomKnocks
from ranvier.core.suspension import refuse_if_suspended
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

from .rooms import CLIENT_V3, RequestAuth

__all__ = ["add_knock_route"]


def _bad_json(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_JSON", http_status=400)


def _reason(request: Request) -> str | None:
    body = request.content
    if body is None:
        return None
    if not isinstance(body, dict):
        raise _bad_json("the request body must be a JSON object")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise _bad_json("reason must be a string")
    return reason


def add_knock_route(router: Router, *, auth: RequestAuth, knocks: RoomKnocks) -> None:
    """Serve ``POST /knock/{roomIdOrAlias}``."""

    async def knock(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        refuse_if_suspended(requester, "knock")
        reason = _reason(request)
        servers = [*request.query.get("via", ()), *request.query.get("server_name", ())]
        room_id = await knocks.knock(
            requester.user_id, request.path_params["room_id_or_alias"], servers, reason=reason
        )
        return {"room_id": room_id}

    router.add("POST", f"{CLIENT_V3}/knock/{{room_id_or_alias}}", knock)
