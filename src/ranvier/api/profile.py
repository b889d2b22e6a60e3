"""Profiles: ``/profile/{userId}`` and each of its fields, ``/profile/{userId}/{keyName}``.

Reading a profile needs no access token (the spec leaves it open); changing
one needs the owner's, or an admin's. A ``PUT`` body holds the one field its
path names and nothing else. ``DELETE`` removes a field; ``PUT`` of null
keeps a custom field set to null, but clears a display name or avatar as it
always has. See :mod:`ranvier.core.profiles`. A shadow-banned user's own
display name or avatar changes their profile but none of their rooms
(:mod:`ranvier.core.shadow_bans`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.profiles import Profiles
from ranvier.core.shadow_bans import NO_DELAY, ShadowBans
from ranvier.core.suspension import refuse_if_suspended
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_profile_routes"]


_MEMBER_FIELDS = ("displayname", "avatar_url")


def add_profile_routes(
    router: Router, *, auth: Auth, profiles: Profiles, shadow_bans: ShadowBans | None = None
) -> None:
    """Serve ``GET /profile/{userId}`` and ``GET``/``PUT``/``DELETE`` of any
    field; ``shadow_bans`` paces the answers faked for shadow-banned users
    (not at all without it)."""
    paced = shadow_bans or ShadowBans(delay_seconds=NO_DELAY)

    async def get_profile(request: Request) -> Mapping[str, Any]:
        return await profiles.get_profile(request.path_params["user_id"])

    async def get_field(request: Request) -> Mapping[str, Any]:
        key = request.path_params["key_name"]
        return {key: await profiles.get_field(request.path_params["user_id"], key)}

    async def set_field(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        refuse_if_suspended(requester, "profile")
        key = request.path_params["key_name"]
        body = json_object(request)
        if key not in body:
            raise MatrixError(f"'{key}' is required", errcode="M_MISSING_PARAM", http_status=400)
        if len(body) > 1:
            others = ", ".join(sorted(name for name in body if name != key))
            raise MatrixError(
                f"the body may hold '{key}' alone, not also {others}",
                errcode="M_BAD_JSON",
                http_status=400,
            )
        await profiles.set_field(
            requester.user_id,
            request.path_params["user_id"],
            key,
            body[key],
            is_admin=requester.is_admin,
            to_rooms=not requester.shadow_banned,
        )
        if requester.shadow_banned and key in _MEMBER_FIELDS:
            await paced.pause()
        return {}

    async def delete_field(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        refuse_if_suspended(requester, "profile")
        key = request.path_params["key_name"]
        await profiles.delete_field(
            requester.user_id,
            request.path_params["user_id"],
            key,
            is_admin=requester.is_admin,
            to_rooms=not requester.shadow_banned,
        )
        if requester.shadow_banned and key in _MEMBER_FIELDS:
            await paced.pause()
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/profile/{{user_id}}", get_profile)
        router.add("GET", f"{prefix}/profile/{{user_id}}/{{key_name}}", get_field)
        router.add("PUT", f"{prefix}/profile/{{user_id}}/{{key_name}}", set_field)
        router.add("DELETE", f"{prefix}/profile/{{user_id}}/{{key_name}}", delete_field)
