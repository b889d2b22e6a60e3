"""Thumbnails over real HTTP, of real images made with Pillow here: sizes
and methods, formats, the original for small images, refusals, the cache."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from PIL import Image

from ranvier.config import MediaConfig
from ranvier.testing.homeserver import TestHomeserver, TestUser, config_for_tests
from ranvier.testing.homeserver import open_test_homeserver as open_server

AUTHED = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"


def image(width: int, height: int, format: str = "PNG", **save: Any) -> bytes:
    """A picture with a left and a right half of different colours."""
    picture = Image.new("RGB", (width, height), (200, 30, 30))
    picture.paste((30, 30, 200), (width // 2, 0, width, height))
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **save)
    return buffer.getvalue()


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    alice: TestUser

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.alice.access_token}"}

    async def upload(self, data: bytes, content_type: str) -> str:
        response = await self.http.post(
            f"{LEGACY}/upload", content=data, headers={**self.headers, "Content-Type": content_type}
        )
        assert response.status_code == 200, response.text
        uri: str = response.json()["content_uri"]
        return uri.removeprefix("mxc://")

    async def thumbnail(self, path: str, prefix: str = AUTHED, **params: Any) -> httpx.Response:
        return await self.http.get(
            f"{prefix}/thumbnail/{path}", params=params, headers=self.headers
        )


@asynccontextmanager
async def open_env(tmp_path: Path, **media: Any) -> AsyncIterator[Env]:
    config = config_for_tests(tmp_path)
    if media:
        config = msgspec.structs.replace(config, media=MediaConfig(**media))
    async with open_server(tmp_path, config=config) as hs:
        alice = await hs.register_user("alice")
        async with httpx.AsyncClient(base_url=hs.client_url, timeout=60) as http:
            yield Env(hs, http, alice)


def _size_and_format(response: httpx.Response) -> tuple[int, int, str | None]:
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        return thumbnail.width, thumbnail.height, thumbnail.format


async def test_scale_fits_the_image_in_the_standard_box_that_covers_the_request(
    tmp_path: Path,
) -> None:
    async with open_env(tmp_path) as env:
        path = await env.upload(image(1000, 500), "image/png")
        small = await env.thumbnail(path, width=300, height=200, method="scale")
        beyond = await env.thumbnail(path, width=900, height=700, method="scale")
    # 320x240 is the smallest standard box covering 300x200; the aspect
    # ratio is kept. Past the standard sizes, the box asked is used.
    assert _size_and_format(small) == (320, 160, "PNG")
    assert small.headers["content-type"] == "image/png"
    assert small.headers["content-disposition"] == 'inline; filename="thumbnail.png"'
    assert "sandbox" in small.headers["content-security-policy"]
    assert _size_and_format(beyond) == (900, 450, "PNG")


async def test_crop_gives_the_box_exactly_and_jpeg_stays_jpeg(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        png = await env.upload(image(1000, 500), "image/png")
        jpeg = await env.upload(image(800, 600, "JPEG"), "image/jpeg")
        cropped = await env.thumbnail(png, width=50, height=50, method="crop")
        tiny = await env.thumbnail(jpeg, width=20, height=30, method="crop")
    assert _size_and_format(cropped) == (96, 96, "PNG")
    with Image.open(io.BytesIO(cropped.content)) as picture:
        # The middle of the image, where its two colours meet.
        left, right = (
            picture.convert("RGB").getpixel((5, 48)),
            picture.convert("RGB").getpixel((90, 48)),
        )
    assert left[0] > 150 > left[2]  # type: ignore[index]
    assert right[2] > 150 > right[0]  # type: ignore[index]
    assert _size_and_format(tiny) == (32, 32, "JPEG")
    assert tiny.headers["content-type"] == "image/jpeg"


async def test_an_image_smaller_than_asked_is_served_as_it_is(tmp_path: Path) -> None:
    original = image(20, 10)
    async with open_env(tmp_path) as env:
        path = await env.upload(original, "image/png")
        response = await env.thumbnail(path, width=32, height=32, method="crop")
    assert response.status_code == 200
    assert response.content == original


async def test_animated_gifs_and_webp_are_thumbnailed_still(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (400, 400), colour) for colour in ("red", "green")]
    gif, webp = io.BytesIO(), io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(webp, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    async with open_env(tmp_path) as env:
        gif_path = await env.upload(gif.getvalue(), "image/gif")
        webp_path = await env.upload(webp.getvalue(), "image/webp")
        from_gif = await env.thumbnail(
            gif_path, width=96, height=96, method="scale", animated="true"
        )
        from_webp = await env.thumbnail(webp_path, width=96, height=96, method="crop")
    assert _size_and_format(from_gif) == (240, 240, "PNG")
    assert _size_and_format(from_webp) == (96, 96, "PNG")


async def test_a_thumbnail_is_made_once_and_kept(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        path = await env.upload(image(640, 480), "image/png")
        first = await env.thumbnail(path, width=90, height=90, method="crop")
        media_id = path.partition("/")[2]
        kept = env.hs.server.config.media_store / "thumbnails" / "localhost" / media_id
        files = sorted(p.name for p in kept.iterdir())
        (kept / "96x96-crop").write_bytes(b"what the store holds is served")
        second = await env.thumbnail(path, width=96, height=80, method="crop")
        legacy = await env.http.get(
            f"{LEGACY}/thumbnail/{path}", params={"width": 96, "height": 96, "method": "crop"}
        )
    assert first.status_code == 200
    assert files == ["96x96-crop"]
    assert second.content == legacy.content == b"what the store holds is served"


async def test_what_cannot_be_thumbnailed_is_refused(tmp_path: Path) -> None:
    async with open_env(tmp_path, max_thumbnail_source_pixels=10_000) as env:
        text = await env.upload(b"hello", "text/plain")
        fake = await env.upload(b"not a png at all", "image/png")
        large = await env.upload(image(200, 100), "image/png")
        path = await env.upload(image(64, 64), "image/png")
        answers = [
            await env.thumbnail(text, width=32, height=32),
            await env.thumbnail(fake, width=32, height=32),
            await env.thumbnail(large, width=32, height=32),
            await env.thumbnail(path, height=32),
            await env.thumbnail(path, width=0, height=32),
            await env.thumbnail(path, width=32, height=32, method="zoom"),
            await env.thumbnail("localhost/NoSuchMedia0000000000000", width=32, height=32),
            await env.http.get(f"{AUTHED}/thumbnail/{path}", params={"width": 1, "height": 1}),
        ]
    assert [(answer.status_code, answer.json()["errcode"]) for answer in answers[:7]] == [
        (400, "M_UNKNOWN"),
        (400, "M_UNKNOWN"),
        (413, "M_TOO_LARGE"),
        (400, "M_MISSING_PARAM"),
        (400, "M_INVALID_PARAM"),
        (400, "M_INVALID_PARAM"),
        (404, "M_NOT_FOUND"),
    ]
    # With the token, as above; the last request had none.
    assert answers[7].json()["errcode"] == "M_MISSING_TOKEN"
