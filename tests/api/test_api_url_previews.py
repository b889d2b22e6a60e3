"""URL previews over real HTTP: a homeserver previews pages of a web site
on loopback (allowed by its configuration), keeps them, and refuses what
its denylist, its limits and the spec say it must."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
import trio.testing
from PIL import Image

from ranvier.config import MediaConfig
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.web_pages import Page, WebPages

AUTHED = "/_matrix/client/v1/media/preview_url"
LEGACY = "/_matrix/media/v3/preview_url"

ARTICLE = b"""<!doctype html><html><head>
<title>Window title</title>
<meta property="og:title" content="A post about ranvier">
<meta property="og:description" content="Trio all the way down.">
<meta property="og:type" content="article">
<meta property="og:image" content="/card.png">
<meta property="og:image:width" content="9999">
</head><body><p>text</p></body></html>"""

PLAIN = b"""<html><head><title>Plain page</title>
<meta name="description" content="No OpenGraph here."></head>
<body><img src="/pixel.gif" width="1" height="1"><img src="/photo.png"></body></html>"""


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    site: WebPages
    alice: TestUser

    async def preview(
        self, url: str, *, path: str = AUTHED, token: str | None = "alice", **params: Any
    ) -> httpx.Response:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.alice.access_token}"
        return await self.http.get(path, params={"url": url, **params}, headers=headers)

    async def ok(self, url: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.preview(url, **kwargs)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def refused(self, url: str, status: int, errcode: str, **kwargs: Any) -> str:
        response = await self.preview(url, **kwargs)
        body = response.json()
        assert (response.status_code, body.get("errcode")) == (status, errcode), body
        assert isinstance(body["error"], str)
        assert body["error"]
        message: str = body["error"]
        return message

    async def download(self, uri: str) -> httpx.Response:
        return await self.http.get(
            f"/_matrix/client/v1/media/download/{uri.removeprefix('mxc://')}",
            headers={"Authorization": f"Bearer {self.alice.access_token}"},
        )


@asynccontextmanager
async def open_env(tmp_path: Path, **media: Any) -> AsyncIterator[Env]:
    """A server whose previews may reach 127.0.0.1 (unless ``media`` says
    otherwise), and a site there."""
    settings: dict[str, Any] = {
        "url_preview_ip_range_allowlist": ("127.0.0.1",),
        "url_preview_max_bytes": 256 * 1024,
        "url_preview_timeout_seconds": 5.0,
        **media,
    }
    config = msgspec.structs.replace(config_for_tests(tmp_path), media=MediaConfig(**settings))
    async with trio.open_nursery() as nursery:
        site = WebPages()
        await site.start(nursery)
        async with open_test_homeserver(tmp_path, config=config) as hs:
            alice = await hs.register_user("alice")
            async with httpx.AsyncClient(base_url=hs.client_url, timeout=30) as http:
                yield Env(hs, http, site, alice)
        nursery.cancel_scope.cancel()


async def test_a_page_with_opengraph_tags_previews_with_its_image_stored_here(
    tmp_path: Path,
) -> None:
    card = png(120, 63)
    async with open_env(tmp_path) as env:
        env.site.pages["/post"] = Page(body=ARTICLE)
        env.site.pages["/card.png"] = Page(body=card, content_type="image/png")
        answer = await env.ok(env.site.url("/post"), ts=1_700_000_000_000)
        uri = answer.pop("og:image")
        assert answer == {
            "og:title": "A post about ranvier",
            "og:description": "Trio all the way down.",
            "og:type": "article",
            "og:image:type": "image/png",
            "og:image:width": 120,
            "og:image:height": 63,
            "matrix:image:size": len(card),
        }
        assert uri.startswith("mxc://localhost/")
        download = await env.download(uri)
        assert download.status_code == 200
        assert download.content == card
        assert download.headers["content-type"] == "image/png"


async def test_a_page_without_tags_previews_from_title_description_and_image(
    tmp_path: Path,
) -> None:
    photo = png(64, 48)
    async with open_env(tmp_path) as env:
        env.site.pages["/plain"] = Page(body=PLAIN)
        env.site.pages["/photo.png"] = Page(body=photo, content_type="image/png")
        answer = await env.ok(env.site.url("/plain"))
        assert answer["og:title"] == "Plain page"
        assert answer["og:description"] == "No OpenGraph here."
        assert (answer["og:image:width"], answer["og:image:height"]) == (64, 48)
        assert (await env.download(answer["og:image"])).content == photo
        assert env.site.hits["/pixel.gif"] == 0


async def test_a_url_that_is_an_image_previews_as_that_image(tmp_path: Path) -> None:
    picture = png(33, 21)
    async with open_env(tmp_path) as env:
        env.site.pages["/picture"] = Page(body=picture, content_type="image/png")
        answer = await env.ok(env.site.url("/picture"))
        uri = answer.pop("og:image")
        assert answer == {
            "og:image:type": "image/png",
            "og:image:width": 33,
            "og:image:height": 21,
            "matrix:image:size": len(picture),
        }
        assert (await env.download(uri)).content == picture


async def test_an_image_that_cannot_be_had_is_left_out(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        page = b'<meta property="og:title" content="t"><meta property="og:image" content="/gone">'
        env.site.pages["/page"] = Page(body=page)
        assert await env.ok(env.site.url("/page")) == {"og:title": "t"}
        # An image on a denied address is not fetched either.
        page = b'<title>t</title><img src="http://10.0.0.1/internal.png">'
        env.site.pages["/inside"] = Page(body=page)
        assert await env.ok(env.site.url("/inside")) == {"og:title": "t"}


async def test_other_content_previews_as_nothing_and_is_not_read(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        env.site.pages["/doc"] = Page(
            body=b"x" * 65536, repeat=64, content_type="application/pdf", declare_length=False
        )
        assert await env.ok(env.site.url("/doc")) == {}


async def test_a_preview_is_kept_and_a_url_asked_again_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    async with open_env(tmp_path) as env:
        env.site.pages["/post"] = Page(body=ARTICLE)
        env.site.pages["/card.png"] = Page(body=png(10, 10), content_type="image/png")
        first = await env.ok(env.site.url("/post"))
        again = await env.ok(env.site.url("/post"), path=LEGACY)
        # The fragment names a place in the same page.
        fragment = await env.ok(env.site.url("/post#comments"))
        assert first == again == fragment
        assert (env.site.hits["/post"], env.site.hits["/card.png"]) == (1, 1)
        # A failure is not kept: the page is asked again once it is there.
        await env.refused(env.site.url("/later"), 502, "M_UNKNOWN")
        env.site.pages["/later"] = Page(body=b"<title>now</title>")
        assert await env.ok(env.site.url("/later")) == {"og:title": "now"}
        assert env.site.hits["/later"] == 2


async def test_concurrent_asks_for_one_url_fetch_it_once(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        gate = trio.Event()
        env.site.pages["/busy"] = Page(body=b"<title>busy</title>", gate=gate)
        answers: list[dict[str, Any]] = []

        async def ask() -> None:
            answers.append(await env.ok(env.site.url("/busy")))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask)
            await env.site.wait_for_hits("/busy")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert answers == [{"og:title": "busy"}] * 5
        assert env.site.hits["/busy"] == 1


async def test_the_default_denylist_refuses_loopback_and_private_ranges(tmp_path: Path) -> None:
    async with open_env(tmp_path, url_preview_ip_range_allowlist=()) as env:
        env.site.pages["/post"] = Page(body=ARTICLE)
        message = await env.refused(env.site.url("/post"), 403, "M_FORBIDDEN")
        assert "may not fetch" in message
        port = env.site.base_url.rpartition(":")[2]
        await env.refused(f"http://localhost:{port}/post", 403, "M_FORBIDDEN")
        await env.refused("http://10.20.30.40/", 403, "M_FORBIDDEN")
        await env.refused("http://169.254.169.254/latest/meta-data/", 403, "M_FORBIDDEN")
        await env.refused("http://[fd00::1]/", 403, "M_FORBIDDEN")
        assert env.site.hits["/post"] == 0


async def test_a_redirect_to_a_denied_address_is_refused(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        env.site.pages["/go"] = Page(
            status=302, headers=(("location", "http://192.168.0.1/router"),)
        )
        await env.refused(env.site.url("/go"), 403, "M_FORBIDDEN")
        env.site.pages["/fine"] = Page(status=303, headers=(("location", "/post"),))
        env.site.pages["/post"] = Page(body=b"<title>arrived</title>")
        assert await env.ok(env.site.url("/fine")) == {"og:title": "arrived"}


async def test_a_huge_page_and_a_slow_page_are_bad_gateways(tmp_path: Path) -> None:
    # The huge page has the usual time: only its size stops it, however
    # slowly a loaded machine passes its bytes on.
    async with open_env(tmp_path / "huge") as env:
        env.site.pages["/huge"] = Page(body=b"<p>" * 30000, repeat=100, declare_length=False)
        message = await env.refused(env.site.url("/huge"), 502, "M_TOO_LARGE")
        assert str(256 * 1024) in message
    async with open_env(tmp_path / "slow", url_preview_timeout_seconds=0.5) as env:
        env.site.pages["/slow"] = Page(stall=True)
        message = await env.refused(env.site.url("/slow"), 502, "M_UNKNOWN")
        assert "longer than" in message


async def test_bad_requests_are_refused(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        await env.refused("ftp://example.org/file", 400, "M_INVALID_PARAM")
        await env.refused("not a url", 400, "M_INVALID_PARAM")
        await env.refused(env.site.url("/x"), 400, "M_INVALID_PARAM", ts="yesterday")
        response = await env.http.get(
            AUTHED, headers={"Authorization": f"Bearer {env.alice.access_token}"}
        )
        assert (response.status_code, response.json()["errcode"]) == (400, "M_MISSING_PARAM")


async def test_previews_need_an_access_token_on_both_paths(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        env.site.pages["/post"] = Page(body=b"<title>t</title>")
        for path in (AUTHED, LEGACY, "/_matrix/media/r0/preview_url"):
            await env.refused(env.site.url("/post"), 401, "M_MISSING_TOKEN", path=path, token=None)
        assert env.site.hits["/post"] == 0
        assert await env.ok(env.site.url("/post"), path="/_matrix/media/r0/preview_url") == {
            "og:title": "t"
        }


async def test_previews_turned_off_are_an_unknown_endpoint(tmp_path: Path) -> None:
    async with open_env(tmp_path, url_preview_enabled=False) as env:
        env.site.pages["/post"] = Page(body=b"<title>t</title>")
        await env.refused(env.site.url("/post"), 404, "M_UNRECOGNIZED")
        assert env.site.hits["/post"] == 0
