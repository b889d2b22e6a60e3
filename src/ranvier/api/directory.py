"""The client-server API's room directory of aliases.

* ``PUT /directory/room/{roomAlias}``: make one of this server's aliases
  point at a room the user is in (409 when the alias exists);
* ``GET /directory/room/{roomAlias}``: where an alias points (asking the
  alias's server over federation when it is another's); the spec asks no
  access token for it;
* ``DELETE /directory/room/{roomAlias}``: by the alias's creator, a server
  admin, or whoever may change the room's canonical alias;
* ``GET /rooms/{roomId}/aliases``: this server's aliases of a room, for
  its members (anyone, for a world-readable room).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.core.directory import RoomDirectory
from ranvier.core.rooms import RoomReader
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

from .rooms import CLIENT_V3, RequestAuth

__all__ = ["add_directory_routes"]


class _Directory:
    def __init__(self, auth: RequestAuth, directory: RoomDirectory, reader: RoomReader) -> None:
        self._auth = auth
        self._directory = directory
        self._reader = reader

    async def put_alias(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        content = request.content
        if not isinstance(content, dict):
            raise MatrixError(
                "the request body must be a JSON object", errcode="M_BAD_JSON", http_status=400
            )
        room_id = content.get("room_id")
        if room_id is None:
            raise MatrixError("room_id is required", errcode="M_MISSING_PARAM", http_status=400)
        if not isinstance(room_id, str):
            raise MatrixError("room_id must be a string", errcode="M_BAD_JSON", http_status=400)
        await self._directory.create_alias(
            requester.user_id,
            request.path_params["room_alias"],
            room_id,
            app_service=requester.app_service,
        )
        return {}

    async def get_alias(self, request: Request) -> Mapping[str, Any]:
        resolved = await self._directory.resolve(request.path_params["room_alias"])
        return {"room_id": resolved.room_id, "servers": list(resolved.servers)}

    async def delete_alias(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        await self._directory.delete_alias(
            requester.user_id,
            request.path_params["room_alias"],
            is_admin=requester.is_admin,
            # A shadow-banned user's state changes never reach the room.
            update_canonical_alias=not requester.shadow_banned,
        )
        return {}

    async def room_aliases(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = request.path_params["room_id"]
        await self._reader.check_can_read(requester.user_id, room_id)
        return {"aliases": await self._directory.room_aliases(room_id)}


def add_directory_routes(
    router: Router, *, auth: RequestAuth, directory: RoomDirectory, reader: RoomReader
) -> None:
    """Serve the alias endpoints listed in the module's docstring."""
    handlers = _Directory(auth, directory, reader)
    path = f"{CLIENT_V3}/directory/room/{{room_alias}}"
    router.add("PUT", path, handlers.put_alias)
    router.add("GET", path, handlers.get_alias)
    router.add("DELETE", path, handlers.delete_alias)
    router.add("GET", f"{CLIENT_V3}/rooms/{{room_id}}/aliases", handlers.room_aliases)
