"""The media admin API at Synapse's paths: media details, quarantine (one
piece, a room's, a user's), protection from it, a room's and a user's
media, and deletion (one piece, a user's, ours by date and size, other
servers' by date) (:class:`ranvier.core.admin_media.AdminMedia`). Admins
only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, page_params, require_admin
from ranvier.api.auth import Auth
from ranvier.api.query_params import flag_param, integer_param
from ranvier.core.admin_media import AdminMedia, UserMediaPage
from ranvier.web import Request, Router

__all__ = ["add_admin_media_routes"]


def _user_page(request: Request) -> UserMediaPage:
    offset, limit, backwards = page_params(request)
    return UserMediaPage(
        offset=offset,
        limit=limit,
        order_by=request.query_value("order_by"),
        backwards=None if request.query_value("dir") is None else backwards,
    )


def add_admin_media_routes(router: Router, *, auth: Auth, media: AdminMedia) -> None:
    """Serve the media admin endpoints."""

    async def details(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        params = request.path_params
        return await media.details(params["server_name"], params["media_id"])

    async def quarantine(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        params = request.path_params
        return await media.quarantine(admin.user_id, params["server_name"], params["media_id"])

    async def unquarantine(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        params = request.path_params
        return await media.unquarantine(params["server_name"], params["media_id"])

    async def quarantine_room(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await media.quarantine_room(admin.user_id, request.path_params["room_id"])

    async def quarantine_user(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await media.quarantine_user(admin.user_id, request.path_params["user_id"])

    async def protect(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await media.set_protected(request.path_params["media_id"], True)

    async def unprotect(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await media.set_protected(request.path_params["media_id"], False)

    async def room_media(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await media.room_media(request.path_params["room_id"])

    async def user_media(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await media.user_media(request.path_params["user_id"], _user_page(request))

    async def delete_user_media(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await media.delete_user_media(request.path_params["user_id"], _user_page(request))

    async def delete_one(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        params = request.path_params
        return await media.delete_one(params["server_name"], params["media_id"])

    async def delete_local(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        server_name = request.path_params.get("server_name")
        if server_name is not None:
            media.check_local_server(server_name)
        keep_profiles = flag_param(request, "keep_profiles")
        return await media.delete_local(
            before_ts=integer_param(request, "before_ts"),
            size_gt=integer_param(request, "size_gt") or 0,
            keep_profiles=True if keep_profiles is None else keep_profiles,
        )

    async def purge_remote(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await media.purge_remote(before_ts=integer_param(request, "before_ts"))

    one = "{server_name}/{media_id}"
    router.add("GET", f"{ADMIN_V1}/media/{one}", details)
    router.add("DELETE", f"{ADMIN_V1}/media/{one}", delete_one)
    router.add("POST", f"{ADMIN_V1}/media/quarantine/{one}", quarantine)
    router.add("POST", f"{ADMIN_V1}/media/unquarantine/{one}", unquarantine)
    router.add("POST", f"{ADMIN_V1}/media/protect/{{media_id}}", protect)
    router.add("POST", f"{ADMIN_V1}/media/unprotect/{{media_id}}", unprotect)
    router.add("POST", f"{ADMIN_V1}/media/delete", delete_local)
    router.add("POST", f"{ADMIN_V1}/purge_media_cache", purge_remote)
    router.add("GET", f"{ADMIN_V1}/room/{{room_id}}/media", room_media)
    router.add("POST", f"{ADMIN_V1}/room/{{room_id}}/media/quarantine", quarantine_room)
    # The older paths of the same calls, which Synapse still answers.
    router.add("POST", f"{ADMIN_V1}/quarantine_media/{{room_id}}", quarantine_room)
    router.add("POST", f"{ADMIN_V1}/media/{{server_name}}/delete", delete_local)
    router.add("POST", f"{ADMIN_V1}/user/{{user_id}}/media/quarantine", quarantine_user)
    router.add("GET", f"{ADMIN_V1}/users/{{user_id}}/media", user_media)
    router.add("DELETE", f"{ADMIN_V1}/users/{{user_id}}/media", delete_user_media)
