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
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.web import Request, Router

from .query_client import query_server, unusable_answer

__all__ = ["DIRECTORY_PATH", "FederationDirectoryClient", "add_directory_route"]

DIRECTORY_PATH: Final = "/_matrix/federation/v1/query/directory"
_WHAT: Final = "answer about an alias"


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
        body = await query_server(
            self._client,
            server_name,
            DIRECTORY_PATH,
            {"room_alias": alias},
            what=_WHAT,
            not_found=f"room alias {alias} is not known to {server_name}",
        )
        try:
            answer = decode_untrusted_json(body, type=_Answer)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise unusable_answer(server_name, _WHAT, f"unusable directory answer: {exc}") from None
        if not answer.room_id.startswith("!"):
            raise unusable_answer(server_name, _WHAT, f"{answer.room_id!r} is not a room ID")
        # The alias's server is in the room, or knows who is.
        servers = tuple(dict.fromkeys([*answer.servers, server_name]))
        return ResolvedAlias(answer.room_id, servers)
