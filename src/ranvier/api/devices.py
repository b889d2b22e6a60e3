"""Devices: ``/devices``, ``/devices/{deviceId}`` and ``/delete_devices``.

Deleting takes user-interactive authentication (:mod:`ranvier.core.uia`):
the 401 answers carry the flows, and the session to send back; a retry of
a deletion done answers as the first did. An application service needs
none, and creates a device by naming one its user does not have (201).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.api.uia_answers import answer_after_uia
from ranvier.core.accounts import Requester
from ranvier.core.devices import Devices
from ranvier.core.uia import DELETE_DEVICES, UserInteractiveAuth
from ranvier.errors import BadJsonError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_device_routes"]


def add_device_routes(
    router: Router, *, auth: Auth, devices: Devices, uia: UserInteractiveAuth
) -> None:
    """Serve listing, reading, renaming and deleting the requester's devices."""

    async def list_devices(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return {"devices": await devices.list(requester.user_id)}

    async def get_device(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await devices.get(requester.user_id, request.path_params["device_id"])

    async def rename_device(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request)
        device_id = request.path_params["device_id"]
        if requester.app_service is not None and await devices.create(
            requester.user_id, device_id, body.get("display_name")
        ):
            return JsonResponse({}, status=201)
        if "display_name" in body:
            await devices.rename(requester.user_id, device_id, body["display_name"])
        else:
            await devices.get(requester.user_id, device_id)
        return JsonResponse({})

    async def delete(
        requester: Requester, device_ids: list[str], auth_dict: object
    ) -> JsonResponse:
        async def perform() -> dict[str, Any]:
            await devices.delete(requester.user_id, device_ids)
            return {}

        if requester.app_service is not None:
            return JsonResponse(await perform())
        return await answer_after_uia(
            uia,
            requester,
            DELETE_DEVICES,
            auth_dict,
            request={"devices": sorted(set(device_ids))},
            perform=perform,
        )

    async def delete_device(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request) if request.content is not None or request.body else {}
        return await delete(requester, [request.path_params["device_id"]], body.get("auth"))

    async def delete_devices(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request)
        device_ids = body.get("devices")
        if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
            raise BadJsonError("'devices' must be a list of device IDs")
        return await delete(requester, device_ids, body.get("auth"))

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/devices", list_devices)
        router.add("GET", f"{prefix}/devices/{{device_id}}", get_device)
        router.add("PUT", f"{prefix}/devices/{{device_id}}", rename_device)
        router.add("DELETE", f"{prefix}/devices/{{device_id}}", delete_device)
        router.add("POST", f"{prefix}/delete_devices", delete_devices)
