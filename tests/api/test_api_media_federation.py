"""Media between two servers over loopback TLS: A serves its media over
federation as the spec's multipart answer, and B fetches it for its users,
keeps it, and serves it (and thumbnails of it) from its own store."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from PIL import Image

from ranvier.config import MediaConfig
from ranvier.federation.transport.client import FederationRequestError
from ranvier.protocol.media import parse_multipart
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki

AUTHED = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"


@dataclass
class Pair:
    a: TestHomeserver
    b: TestHomeserver
    http_a: httpx.AsyncClient
    http_b: httpx.AsyncClient
    alice: TestUser
    bob: TestUser

    async def upload_at_a(
        self, data: bytes, content_type: str, filename: str | None = None
    ) -> tuple[str, str]:
        """Alice's upload on A: (server name, media ID)."""
        response = await self.http_a.post(
            f"{LEGACY}/upload",
            content=data,
            params={} if filename is None else {"filename": filename},
            headers={
                "Authorization": f"Bearer {self.alice.access_token}",
                "Content-Type": content_type,
            },
        )
        assert response.status_code == 200, response.text
        server_name, _, media_id = (
            response.json()["content_uri"].removeprefix("mxc://").partition("/")
        )
        return server_name, media_id

    async def get_at_b(self, path: str, **params: Any) -> httpx.Response:
        return await self.http_b.get(
            path, params=params, headers={"Authorization": f"Bearer {self.bob.access_token}"}
        )


