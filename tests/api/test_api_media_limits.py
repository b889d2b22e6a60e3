"""Upload windows over real HTTP: what one user may upload over time, held
on both upload paths, decided by the storage write when uploads race, and
never leaving a refused upload's file or row behind."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from PIL import Image

from ranvier.config import MediaConfig, UploadLimit
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.web_pages import Page, WebPages

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"
T0 = 1_700_000_000_000
HOUR_MS = 3_600_000
#: At most 100 bytes an hour and 150 a day.
LIMITS = (
    UploadLimit(period_seconds=3600, max_bytes=100),
    UploadLimit(period_seconds=86_400, max_bytes=150),
)


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    alice: TestUser
    bob: TestUser
    now: list[int]

    def auth(self, user: TestUser) -> dict[str, str]:
        return {"Authorization": f"Bearer {user.access_token}"}

    async def upload(
        self, content: bytes | AsyncIterator[bytes], user: TestUser | None = None
    ) -> httpx.Response:
        return await self.http.post(
            f"{MEDIA}/upload", content=content, headers=self.auth(user or self.alice)
        )

    def stored(self) -> tuple[list[str], list[tuple[str, int | None]]]:
        """The files in the store's local directory and the media rows."""
        local = self.hs.server.config.media_store / "local"
        files = sorted(path.name for path in local.iterdir()) if local.exists() else []
        conn = sqlite3.connect(self.hs.server.config.paths.database)
        try:
            rows = conn.execute("SELECT media_id, size FROM media ORDER BY media_id").fetchall()
        finally:
            conn.close()
        return files, rows


@asynccontextmanager
async def open_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **media: Any
) -> AsyncIterator[Env]:
    config = config_for_tests(tmp_path)
    config = msgspec.structs.replace(config, media=MediaConfig(upload_limits=LIMITS, **media))
    async with open_test_homeserver(tmp_path, config=config) as hs:
        now = [T0]
        monkeypatch.setattr(hs.server.media, "_clock_ms", lambda: now[0])
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        async with hs.client() as http:
            yield Env(hs, http, alice, bob, now)


