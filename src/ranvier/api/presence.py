"""``GET`` and ``PUT /presence/{userId}/status``. See :mod:`ranvier.core.presence`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.presence import Presence
from ranvier.web import Request, Router

__all__ = ["add_presence_routes"]


def add_presence_routes(router: Router, *, auth: Auth, presence: Presence) -> None:
    """Serve a user's presence status."""

    async def get_status(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await presence.get_presence(requester.user_id, request.path_params["user_id"])

    async def put_status(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        await presence.set_presence(
            requester.user_id, request.path_params["user_id"], json_object(request)
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        path = f"{prefix}/presence/{{user_id}}/status"
        router.add("GET", path, get_status)
        router.add("PUT", path, put_status)
