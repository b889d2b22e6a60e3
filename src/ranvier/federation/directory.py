"""Room aliases over federation: ``GET /_matrix/federation/v1/query/directory``.

Both sides: :func:`add_directory_route` answers other servers asking what
one of our aliases points at, and :class:`FederationDirectoryClient` asks
another server about one of its aliases for
:class:`~ranvier.core.directory.RoomDirectory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ranvier.core.directory import ResolvedAlias, RoomDirectory
from ranvier.errors import MatrixError
from ranvier.federation.transport.client import (
    FederationError,
    FederationHttpClient,
    FederationRequestError,
)
from ranvier.web import Request, Router

__all__ = ["DIRECTORY_PATH", "FederationDirectoryClient", "add_directory_route"]

DIRECTORY_PATH: Final = "/_matrix/federation/v1/query/directory"


class _Answer(msgspec.Struct):
    room_id: str
    servers: list[str]


def add_directory_route(router: Router, directory: RoomDirectory) -> None:
    """Serve ``/query/directory`` for our own aliases (404 for any other)."""

    async def query_directory(request: Request) -> Mapping[str, Any]:
        alias = request.query_value("room_alias")
        if alias is None:
            raise MatrixError(
                "the query parameter 'room_alias' is required",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        resolved = await directory.resolve_local(alias)
        return {"room_id": resolved.room_id, "servers": list(resolved.servers)}

    router.add("GET", DIRECTORY_PATH, query_directory)


class FederationDirectoryClient:
    """Asks the server an alias belongs to where it points."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def query_directory(self, server_name: str, alias: str) -> ResolvedAlias:
        try:
            response = await self._client.request(
                "GET", server_name, DIRECTORY_PATH, query={"room_alias": alias}
            )
        except FederationRequestError as exc:
            if exc.status == 404:
                raise MatrixError(
                    f"room alias {alias} is not known to {server_name}",
                    errcode="M_NOT_FOUND",
                    http_status=404,
                ) from None
            raise _unusable(server_name, str(exc)) from None
        except FederationError as exc:
            raise _unusable(server_name, str(exc)) from None
        try:
            answer = msgspec.json.decode(response.body, type=_Answer)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _unusable(server_name, f"unusable directory answer: {exc}") from None
        if not answer.room_id.startswith("!"):
            raise _unusable(server_name, f"{answer.room_id!r} is not a room ID")
        # The alias's server is in the room, or knows who is.
        servers = tuple(dict.fromkeys([*answer.servers, server_name]))
        return ResolvedAlias(answer.room_id, servers)


def _unusable(server_name: str, message: str) -> MatrixError:
    return MatrixError(
        f"{server_name} gave no usable answer about an alias: {message}",
        errcode="M_UNKNOWN",
        http_status=502,
    )
