"""Asking another server's ``/query/*`` endpoint over loopback TLS: its
answer handed back as sent, its 404 passed on as M_NOT_FOUND, its 403 as
M_FORBIDDEN where the endpoint lets a server decline (the profile query,
MSC4170), and any other failure turned into a 502 naming the server and
what was asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.federation.profiles import PROFILE_PATH, FederationProfileClient
from ranvier.federation.query_client import query_server, unusable_answer
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.server import FederationApp
from ranvier.testing import KnownKeys, ZoneDns, serve
from ranvier.testing.network import Pki
from ranvier.web import JsonResponse, Request

from ._resident import open_peer

_PATH = "/_matrix/federation/v1/query/thing"


async def _stand_in(
    tmp_path: Path, nursery: trio.Nursery, path: str, status: int, asked: list[str | None]
) -> tuple[str, FederationHttpClient]:
    """A server answering ``path`` with ``status``, and a client to ask it."""
    pki = Pki.create(tmp_path)
    keys = KnownKeys()

    async def answer(request: Request) -> JsonResponse:
        await trio.lowlevel.checkpoint()
        asked.append(request.query_value("user_id"))
        return JsonResponse({"errcode": "M_X", "error": "x", "status": status}, status=status)

    app = FederationApp(server_name="stand.in", key_lookup=keys)
    app.router.add("GET", path, answer)
    port = await serve(nursery, app, pki.server_context("stand.in"))
    server = app.server_name = f"stand.in:{port}"
    peer = await open_peer(nursery, pki, ZoneDns.loopback("stand.in"), keys, "asking.test")
    return server, peer.client


@pytest.mark.parametrize("forbidden", [None, "not telling"])
async def test_a_403_is_passed_on_only_where_the_endpoint_allows_one(
    tmp_path: Path, nursery: trio.Nursery, forbidden: str | None
) -> None:
    asked: list[str | None] = []
    server, client = await _stand_in(tmp_path, nursery, _PATH, 403, asked)
    with pytest.raises(MatrixError) as caught:
        await query_server(
            client,
            server,
            _PATH,
            {"user_id": "@u:stand.in"},
            what="thing",
            not_found="no thing",
            forbidden=forbidden,
        )
    error = caught.value
    if forbidden is None:
        assert (error.http_status, error.errcode) == (502, "M_UNKNOWN")
    else:
        assert (error.http_status, error.errcode, error.message) == (
            403,
            "M_FORBIDDEN",
            forbidden,
        )
    assert asked == ["@u:stand.in"]


async def test_a_server_declining_a_profile_query_is_a_403_not_a_failure(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """MSC4170 (v1.12): a server may refuse profile look-ups over federation
    with 403; the asking user is told so, not that the server failed."""
    asked: list[str | None] = []
    server, client = await _stand_in(tmp_path, nursery, PROFILE_PATH, 403, asked)
    with pytest.raises(MatrixError) as caught:
        await FederationProfileClient(client).query_profile(server, f"@u:{server}")
    assert (caught.value.http_status, caught.value.errcode) == (403, "M_FORBIDDEN")
    assert caught.value.message == f"{server} does not disclose the profile of @u:{server}"
    assert asked == [f"@u:{server}"]


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
