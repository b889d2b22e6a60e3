"""Asking another server's ``/query/*`` endpoint over loopback TLS: its
answer handed back as sent, its 404 passed on as M_NOT_FOUND and any other
failure turned into a 502 naming the server and what was asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.federation.query_client import query_server, unusable_answer
from ranvier.federation.transport.server import FederationApp
from ranvier.testing import KnownKeys, ZoneDns, serve
from ranvier.testing.network import Pki
from ranvier.web import JsonResponse, Request

from ._resident import open_peer

_PATH = "/_matrix/federation/v1/query/thing"


@pytest.mark.parametrize("status", [200, 404, 403, 500])
async def test_a_query_gives_the_answer_or_says_why_not(
    tmp_path: Path, nursery: trio.Nursery, status: int
) -> None:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    asked: list[str | None] = []

    async def thing(request: Request) -> JsonResponse:
        await trio.lowlevel.checkpoint()
        asked.append(request.query_value("name"))
        return JsonResponse({"errcode": "M_X", "error": "x", "status": status}, status=status)

    app = FederationApp(server_name="stand.in", key_lookup=keys)
    app.router.add("GET", _PATH, thing)
    port = await serve(nursery, app, pki.server_context("stand.in"))
    server = app.server_name = f"stand.in:{port}"
    peer = await open_peer(nursery, pki, ZoneDns.loopback("stand.in"), keys, "asking.test")
    ask = query_server(
        peer.client, server, _PATH, {"name": "n"}, what="thing", not_found="no thing n"
    )
    if status == 200:
        assert b'"status":200' in await ask
    else:
        with pytest.raises(MatrixError) as caught:
            await ask
        error = caught.value
        if status == 404:
            assert (error.http_status, error.errcode, error.message) == (
                404,
                "M_NOT_FOUND",
                "no thing n",
            )
        else:
            assert (error.http_status, error.errcode) == (502, "M_UNKNOWN")
            assert error.message.startswith(f"{server} gave no usable thing: ")
    assert asked == ["n"]


def test_an_unusable_answer_names_the_server_and_the_reason() -> None:
    error = unusable_answer("there.test", "profile", "not JSON")
    assert (error.http_status, error.errcode) == (502, "M_UNKNOWN")
    assert error.message == "there.test gave no usable profile: not JSON"
