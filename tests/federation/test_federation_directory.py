"""The federation directory query, ``GET /_matrix/federation/v1/query/directory``,
between two homeservers over loopback TLS: answered for the server's own
aliases, 404 for any other, 400 without an alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from ranvier.core.directory import ResolvedAlias
from ranvier.errors import MatrixError
from ranvier.federation.directory import DIRECTORY_PATH, FederationDirectoryClient
from ranvier.federation.transport.client import FederationRequestError
from ranvier.federation.transport.server import FederationApp
from ranvier.testing import KnownKeys, ZoneDns, serve
from ranvier.testing.homeserver import open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.web import JsonResponse, Request

from ._resident import open_peer

ALIAS_QUERY = "room_alias"


async def test_the_directory_query_is_answered_for_local_aliases_only(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
    ):
        alice = (await a.register_user("alice")).user_id
        room_id = await a.server.create_room(alice)
        alias = f"#here:{a.server_name}"
        await a.server.room_directory.create_alias(alice, alias, room_id)
        client = b.server.federation_client
        answer = await client.get_json(a.server_name, DIRECTORY_PATH, query={ALIAS_QUERY: alias})
        assert answer == {"room_id": room_id, "servers": [a.server_name]}
        # B's directory client reads the same answer.
        resolved = await b.server.room_directory.resolve(alias)
        assert (resolved.room_id, resolved.servers) == (room_id, (a.server_name,))
        for other in (f"#here:{b.server_name}", "#x:example.org", f"#nothing:{a.server_name}"):
            with pytest.raises(FederationRequestError) as caught:
                await client.get_json(a.server_name, DIRECTORY_PATH, query={ALIAS_QUERY: other})
            assert (caught.value.status, caught.value.errcode) == (404, "M_NOT_FOUND")
        with pytest.raises(FederationRequestError) as caught:
            await client.get_json(a.server_name, DIRECTORY_PATH)
        assert (caught.value.status, caught.value.errcode) == (400, "M_MISSING_PARAM")


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"room_id": "!r:stand.in", "servers": ["stand.in"]}, 200),
        ({"room_id": "not a room", "servers": []}, 502),
        ({"room_id": "!r:stand.in", "servers": "stand.in"}, 502),
        ({"servers": []}, 502),
        ({"errcode": "M_NOT_FOUND", "error": "no such alias"}, 404),
        ({"errcode": "M_FORBIDDEN", "error": "not telling"}, 403),
    ],
)
async def test_the_client_checks_what_the_alias_server_answers(
    tmp_path: Path, nursery: trio.Nursery, answer: dict[str, Any], status: int
) -> None:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    queried: list[str | None] = []

    async def directory(request: Request) -> JsonResponse:
        await trio.lowlevel.checkpoint()
        queried.append(request.query_value("room_alias"))
        return JsonResponse(answer, status=status if status != 502 else 200)

    app = FederationApp(server_name="stand.in", key_lookup=keys)
    app.router.add("GET", DIRECTORY_PATH, directory)
    port = await serve(nursery, app, pki.server_context("stand.in"))
    app.server_name = f"stand.in:{port}"
    peer = await open_peer(nursery, pki, ZoneDns.loopback("stand.in"), keys, "asking.test")
    client = FederationDirectoryClient(peer.client)
    alias = f"#room:stand.in:{port}"
    if status == 200:
        resolved = await client.query_directory(f"stand.in:{port}", alias)
        # The alias's own server is always one to try.
        assert resolved == ResolvedAlias("!r:stand.in", ("stand.in", f"stand.in:{port}"))
    else:
        with pytest.raises(MatrixError) as caught:
            await client.query_directory(f"stand.in:{port}", alias)
        expected = {404: "M_NOT_FOUND"}.get(status, "M_UNKNOWN")
        assert (caught.value.http_status, caught.value.errcode) == (
            404 if status == 404 else 502,
            expected,
        )
    assert queried == [alias]
