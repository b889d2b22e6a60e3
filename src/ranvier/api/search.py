"""``POST /search`` (:mod:`ranvier.core.search`).

The handler checks the body's shape against the spec's schema (400
``M_BAD_JSON`` naming what is wrong: a missing ``search_term``, a key,
order or group key the spec does not list, a negative context limit, a
malformed filter) and hands the criteria to core. Categories other than
``room_events`` are ignored, as are fields the spec does not name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec

from ranvier.core.accounts import Requester
from ranvier.core.filters import parse_room_event_filter
from ranvier.core.search import ALL_KEYS, ContextRequest, RoomEventsSearch, Search
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_search_route"]

_V3: Final = "/_matrix/client/v3"

_Limit = Annotated[int, msgspec.Meta(ge=0)]
_Key = Literal["content.body", "content.name", "content.topic"]


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


class _EventContext(msgspec.Struct):
    before_limit: _Limit = 5
    after_limit: _Limit = 5
    include_profile: bool = False


class _Group(msgspec.Struct):
    key: Literal["room_id", "sender"]


class _Groupings(msgspec.Struct):
    group_by: list[_Group] = msgspec.field(default_factory=list)


class _RoomEvents(msgspec.Struct):
    search_term: str
    keys: list[_Key] | None = None
    filter: dict[str, Any] | None = None
    order_by: Literal["recent", "rank"] = "rank"
    event_context: _EventContext | None = None
    include_state: bool = False
    groupings: _Groupings | None = None


class _Categories(msgspec.Struct):
    room_events: _RoomEvents | None = None


class _Body(msgspec.Struct):
    search_categories: _Categories


def _criteria(content: Any) -> RoomEventsSearch | None:
    """The ``room_events`` criteria of a request body, checked."""
    if not isinstance(content, dict):
        raise MatrixError(
            "the request body must be a JSON object", errcode="M_NOT_JSON", http_status=400
        )
    try:
        body = msgspec.convert(content, _Body)
    except msgspec.ValidationError as exc:
        raise MatrixError(f"invalid search: {exc}", errcode="M_BAD_JSON", http_status=400) from None
    room_events = body.search_categories.room_events
    if room_events is None:
        return None
    context = room_events.event_context
    groupings = room_events.groupings
    return RoomEventsSearch(
        search_term=room_events.search_term,
        keys=ALL_KEYS if room_events.keys is None else tuple(dict.fromkeys(room_events.keys)),
        event_filter=(
            None if room_events.filter is None else parse_room_event_filter(room_events.filter)
        ),
        order_by=room_events.order_by,
        event_context=(
            None
            if context is None
            else ContextRequest(context.before_limit, context.after_limit, context.include_profile)
        ),
        include_state=room_events.include_state,
        group_by=(
            () if groupings is None else tuple(dict.fromkeys(g.key for g in groupings.group_by))
        ),
    )


def add_search_route(router: Router, *, auth: _Auth, search: Search) -> None:
    """Serve ``POST /search``."""

    async def post_search(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        criteria = _criteria(request.content)
        return await search.search(requester, criteria, request.query_value("next_batch"))

    router.add("POST", f"{_V3}/search", post_search)