@asynccontextmanager
async def two_servers(tmp_path: Path, *, b_limit: int | None = None) -> AsyncIterator[Pair]:
    pki = Pki.create(tmp_path)
    b_config = config_for_tests(tmp_path / "b", federation=pki)
    if b_limit is not None:
        b_config = msgspec.structs.replace(b_config, media=MediaConfig(max_upload_bytes=b_limit))
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", config=b_config) as b,
        httpx.AsyncClient(base_url=a.client_url, timeout=60) as http_a,
        httpx.AsyncClient(base_url=b.client_url, timeout=60) as http_b,
    ):
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        yield Pair(a, b, http_a, http_b, alice, bob)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_user_of_b_downloads_media_of_a_which_b_then_keeps(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    async with two_servers(tmp_path) as pair:
        origin, media_id = await pair.upload_at_a(data, "application/pdf", "report.pdf")
        first = await pair.get_at_b(f"{AUTHED}/download/{origin}/{media_id}")
        kept = pair.b.server.config.media_store / "remote" / origin / media_id
        kept_bytes = kept.read_bytes()
        # What B serves next comes from its store, not from A.
        kept.write_bytes(b"B's copy")
        second = await pair.get_at_b(f"{AUTHED}/download/{origin}/{media_id}")
        legacy = await pair.http_b.get(f"{LEGACY}/download/{origin}/{media_id}")
        record = await pair.b.server.storage.media.media(origin, media_id)

    assert origin == pair.a.server_name != pair.b.server_name
    assert first.status_code == 200, first.text
    assert first.content == kept_bytes == data
    assert first.headers["content-type"] == "application/pdf"
    assert first.headers["content-disposition"] == 'attachment; filename="report.pdf"'
    assert second.content == legacy.content == b"B's copy"
    assert record is not None
    assert (record.user_id, record.content_type, record.upload_name, record.size) == (
        None,
        "application/pdf",
        "report.pdf",
        len(data),
    )


async def test_thumbnails_of_remote_images_are_made_by_b(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as pair:
        origin, media_id = await pair.upload_at_a(_png(500, 500), "image/png")
        response = await pair.get_at_b(
            f"{AUTHED}/thumbnail/{origin}/{media_id}", width=64, height=64, method="crop"
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.size == (96, 96)


async def test_a_serves_its_media_as_a_signed_multipart_answer(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as pair:
        origin, media_id = await pair.upload_at_a(b"\r\n--plain text--\r\n", "text/plain", "t.txt")
        _, image_id = await pair.upload_at_a(_png(400, 300), "image/png")
        client = pair.b.server.federation_client
        download = await client.request(
            "GET", origin, f"/_matrix/federation/v1/media/download/{media_id}"
        )
        thumbnail = await client.request(
            "GET",
            origin,
            f"/_matrix/federation/v1/media/thumbnail/{image_id}",
            query={"width": 30, "height": 30, "method": "crop"},
        )
        with pytest.raises(FederationRequestError) as unknown:
            await client.request(
                "GET", origin, "/_matrix/federation/v1/media/download/NoSuchMedia000000000"
            )
        async with httpx.AsyncClient(verify=False) as plain:
            unsigned = await plain.get(
                f"https://{origin}/_matrix/federation/v1/media/download/{media_id}"
            )

    content_type = download.headers["content-type"]
    assert content_type.startswith("multipart/mixed; boundary=")
    answer = parse_multipart(content_type, download.body)
    assert answer.body == b"\r\n--plain text--\r\n"
    assert answer.content_type == "text/plain"
    assert answer.filename == "t.txt"
    # The first part is the JSON metadata, an empty object for now.
    boundary = content_type.partition("boundary=")[2]
    assert download.body.startswith(
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n".encode()
    )
    pictured = parse_multipart(thumbnail.headers["content-type"], thumbnail.body)
    assert pictured.content_type == "image/png"
    with Image.open(io.BytesIO(pictured.body)) as picture:
        assert picture.size == (32, 32)
    assert (unknown.value.status, unknown.value.errcode) == (404, "M_NOT_FOUND")
    assert unsigned.status_code == 401


async def test_remote_failures_as_the_spec_says(tmp_path: Path) -> None:
    async with two_servers(tmp_path, b_limit=1000) as pair:
        origin, large = await pair.upload_at_a(b"x" * 1001, "text/plain")
        _, small = await pair.upload_at_a(b"x" * 1000, "text/plain")
        answers = [
            await pair.get_at_b(f"{AUTHED}/download/{origin}/{large}"),
            await pair.get_at_b(f"{AUTHED}/download/{origin}/NoSuchMedia000000000"),
            await pair.get_at_b(f"{AUTHED}/download/127.0.0.1:1/NoServerThere0000000"),
            await pair.http_b.get(f"{LEGACY}/download/{origin}/{small}?allow_remote=false"),
        ]
        fetched = await pair.get_at_b(f"{AUTHED}/download/{origin}/{small}")
        nothing_kept = await pair.b.server.storage.media.media(origin, large)
    assert [(answer.status_code, answer.json()["errcode"]) for answer in answers] == [
        (502, "M_TOO_LARGE"),
        (404, "M_NOT_FOUND"),
        (502, "M_UNKNOWN"),
        (404, "M_NOT_FOUND"),
    ]
    assert fetched.content == b"x" * 1000
    assert nothing_kept is None


_UNICODE_NAME = "\u2603"  # a snowman


@pytest.mark.parametrize("prefix", [AUTHED, LEGACY])
async def test_names_and_dispositions_survive_the_trip_to_b(tmp_path: Path, prefix: str) -> None:
    """What B serves of A's media says what A would: a Unicode name (as
    RFC 6266's filename*), none at all, a safe type given with parameters
    and in capitals inline, an unsafe one as an attachment."""
    async with two_servers(tmp_path) as pair:
        named = await pair.upload_at_a(b"png?", "image/png", _UNICODE_NAME)
        unnamed = await pair.upload_at_a(b"plain", "image/png")
        text = await pair.upload_at_a(b"hello", "Text/Plain; charset=utf-8")
        svg = await pair.upload_at_a(b"<svg/>", "image/svg")
        answers = {}
        for what, (origin, media_id) in (
            ("named", named),
            ("unnamed", unnamed),
            ("text", text),
            ("svg", svg),
        ):
            answers[what] = await pair.get_at_b(f"{prefix}/download/{origin}/{media_id}")
        origin, media_id = named
        renamed = await pair.get_at_b(f"{prefix}/download/{origin}/{media_id}/%E2%98%95")

    assert all(answer.status_code == 200 for answer in answers.values())
    assert answers["named"].headers["content-disposition"] == "inline; filename*=utf-8''%E2%98%83"
    assert answers["unnamed"].headers["content-disposition"] == "inline"
    assert answers["text"].headers["content-disposition"] == "inline"
    assert answers["svg"].headers["content-disposition"] == "attachment"
    assert renamed.headers["content-disposition"] == "inline; filename*=utf-8''%E2%98%95"


async def test_a_thumbnail_over_federation_is_the_one_a_serves_its_users(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as pair:
        origin, image_id = await pair.upload_at_a(_png(600, 400), "image/png", "test.png")
        # A content type no one knows is kept as given.
        _, odd_id = await pair.upload_at_a(b"odd", "img/png", "test.png")
        params = {"width": 32, "height": 32, "method": "scale"}
        local = await pair.http_a.get(
            f"{AUTHED}/thumbnail/{origin}/{image_id}",
            params=params,
            headers={"Authorization": f"Bearer {pair.alice.access_token}"},
        )
        remote = await pair.b.server.federation_client.request(
            "GET", origin, f"/_matrix/federation/v1/media/thumbnail/{image_id}", query=params
        )
        odd = await pair.get_at_b(f"{AUTHED}/download/{origin}/{odd_id}")

    assert local.status_code == 200, local.text
    pictured = parse_multipart(remote.headers["content-type"], remote.body)
    assert pictured.content_type == local.headers["content-type"]
    assert pictured.body == local.content
    assert (odd.status_code, odd.content) == (200, b"odd")
    assert odd.headers["content-type"] == "img/png"
