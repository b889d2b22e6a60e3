"""Fetching another server's media against a stand-in server over HTTPS on
loopback: answers that point elsewhere (``Location``), servers without the
federation media endpoints, and answers that cannot be used."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.federation.media import FederationMediaClient
from ranvier.federation.transport.client import FederationHttpClient, FederationResponseError
from ranvier.protocol.signing import generate_signing_key
from ranvier.testing import KnownKeys, Pki, RemoteHomeserver
from ranvier.web import Request, StreamResponse

ORIGIN = "origin.test"
PICTURE = b"\x89PNG pretend" * 100


def _bytes(data: bytes, *headers: tuple[str, str]) -> StreamResponse:
    async def body() -> AsyncGenerator[bytes, None]:
        yield data

    return StreamResponse(200, (*headers, ("content-length", str(len(data)))), body)


@dataclass
class Setup:
    remote: RemoteHomeserver
    client: FederationHttpClient

    @property
    def media(self) -> FederationMediaClient:
        return FederationMediaClient(self.client)


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    pki = Pki.create(tmp_path)
    key = generate_signing_key("o1")
    remote = RemoteHomeserver("127.0.0.1:{port}", key_lookup=KnownKeys({ORIGIN: key}))

    async def download(request: Request) -> StreamResponse:
        media_id = request.path_params["mediaId"]
        if media_id == "olderServer":
            raise MatrixError("unrecognized request", errcode="M_UNRECOGNIZED", http_status=404)
        if media_id == "garbled":
            return _bytes(b"not multipart", ("content-type", "multipart/mixed; boundary=zz"))
        location = f"https://{remote.server_name}/cdn/picture"
        return _bytes(
            (
                "--zz\r\nContent-Type: application/json\r\n\r\n{}\r\n"
                f"--zz\r\nLocation: {location}\r\n\r\n\r\n--zz--\r\n"
            ).encode(),
            ("content-type", "multipart/mixed; boundary=zz"),
        )

    async def cdn(request: Request) -> StreamResponse:
        return _bytes(
            PICTURE,
            ("content-type", "image/png"),
            ("content-disposition", 'inline; filename="from-cdn.png"'),
        )

    async def legacy(request: Request) -> StreamResponse:
        assert request.query_value("allow_remote") == "false"
        return _bytes(
            b"old style",
            ("content-type", "text/plain"),
            ("content-disposition", 'attachment; filename="old.txt"'),
        )

    router = remote.app.router
    router.add("GET", "/_matrix/federation/v1/media/download/{mediaId}", download)
    router.add("GET", "/cdn/{name}", cdn)
    router.add("GET", "/_matrix/media/v3/download/{serverName}/{mediaId}", legacy)
    await remote.start(nursery, pki.server_context())
    async with FederationHttpClient(ORIGIN, key, ssl_context=pki.client_context()) as client:
        yield Setup(remote, client)


async def test_a_location_is_followed(setup: Setup) -> None:
    fetched = await setup.media.fetch(
        setup.remote.server_name, "elsewhere", max_bytes=10_000, timeout_ms=1000
    )
    assert fetched.data == PICTURE
    assert (fetched.content_type, fetched.filename) == ("image/png", "from-cdn.png")


async def test_what_a_location_holds_is_held_to_the_limit(setup: Setup) -> None:
    with pytest.raises(MatrixError) as refused:
        await setup.media.fetch(
            setup.remote.server_name, "elsewhere", max_bytes=100, timeout_ms=1000
        )
    assert (refused.value.http_status, refused.value.errcode) == (502, "M_TOO_LARGE")


async def test_a_server_without_the_endpoints_is_asked_the_old_way(setup: Setup) -> None:
    fetched = await setup.media.fetch(
        setup.remote.server_name, "olderServer", max_bytes=10_000, timeout_ms=1000
    )
    assert (fetched.data, fetched.content_type, fetched.filename) == (
        b"old style",
        "text/plain",
        "old.txt",
    )


async def test_an_unreadable_answer_is_a_bad_gateway(setup: Setup) -> None:
    with pytest.raises(MatrixError) as refused:
        await setup.media.fetch(
            setup.remote.server_name, "garbled", max_bytes=10_000, timeout_ms=1000
        )
    assert (refused.value.http_status, refused.value.errcode) == (502, "M_UNKNOWN")


async def test_only_https_addresses_are_fetched(setup: Setup) -> None:
    with pytest.raises(FederationResponseError, match="not an https"):
        await setup.client.fetch_url(f"http://{setup.remote.server_name}/cdn/picture")
