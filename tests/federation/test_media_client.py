"""Fetching another server's media against a stand-in server over HTTPS on
loopback: answers that point elsewhere (``Location``), servers without the
federation media endpoints, and answers that cannot be used."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from ranvier.core.media import FetchedMedia
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


def _flood(head: bytes, *headers: tuple[str, str]) -> StreamResponse:
    """An answer without a length that goes on and on (a megabyte)."""

    async def body() -> AsyncGenerator[bytes, None]:
        yield head
        for _ in range(1000):
            yield b"x" * 1000

    return StreamResponse(200, headers, body)


@dataclass
class Setup:
    remote: RemoteHomeserver
    client: FederationHttpClient
    #: What each fetch wrote, piece by piece.
    written: list[list[bytes]] = field(default_factory=list)

    async def fetch(self, media_id: str, max_bytes: int = 10_000) -> FetchedMedia:
        pieces: list[bytes] = []
        self.written.append(pieces)

        async def write(chunks: AsyncIterable[bytes]) -> int:
            async for chunk in chunks:
                pieces.append(chunk)
            return sum(len(piece) for piece in pieces)

        return await FederationMediaClient(self.client).fetch(
            self.remote.server_name, media_id, max_bytes=max_bytes, timeout_ms=30_000, write=write
        )


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    pki = Pki.create(tmp_path)
    key = generate_signing_key("o1")
    remote = RemoteHomeserver("127.0.0.1:{port}", key_lookup=KnownKeys({ORIGIN: key}))

    async def download(request: Request) -> StreamResponse:
        media_id = request.path_params["mediaId"]
        if media_id == "olderServer":
            raise MatrixError("unrecognized request", errcode="M_UNRECOGNIZED", http_status=404)
        if media_id in ("flood", "floodElsewhere"):
            return _flood(
                b"--zz\r\n\r\n{}\r\n--zz\r\n"
                + (
                    f"Location: https://{remote.server_name}/cdn/flood\r\n\r\n\r\n--zz--".encode()
                    if media_id == "floodElsewhere"
                    else b"Content-Type: text/plain\r\n\r\n"
                ),
                ("content-type", "multipart/mixed; boundary=zz"),
            )
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
        if request.path_params["name"] == "flood":
            return _flood(b"", ("content-type", "text/plain"))
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
    fetched = await setup.fetch("elsewhere")
    assert b"".join(setup.written[0]) == PICTURE
    assert (fetched.content_type, fetched.filename, fetched.size) == (
        "image/png",
        "from-cdn.png",
        len(PICTURE),
    )


async def test_what_a_location_holds_is_held_to_the_limit(setup: Setup) -> None:
    with pytest.raises(MatrixError) as refused:
        await setup.fetch("elsewhere", max_bytes=100)
    assert (refused.value.http_status, refused.value.errcode) == (502, "M_TOO_LARGE")


@pytest.mark.parametrize("media_id", ["flood", "floodElsewhere"])
async def test_an_answer_without_a_length_is_cut_off_at_the_limit(
    setup: Setup, media_id: str
) -> None:
    with pytest.raises(MatrixError) as refused:
        await setup.fetch(media_id, max_bytes=10_000)
    assert (refused.value.http_status, refused.value.errcode) == (502, "M_TOO_LARGE")
    # What was handed on before the cut stays within the limit and framing.
    assert sum(len(piece) for piece in setup.written[0]) <= 10_000 + 64 * 1024


async def test_a_server_without_the_endpoints_is_asked_the_old_way(setup: Setup) -> None:
    fetched = await setup.fetch("olderServer")
    assert b"".join(setup.written[0]) == b"old style"
    assert (fetched.content_type, fetched.filename, fetched.size) == ("text/plain", "old.txt", 9)


async def test_an_unreadable_answer_is_a_bad_gateway(setup: Setup) -> None:
    with pytest.raises(MatrixError) as refused:
        await setup.fetch("garbled")
    assert (refused.value.http_status, refused.value.errcode) == (502, "M_UNKNOWN")


async def test_only_https_addresses_are_fetched(setup: Setup) -> None:
    async def never(headers: object, chunks: object) -> None:
        raise AssertionError("nothing is fetched")

    with pytest.raises(FederationResponseError, match="not an https"):
        await setup.client.fetch_url(f"http://{setup.remote.server_name}/cdn/picture", never)
