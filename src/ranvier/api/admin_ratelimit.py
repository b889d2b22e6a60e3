"""``/_synapse/admin/v1/users/{userId}/override_ratelimit``: an admin
reads, sets or deletes a local user's own message rate, or lifts their
per-user limits (:class:`ranvier.core.ratelimit_overrides.RateLimitOverrides`),
which the client API's rate limiter then applies (:mod:`ranvier.api.ratelimit`).
Admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_users import AdminUsers
from ranvier.core.ratelimit_overrides import RateLimitOverrides
from ranvier.web import Request, Router

__all__ = ["add_admin_ratelimit_routes"]


def add_admin_ratelimit_routes(
    router: Router, *, auth: Auth, users: AdminUsers, overrides: RateLimitOverrides
) -> None:
    """Serve reading, setting and deleting a user's override."""

    async def _user_id(request: Request) -> str:
        await require_admin(auth, request)
        user_id = request.path_params["user_id"]
        await users.require_user(user_id)
        return user_id

    async def get_override(request: Request) -> Mapping[str, Any]:
        return await overrides.get(await _user_id(request))

    async def set_override(request: Request) -> Mapping[str, Any]:
        user_id = await _user_id(request)
        return await overrides.set(user_id, body_object(request))

    async def delete_override(request: Request) -> Mapping[str, Any]:
        await overrides.delete(await _user_id(request))
        return {}

    path = f"{ADMIN_V1}/users/{{user_id}}/override_ratelimit"
    router.add("GET", path, get_override)
    router.add("POST", path, set_override)
    router.add("DELETE", path, delete_override)
