"""Profiles: ``/profile/{userId}`` and its ``displayname`` and ``avatar_url``.

Reading a profile needs no access token (the spec leaves it open); changing
one needs the owner's. ``DELETE`` of a field clears it as ``PUT`` of null
does. See :mod:`ranvier.core.profiles`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.profiles import ProfileField, Profiles
from ranvier.core.suspension import refuse_if_suspended
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_profile_routes"]


def add_profile_routes(router: Router, *, auth: Auth, profiles: Profiles) -> None:
    """Serve ``GET /profile/{userId}`` and ``GET``/``PUT``/``DELETE`` of its two fields."""

    async def get_profile(request: Request) -> Mapping[str, Any]:
        return await profiles.get_profile(request.path_params["user_id"])

    def field_routes(field: ProfileField) -> None:
        async def get_field(request: Request) -> Mapping[str, Any]:
            user_id = request.path_params["user_id"]
            profile = await profiles.get_profile(user_id)
            if field not in profile:
                raise MatrixError(
                    f"{user_id} has no {field}", errcode="M_NOT_FOUND", http_status=404
                )
            return {field: profile[field]}

        async def set_field(request: Request) -> Mapping[str, Any]:
            requester = await auth.get_user(request)
            refuse_if_suspended(requester, "profile")
            body = json_object(request)
            if field not in body:
                raise MatrixError(
                    f"'{field}' is required", errcode="M_MISSING_PARAM", http_status=400
                )
            await profiles.set_field(
                requester.user_id, request.path_params["user_id"], field, body[field]
            )
            return {}

        async def delete_field(request: Request) -> Mapping[str, Any]:
            requester = await auth.get_user(request)
            refuse_if_suspended(requester, "profile")
            await profiles.set_field(requester.user_id, request.path_params["user_id"], field, None)
            return {}

        for prefix in CLIENT_VERSION_PREFIXES:
            router.add("GET", f"{prefix}/profile/{{user_id}}/{field}", get_field)
            router.add("PUT", f"{prefix}/profile/{{user_id}}/{field}", set_field)
            router.add("DELETE", f"{prefix}/profile/{{user_id}}/{field}", delete_field)

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/profile/{{user_id}}", get_profile)
    field_routes("displayname")
    field_routes("avatar_url")
