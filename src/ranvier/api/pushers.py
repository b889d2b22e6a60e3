"""Pushers: ``GET /pushers`` and ``POST /pushers/set``; see :mod:`ranvier.core.pushers`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.pushers import Pushers
from ranvier.web import Request, Router

__all__ = ["add_pusher_routes"]


def add_pusher_routes(router: Router, *, auth: Auth, pushers: Pushers) -> None:
    """Serve listing and setting the requester's pushers."""

    async def list_pushers(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return {"pushers": await pushers.list(requester.user_id)}

    async def set_pusher(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        await pushers.set(
            requester.user_id, json_object(request), device_id=requester.device_id or None
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/pushers", list_pushers)
        router.add("POST", f"{prefix}/pushers/set", set_pusher)
