"""The public room list: ``/publicRooms``, ``/directory/list/room/{roomId}``
and ``/directory/list/appservice/{networkId}/{roomId}``.

Reading the list and a room's visibility needs no access token (the spec
leaves both open); publishing needs a server admin or a member of the
room with the power to change its aliases. ``server`` naming another
server asks that server for its list over federation. An application
service publishes rooms in its networks' lists with its own token, and
nobody else may (403 ``M_FORBIDDEN``); ``third_party_instance_id`` and
``include_all_networks`` choose the lists read, in ``POST``'s body and,
as Synapse takes them, ``GET``'s query. See :mod:`ranvier.core.room_list`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.room_list import RoomList
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import Request, Router, flag_param, integer_param

__all__ = ["add_room_list_routes"]


def add_room_list_routes(router: Router, *, auth: Auth, room_list: RoomList) -> None:
    """Serve the room list and the rooms' directory visibility."""

    async def public_rooms(request: Request) -> Mapping[str, Any]:
        return await room_list.public_rooms(
            limit=integer_param(request, "limit"),
            since=request.query_value("since"),
            server=request.query_value("server"),
            include_all_networks=bool(flag_param(request, "include_all_networks")),
            third_party_instance_id=request.query_value("third_party_instance_id"),
        )

    async def search_public_rooms(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        body = json_object(request)
        limit = body.get("limit")
        since = body.get("since")
        search_filter = body.get("filter")
        everything = body.get("include_all_networks", False)
        instance = body.get("third_party_instance_id")
        if not isinstance(everything, bool):
            raise BadJsonError("'include_all_networks' must be true or false")
        if instance is not None and not isinstance(instance, str):
            raise BadJsonError("'third_party_instance_id' must be a string")
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
            limit=limit,
            since=since,
            search=term,
            server=request.query_value("server"),
            include_all_networks=everything,
            third_party_instance_id=instance,
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

    async def set_network_visibility(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        if requester.app_service is None:
            raise MatrixError(
                "only an application service's as_token may publish rooms in a network's list",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        body = json_object(request)
        if "visibility" not in body:
            raise BadJsonError("'visibility' is required")
        await room_list.set_network_visibility(
            requester.app_service,
            request.path_params["network_id"],
            request.path_params["room_id"],
            body["visibility"],
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/publicRooms", public_rooms)
        router.add("POST", f"{prefix}/publicRooms", search_public_rooms)
        router.add("GET", f"{prefix}/directory/list/room/{{room_id}}", get_visibility)
        router.add("PUT", f"{prefix}/directory/list/room/{{room_id}}", set_visibility)
        router.add(
            "PUT",
            f"{prefix}/directory/list/appservice/{{network_id}}/{{room_id}}",
            set_network_visibility,
        )
