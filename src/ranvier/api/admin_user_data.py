"""An account's devices, pushers and account data in the admin API
(:class:`ranvier.core.admin_user_data.AdminUserData`), at Synapse's paths.
Admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, ADMIN_V2, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_user_data import AdminUserData
from ranvier.web import Request, Router

__all__ = ["add_admin_user_data_routes"]


def add_admin_user_data_routes(router: Router, *, auth: Auth, data: AdminUserData) -> None:
    """Serve the device, pusher and account data endpoints."""

    async def list_devices(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await data.devices(request.path_params["user_id"])

    async def get_device(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        params = request.path_params
        return await data.device(params["user_id"], params["device_id"])

    async def put_device(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        params = request.path_params
        name = body_object(request).get("display_name")
        await data.rename_device(params["user_id"], params["device_id"], name)
        return {}

    async def delete_device(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        params = request.path_params
        await data.delete_device(params["user_id"], params["device_id"])
        return {}

    async def delete_devices(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        devices = body_object(request).get("devices")
        await data.delete_devices(request.path_params["user_id"], devices)
        return {}

    async def pushers(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await data.pushers(request.path_params["user_id"])

    async def account_data(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await data.account_data(request.path_params["user_id"])

    user = f"{ADMIN_V2}/users/{{user_id}}"
    router.add("GET", f"{user}/devices", list_devices)
    router.add("GET", f"{user}/devices/{{device_id}}", get_device)
    router.add("PUT", f"{user}/devices/{{device_id}}", put_device)
    router.add("DELETE", f"{user}/devices/{{device_id}}", delete_device)
    router.add("POST", f"{user}/delete_devices", delete_devices)
    router.add("GET", f"{ADMIN_V1}/users/{{user_id}}/pushers", pushers)
    router.add("GET", f"{ADMIN_V1}/users/{{user_id}}/accountdata", account_data)