def _refused(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["errcode"] == "M_FORBIDDEN"
    message: str = body["error"]
    return message


async def _streamed(*chunks: bytes) -> AsyncIterator[bytes]:
    """A body without a Content-Length, so nothing is refused before it."""
    for chunk in chunks:
        yield chunk


async def test_an_upload_over_the_hour_is_refused_and_nothing_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        first = await env.upload(b"a" * 60)
        second = await env.upload(b"b" * 30)
        before = env.stored()
        declared = await env.upload(b"c" * 11)
        streamed = await env.upload(_streamed(b"d" * 5, b"d" * 6))
        after = env.stored()
        exact = await env.upload(b"e" * 10)
        bobs = await env.upload(b"f" * 100, user=env.bob)

    assert (first.status_code, second.status_code) == (200, 200)
    # Refused before the body is read, and after it, alike.
    assert "100 bytes per user in any hour" in _refused(declared)
    assert "100 bytes per user in any hour" in _refused(streamed)
    assert after == before
    assert len(before[0]) == 2
    assert exact.status_code == 200
    assert bobs.status_code == 200


async def test_uploads_work_again_once_the_window_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        assert (await env.upload(b"a" * 100)).status_code == 200
        env.now[0] = T0 + HOUR_MS - 1
        within = await env.upload(b"b")
        env.now[0] = T0 + HOUR_MS
        after_hour = await env.upload(b"c" * 50)
        # 150 in the day now: the day's window refuses what the hour's allows.
        env.now[0] = T0 + 2 * HOUR_MS
        day = await env.upload(b"d")
        env.now[0] = T0 + 24 * HOUR_MS
        next_day = await env.upload(b"e" * 100)

    _refused(within)
    assert after_hour.status_code == 200
    assert "150 bytes per user in any day" in _refused(day)
    assert next_day.status_code == 200


async def test_filling_a_created_id_is_held_to_the_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        created = await env.http.post("/_matrix/media/v1/create", headers=env.auth(env.alice))
        path = created.json()["content_uri"].removeprefix("mxc://")
        assert (await env.upload(b"a" * 90)).status_code == 200
        before = env.stored()
        declared = await env.http.put(
            f"{MEDIA}/upload/{path}", content=b"b" * 20, headers=env.auth(env.alice)
        )
        streamed = await env.http.put(
            f"{MEDIA}/upload/{path}",
            content=_streamed(b"b" * 10, b"b" * 10),
            headers=env.auth(env.alice),
        )
        after = env.stored()
        # The ID is still empty, and may be filled once there is room.
        env.now[0] = T0 + HOUR_MS
        filled = await env.http.put(
            f"{MEDIA}/upload/{path}", content=b"b" * 20, headers=env.auth(env.alice)
        )
        served = await env.http.get(f"{AUTHED}/download/{path}", headers=env.auth(env.alice))

    _refused(declared)
    _refused(streamed)
    assert after == before
    assert filled.status_code == 200, filled.text
    assert served.content == b"b" * 20


async def test_two_racing_uploads_over_the_window_store_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        media = env.hs.server.media
        # Both requests pass the check before their bodies are read; only
        # then do their bodies end, so the storage write decides.
        checked = 0
        both_checked = trio.Event()
        check = media._check_quota

        async def counted(*args: object, **kwargs: object) -> None:
            nonlocal checked
            await check(*args, **kwargs)  # type: ignore[arg-type]
            checked += 1
            if checked == 2:
                both_checked.set()

        monkeypatch.setattr(media, "_check_quota", counted)

        async def body(fill: bytes) -> AsyncIterator[bytes]:
            yield fill * 30
            await both_checked.wait()
            yield fill * 30

        responses: list[httpx.Response] = []

        async def send(fill: bytes) -> None:
            responses.append(await env.upload(body(fill)))

        before = env.stored()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, b"x")
            nursery.start_soon(send, b"y")
        files, rows = env.stored()

    assert sorted(response.status_code for response in responses) == [200, 403]
    [refused] = [response for response in responses if response.status_code == 403]
    _refused(refused)
    assert before == ([], [])
    assert len(files) == 1
    assert [size for _, size in rows] == [60]


def _picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@asynccontextmanager
async def _with_picture_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Env, str]]:
    """A server with the windows, and the URL of a page that is a picture."""
    async with trio.open_nursery() as nursery:
        site = WebPages()
        await site.start(nursery)
        site.pages["/picture"] = Page(body=_picture(), content_type="image/png")
        allow = {"url_preview_ip_range_allowlist": ("127.0.0.1",)}
        async with open_env(tmp_path, monkeypatch, **allow) as env:
            yield env, site.url("/picture")
        nursery.cancel_scope.cancel()


async def _preview(env: Env, url: str) -> httpx.Response:
    preview = await env.http.get(
        f"{AUTHED}/preview_url", params={"url": url}, headers=env.auth(env.alice)
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["og:image"].startswith("mxc://localhost/")
    assert preview.json()["matrix:image:size"] == len(_picture())
    return preview


async def test_preview_images_are_stored_past_the_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _with_picture_page(tmp_path, monkeypatch) as (env, url):
        assert (await env.upload(b"a" * 100)).status_code == 200
        await _preview(env, url)
        own = await env.upload(b"b")

    _refused(own)


async def test_preview_images_do_not_count_against_their_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _with_picture_page(tmp_path, monkeypatch) as (env, url):
        assert (await env.upload(b"a" * 60)).status_code == 200
        await _preview(env, url)
        # Exactly what the hour's window has left, were the picture not counted.
        rest = await env.upload(b"b" * 40)
        over = await env.upload(b"c")

    assert rest.status_code == 200, rest.text
    _refused(over)


async def test_the_config_endpoint_still_tells_the_size_of_one_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        answers = [
            await env.http.get(f"{prefix}/config", headers=env.auth(env.alice))
            for prefix in (AUTHED, MEDIA)
        ]

    assert [answer.json() for answer in answers] == [
        {"m.upload.size": MediaConfig().max_upload_bytes}
    ] * 2
