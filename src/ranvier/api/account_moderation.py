"""Locking and suspending accounts: the spec's ``/admin/lock/{userId}`` and
``/admin/suspend/{userId}`` (client-server API v1.18) and Synapse's
``/_synapse/admin/v1/suspend/{userId}``, which admin tools still call.

The caller's admin rights are checked before the user ID is even looked
at, so that no one else can learn from the answers which accounts exist
(the spec asks it). What a lock or suspension then refuses is
:class:`ranvier.api.auth.Auth`'s and :mod:`ranvier.core.suspension`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_users import AdminUsers
from ranvier.errors import BadJsonError
from ranvier.web import Request, Router

__all__ = ["add_account_moderation_routes"]

_CLIENT_V1 = "/_matrix/client/v1"


def _flag(request: Request, key: str) -> bool:
    value = body_object(request).get(key)
    if not isinstance(value, bool):
        raise BadJsonError(f"'{key}' must be true or false")
    return value


def add_account_moderation_routes(router: Router, *, auth: Auth, users: AdminUsers) -> None:
    """Serve the lock and suspension endpoints."""

    async def _target(request: Request) -> tuple[str, str]:
        admin = await require_admin(auth, request)
        user_id = request.path_params["user_id"]
        users.check_local(user_id)
        return admin.user_id, user_id

    async def get_lock(request: Request) -> Mapping[str, Any]:
        _, user_id = await _target(request)
        return {"locked": await users.is_locked(user_id)}

    async def put_lock(request: Request) -> Mapping[str, Any]:
        admin_id, user_id = await _target(request)
        locked = _flag(request, "locked")
        await users.set_locked(admin_id, user_id, locked)
        return {"locked": locked}

    async def get_suspend(request: Request) -> Mapping[str, Any]:
        _, user_id = await _target(request)
        return {"suspended": await users.is_suspended(user_id)}

    async def put_suspend(request: Request) -> Mapping[str, Any]:
        admin_id, user_id = await _target(request)
        suspended = _flag(request, "suspended")
        await users.set_suspended(admin_id, user_id, suspended)
        return {"suspended": suspended}

    async def synapse_suspend(request: Request) -> Mapping[str, Any]:
        admin_id, user_id = await _target(request)
        suspend = _flag(request, "suspend")
        await users.set_suspended(admin_id, user_id, suspend)
        # Synapse answers with the user ID inside the key.
        return {f"user_{user_id}_suspended": suspend}

    router.add("GET", f"{_CLIENT_V1}/admin/lock/{{user_id}}", get_lock)
    router.add("PUT", f"{_CLIENT_V1}/admin/lock/{{user_id}}", put_lock)
    router.add("GET", f"{_CLIENT_V1}/admin/suspend/{{user_id}}", get_suspend)
    router.add("PUT", f"{_CLIENT_V1}/admin/suspend/{{user_id}}", put_suspend)
    router.add("PUT", f"{ADMIN_V1}/suspend/{{user_id}}", synapse_suspend)
