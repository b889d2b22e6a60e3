"""Dehydrated devices (MSC3814), at the MSC's unstable paths:
``PUT``, ``GET`` and ``DELETE .../dehydrated_device`` and ``POST
.../dehydrated_device/{device_id}/events``. See
:mod:`ranvier.core.dehydrated_devices`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.account import json_object
from ranvier.api.auth import Auth
from ranvier.core.dehydrated_devices import DehydratedDevices
from ranvier.web import Request, Router

__all__ = ["DEHYDRATED_DEVICE_PATH", "add_dehydrated_device_routes"]

DEHYDRATED_DEVICE_PATH: Final = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"


def add_dehydrated_device_routes(
    router: Router, *, auth: Auth, dehydrated: DehydratedDevices
) -> None:
    """Serve the requester's dehydrated device and its messages."""

    async def get_device(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await dehydrated.get(requester.user_id)

    async def put_device(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await dehydrated.put(requester.user_id, json_object(request))

    async def delete_device(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await dehydrated.delete(requester.user_id)

    async def events(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        # The body may be left out for the first page.
        body = {} if request.content is None and not request.body else json_object(request)
        return await dehydrated.events(requester.user_id, request.path_params["device_id"], body)

    router.add("GET", DEHYDRATED_DEVICE_PATH, get_device)
    router.add("PUT", DEHYDRATED_DEVICE_PATH, put_device)
    router.add("DELETE", DEHYDRATED_DEVICE_PATH, delete_device)
    router.add("POST", f"{DEHYDRATED_DEVICE_PATH}/{{device_id}}/events", events)
