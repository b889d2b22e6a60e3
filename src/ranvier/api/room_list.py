"""The public room list: ``/publicRooms`` and ``/directory/list/room/{roomId}``.

Reading the list and a room's visibility needs no access token (the spec
leaves both open); publishing needs a server admin or a member of the
room with the power to change its aliases. ``server`` naming another
server asks that server for its list over federation. See
:mod:`ranvier.core.room_list`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.room_list import RoomList
from ranvier.errors import BadJsonError
from ranvier.web import Request, Router, integer_param

__all__ = ["add_room_list_routes"]


def add_room_list_routes(router: Router, *, auth: Auth, room_list: RoomList) -> None:
    """Serve the room list and the rooms' directory visibility."""

    async def public_rooms(request: Request) -> Mapping[str, Any]:
        return await room_list.public_rooms(
            limit=integer_param(request, "limit"),
            since=request.query_value("since"),
            server=request.query_value("server"),
        )

    async def search_public_rooms(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        body = json_object(request)
        limit = body.get("limit")
        since = body.get("since")
        search_filter = body.get("filter")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise BadJsonError("'limit' must be a non-negative integer")
        if since is not None and not isinstance(since, str):
            raise BadJsonError("'since' must be a string")
        term = None
        if search_filter is not None:
            if not isinstance(search_filter, dict):
                raise BadJsonError("'filter' must be an object")
            term = search_filter.get("generic_search_term")
            if term is not None and not isinstance(term, str):
                raise BadJsonError("'generic_search_term' must be a string")
        return await room_list.public_rooms(
            limit=limit, since=since, search=term, server=request.query_value("server")
        )

    async def get_visibility(request: Request) -> Mapping[str, Any]:
        return {"visibility": await room_list.get_visibility(request.path_params["room_id"])}

    async def set_visibility(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        await room_list.set_visibility(
            requester.user_id,
            request.path_params["room_id"],
            body.get("visibility", "public"),
            is_admin=requester.is_admin,
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/publicRooms", public_rooms)
        router.add("POST", f"{prefix}/publicRooms", search_public_rooms)
        router.add("GET", f"{prefix}/directory/list/room/{{room_id}}", get_visibility)
        router.add("PUT", f"{prefix}/directory/list/room/{{room_id}}", set_visibility)
