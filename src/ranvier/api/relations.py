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
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

from .event_context import query_limit

__all__ = ["add_relation_routes"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _recurse(request: Request) -> bool | None:
    value = request.query_value("recurse")
    if value is None:
        return None
    if value not in ("true", "false"):
        raise _invalid(f"recurse must be true or false, not {value[:40]!r}")
    return value == "true"


def add_relation_routes(router: Router, *, auth: _Auth, relations: Relations) -> None:
    """Serve ``/relations`` at its three depths and ``/threads``."""

    async def get_relations(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        direction = request.query_value("dir") or "b"
        if direction not in ("b", "f"):
            raise _invalid(f"dir must be b or f, not {direction[:40]!r}")
        way: Literal["b", "f"] = "b" if direction == "b" else "f"
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
            limit=query_limit(request),
            recurse=_recurse(request),
        )

    async def get_threads(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        include = request.query_value("include") or "all"
        if include not in ("all", "participated"):
            raise _invalid(f"include must be all or participated, not {include[:40]!r}")
        which: Literal["all", "participated"] = "all" if include == "all" else "participated"
        limit = query_limit(request)
        if limit == 0:
            raise _invalid("limit must be greater than zero")
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
