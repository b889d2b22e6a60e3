"""Account data: ``/user/{userId}/account_data/{type}`` and its per-room
form ``/user/{userId}/rooms/{roomId}/account_data/{type}``, and room tags
(``/user/{userId}/rooms/{roomId}/tags``), kept as the room's ``m.tag``
account data; only a user's own. See :mod:`ranvier.core.account_data` and
:mod:`ranvier.core.room_tags`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.account_data import AccountData
from ranvier.core.room_tags import RoomTags
from ranvier.web import Request, Router

__all__ = ["add_account_data_routes"]


def add_account_data_routes(router: Router, *, auth: Auth, account_data: AccountData) -> None:
    """Serve ``GET`` and ``PUT`` of global and per-room account data, and
    room tags."""
    tags = RoomTags(account_data)

    async def get(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        return await account_data.get(
            requester.user_id, params["user_id"], params["type"], room_id=params.get("room_id")
        )

    async def put(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        content = json_object(request)
        await account_data.put(
            requester.user_id,
            params["user_id"],
            params["type"],
            content,
            room_id=params.get("room_id"),
        )
        return {}

    async def get_tags(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        return await tags.get(requester.user_id, params["user_id"], params["room_id"])

    async def put_tag(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await tags.add(
            requester.user_id,
            params["user_id"],
            params["room_id"],
            params["tag"],
            json_object(request),
        )
        return {}

    async def delete_tag(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await tags.remove(requester.user_id, params["user_id"], params["room_id"], params["tag"])
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        room = f"{prefix}/user/{{user_id}}/rooms/{{room_id}}"
        router.add("GET", f"{room}/tags", get_tags)
        router.add("PUT", f"{room}/tags/{{tag}}", put_tag)
        router.add("DELETE", f"{room}/tags/{{tag}}", delete_tag)
        for path in (
            f"{prefix}/user/{{user_id}}/account_data/{{type}}",
            f"{prefix}/user/{{user_id}}/rooms/{{room_id}}/account_data/{{type}}",
        ):
            router.add("GET", path, get)
            router.add("PUT", path, put)
