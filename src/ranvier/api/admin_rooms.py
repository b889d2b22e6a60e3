"""The room admin API at Synapse's paths: rooms listed and shown, their
members and state, blocks, and rooms shut and purged with their delete
status (:class:`ranvier.core.admin_rooms.AdminRooms`); the first version
of ``DELETE`` answers what the shut did, the second a deletion ID to
read the status by; and a room's messages, every one of them whatever the
admin's membership (:class:`ranvier.core.pagination.RoomMessages` with
nothing hidden). Admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, ADMIN_V2, body_object, page_params, require_admin
from ranvier.api.auth import Auth
from ranvier.api.query_params import (
    direction_param,
    flag_param,
    integer_param,
    room_event_filter_param,
)
from ranvier.core.admin_rooms import AdminRooms, RoomListRequest
from ranvier.core.pagination import RoomMessages
from ranvier.web import Request, Router

__all__ = ["add_admin_room_messages_route", "add_admin_room_routes"]


def add_admin_room_routes(router: Router, *, auth: Auth, rooms: AdminRooms) -> None:
    """Serve the room admin endpoints."""

    async def list_rooms(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        offset, limit, backwards = page_params(request)
        return await rooms.list_rooms(
            RoomListRequest(
                offset=offset,
                limit=limit,
                order_by=request.query_value("order_by") or "name",
                backwards=backwards,
                search_term=request.query_value("search_term") or None,
                public_rooms=flag_param(request, "public_rooms"),
                empty_rooms=flag_param(request, "empty_rooms"),
            )
        )

    async def get_room(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await rooms.room(request.path_params["room_id"])

    async def members(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await rooms.members(request.path_params["room_id"])

    async def state(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await rooms.state(request.path_params["room_id"], request.query_value("type"))

    async def get_block(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await rooms.block_status(request.path_params["room_id"])

    async def put_block(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await rooms.set_block(
            admin.user_id, request.path_params["room_id"], body_object(request)
        )

    async def delete_room(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await rooms.delete(
            admin.user_id, request.path_params["room_id"], body_object(request)
        )

    async def delete_room_now(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await rooms.delete_now(
            admin.user_id, request.path_params["room_id"], body_object(request)
        )

    async def delete_status(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return rooms.delete_status(request.path_params["room_id"])

    async def delete_status_by_id(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return rooms.delete_status_by_id(request.path_params["delete_id"])

    router.add("GET", f"{ADMIN_V1}/rooms", list_rooms)
    router.add("GET", f"{ADMIN_V1}/rooms/{{room_id}}", get_room)
    router.add("GET", f"{ADMIN_V1}/rooms/{{room_id}}/members", members)
    router.add("GET", f"{ADMIN_V1}/rooms/{{room_id}}/state", state)
    router.add("GET", f"{ADMIN_V1}/rooms/{{room_id}}/block", get_block)
    router.add("PUT", f"{ADMIN_V1}/rooms/{{room_id}}/block", put_block)
    router.add("DELETE", f"{ADMIN_V1}/rooms/{{room_id}}", delete_room_now)
    router.add("DELETE", f"{ADMIN_V2}/rooms/{{room_id}}", delete_room)
    router.add("GET", f"{ADMIN_V2}/rooms/{{room_id}}/delete_status", delete_status)
    router.add("GET", f"{ADMIN_V2}/rooms/delete_status/{{delete_id}}", delete_status_by_id)


def add_admin_room_messages_route(
    router: Router, *, auth: Auth, rooms: AdminRooms, messages: RoomMessages
) -> None:
    """Serve ``GET /_synapse/admin/v1/rooms/{roomId}/messages``: the
    parameters and answer of the client API's ``/messages``."""

    async def room_messages(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        room_id = request.path_params["room_id"]
        await rooms.require_room(room_id)
        return await messages.get_messages(
            admin,
            room_id,
            direction=direction_param(request),
            from_token=request.query_value("from"),
            to_token=request.query_value("to"),
            limit=integer_param(request, "limit"),
            event_filter=room_event_filter_param(request),
            everything=True,
        )

    router.add("GET", f"{ADMIN_V1}/rooms/{{room_id}}/messages", room_messages)
