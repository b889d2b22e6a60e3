"""``GET /_matrix/client/v1/room_summary/{roomIdOrAlias}``
(:mod:`ranvier.core.room_summary`), and the two unstable paths of MSC3266
clients called before the spec took it in.

An access token is optional: without one only rooms anyone may see are
shown and the answer has no ``membership``. A token that is sent must be
valid, so a client logged out is told so instead of being answered as
nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.auth import Auth, access_token_of
from ranvier.core.room_summary import RoomSummaries
from ranvier.web import Request, Router

__all__ = ["ROOM_SUMMARY_PATHS", "add_room_summary_routes"]

_UNSTABLE: Final = "/_matrix/client/unstable/im.nheko.summary"
ROOM_SUMMARY_PATHS: Final = (
    "/_matrix/client/v1/room_summary/{room_id_or_alias}",
    f"{_UNSTABLE}/summary/{{room_id_or_alias}}",
    f"{_UNSTABLE}/rooms/{{room_id_or_alias}}/summary",
)


def add_room_summary_routes(router: Router, *, auth: Auth, summaries: RoomSummaries) -> None:
    """Serve the room summary at its stable and unstable paths."""

    async def get_summary(request: Request) -> Mapping[str, Any]:
        user_id = None
        if access_token_of(request) is not None:
            user_id = (await auth.get_user(request)).user_id
        return await summaries.summary(
            user_id,
            request.path_params["room_id_or_alias"],
            via=request.query.get("via", ()),
        )

    for path in ROOM_SUMMARY_PATHS:
        router.add("GET", path, get_summary)
