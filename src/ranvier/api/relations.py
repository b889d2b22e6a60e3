"""``GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`` and
``GET /rooms/{roomId}/threads`` (:mod:`ranvier.core.relations`), both under
``/_matrix/client/v1``.

The handlers check the query's form and hand the rest to core; both need
an access token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.relations import Relations
from ranvier.web import Request, Router

from .query_params import direction_param, flag_param, integer_param, invalid_param

__all__ = ["add_relation_routes"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def add_relation_routes(router: Router, *, auth: _Auth, relations: Relations) -> None:
    """Serve ``/relations`` at its three depths and ``/threads``."""

    async def get_relations(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        way = direction_param(request)
        params = request.path_params
        return await relations.get_relations(
            requester,
            params["room_id"],
            params["event_id"],
            rel_type=params.get("rel_type"),
            event_type=params.get("event_type"),
            direction=way,
            from_token=request.query_value("from"),
            to_token=request.query_value("to"),
            limit=integer_param(request, "limit"),
            recurse=flag_param(request, "recurse"),
        )

    async def get_threads(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        include = request.query_value("include") or "all"
        if include not in ("all", "participated"):
            raise invalid_param(f"include must be all or participated, not {include[:40]!r}")
        which: Literal["all", "participated"] = "all" if include == "all" else "participated"
        limit = integer_param(request, "limit")
        if limit == 0:
            raise invalid_param("limit must be greater than zero")
        return await relations.get_threads(
            requester,
            request.path_params["room_id"],
            include=which,
            from_token=request.query_value("from"),
            limit=limit,
        )

    related = f"{_V1}/rooms/{{room_id}}/relations/{{event_id}}"
    router.add("GET", related, get_relations)
    router.add("GET", f"{related}/{{rel_type}}", get_relations)
    router.add("GET", f"{related}/{{rel_type}}/{{event_type}}", get_relations)
    router.add("GET", f"{_V1}/rooms/{{room_id}}/threads", get_threads)
