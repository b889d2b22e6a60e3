"""End-to-end encryption keys: ``/keys/upload``, ``/keys/query``,
``/keys/claim``, ``/keys/changes``, ``/keys/device_signing/upload`` and
``/keys/signatures/upload``. See :mod:`ranvier.core.e2e_keys`.

Cross-signing uploads that replace keys take the user's password through
user-interactive authentication: the 401 answers carry the flows and the
session to send back, as deleting a device does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.devices import AuthRequired
from ranvier.core.e2e_keys import E2eKeys
from ranvier.core.pagination import parse_sync_token
from ranvier.errors import MatrixError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_key_routes"]


def add_key_routes(router: Router, *, auth: Auth, keys: E2eKeys) -> None:
    """Serve the keys endpoints of the client-server API."""

    async def upload(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await keys.upload(requester.user_id, requester.device_id, json_object(request))

    async def query(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await keys.query(requester.user_id, json_object(request))

    async def claim(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return await keys.claim(json_object(request))

    async def changes(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        since, upto = request.query_value("from"), request.query_value("to")
        if since is None or upto is None:
            raise MatrixError(
                "from and to are required", errcode="M_MISSING_PARAM", http_status=400
            )
        return await keys.changes(
            requester.user_id, parse_sync_token(since), parse_sync_token(upto)
        )

    async def upload_cross_signing(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        try:
            answer = await keys.upload_cross_signing(
                requester.user_id,
                json_object(request),
                by_app_service=requester.app_service is not None,
            )
        except AuthRequired as required:
            return JsonResponse(required.body, status=401)
        return JsonResponse(answer)

    async def upload_signatures(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await keys.upload_signatures(requester.user_id, json_object(request))

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/keys/upload", upload)
        router.add("POST", f"{prefix}/keys/query", query)
        router.add("POST", f"{prefix}/keys/claim", claim)
        router.add("GET", f"{prefix}/keys/changes", changes)
        router.add("POST", f"{prefix}/keys/device_signing/upload", upload_cross_signing)
        router.add("POST", f"{prefix}/keys/signatures/upload", upload_signatures)
