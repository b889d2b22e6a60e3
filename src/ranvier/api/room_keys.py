"""Server-side key backups: ``/room_keys/version[/{version}]`` and
``/room_keys/keys[/{roomId}[/{sessionId}]]``. See :mod:`ranvier.core.room_keys`.

Every endpoint takes the requester's access token, and acts on the
requester's own backups alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.room_keys import RoomKeyBackups
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_room_key_routes"]

_Handler = Callable[[Request], Awaitable[Mapping[str, Any]]]


def _version_param(request: Request) -> str:
    """The required ``version`` query parameter of the keys endpoints."""
    version = request.query_value("version")
    if version is None:
        raise MatrixError(
            "the query parameter 'version' is required",
            errcode="M_MISSING_PARAM",
            http_status=400,
        )
    return version


def add_room_key_routes(router: Router, *, auth: Auth, backups: RoomKeyBackups) -> None:
    """Serve the key backup endpoints of the client-server API."""

    async def create_version(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await backups.create_version(requester.user_id, json_object(request))

    async def current_version(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await backups.version_info(requester.user_id)

    async def get_version(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await backups.version_info(requester.user_id, request.path_params["version"])

    async def update_version(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await backups.update_version(
            requester.user_id, request.path_params["version"], json_object(request)
        )

    async def delete_version(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await backups.delete_version(requester.user_id, request.path_params["version"])

    async def put_keys(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        return await backups.put_keys(
            requester.user_id,
            _version_param(request),
            json_object(request),
            room_id=params.get("room_id"),
            session_id=params.get("session_id"),
        )

    async def get_keys(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        return await backups.get_keys(
            requester.user_id,
            _version_param(request),
            room_id=params.get("room_id"),
            session_id=params.get("session_id"),
        )

    async def delete_keys(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        return await backups.delete_keys(
            requester.user_id,
            _version_param(request),
            room_id=params.get("room_id"),
            session_id=params.get("session_id"),
        )

    keys: dict[str, _Handler] = {"PUT": put_keys, "GET": get_keys, "DELETE": delete_keys}
    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/room_keys/version", create_version)
        router.add("GET", f"{prefix}/room_keys/version", current_version)
        version = f"{prefix}/room_keys/version/{{version}}"
        router.add("GET", version, get_version)
        router.add("PUT", version, update_version)
        router.add("DELETE", version, delete_version)
        for path in ("", "/{room_id}", "/{room_id}/{session_id}"):
            for method, handler in keys.items():
                router.add(method, f"{prefix}/room_keys/keys{path}", handler)
