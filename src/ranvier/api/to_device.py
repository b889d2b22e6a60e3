"""``PUT /sendToDevice/{eventType}/{txnId}``. See :mod:`ranvier.core.to_device`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.client_txns import TxnOwner
from ranvier.core.to_device import ToDevice
from ranvier.web import Request, Router

__all__ = ["add_to_device_routes"]


def add_to_device_routes(router: Router, *, auth: Auth, to_device: ToDevice) -> None:
    """Serve sending to-device messages."""

    async def send(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await to_device.send(
            TxnOwner.of(requester), params["event_type"], params["txn_id"], json_object(request)
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("PUT", f"{prefix}/sendToDevice/{{event_type}}/{{txn_id}}", send)
