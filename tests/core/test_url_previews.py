"""The previewer over real storage and a real media repository, with pages
from a scripted source and a clock the test moves: previews kept until
they expire, one fetch shared by concurrent asks (its failure too), a
cancelled ask leaving the fetch to the next, and the page's image."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from PIL import Image

from ranvier.core.media import MediaRepository
from ranvier.core.url_previews import PREVIEW_LIFETIME_MS, FetchedUrl, UrlPreviewer
from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.media_files import MediaFiles
from ranvier.storage.url_previews import UrlPreviewStorage

ALICE = "@alice:example.org"
PAGE = "https://site.example/page"


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


class ScriptedSource:
    """Answers from ``answers`` by URL, after ``gate`` if one is set."""

    def __init__(self) -> None:
        self.answers: dict[str, FetchedUrl | MatrixError] = {}
        self.fetched: list[str] = []
        self.gate: trio.Event | None = None
        self._fetching = trio.Event()

    async def wait_for_fetches(self, count: int) -> None:
        while len(self.fetched) < count:
            self._fetching = trio.Event()
            await self._fetching.wait()

    def html(self, url: str, body: bytes) -> None:
        self.answers[url] = FetchedUrl(url, "text/html", body)

    async def fetch(self, url: str, *, wanted: Callable[[str | None], bool]) -> FetchedUrl:
        self.fetched.append(url)
        self._fetching.set()
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(url) or MatrixError("no", errcode="M_UNKNOWN", http_status=502)
        if isinstance(answer, MatrixError):
            raise answer
        if not wanted(answer.content_type):
            return dataclasses.replace(answer, body=None)
        return answer


class CountingRows:
    """The real rows, counting the reads that have returned."""

    def __init__(self, rows: UrlPreviewStorage) -> None:
        self._rows = rows
        self.reads = 0
        self._read = trio.Event()

    async def wait_for_reads(self, count: int) -> None:
        while self.reads < count:
            self._read = trio.Event()
            await self._read.wait()

    async def store(
        self, url: str, preview: dict[str, Any], *, made_ts: int, expires_ts: int
    ) -> None:
        await self._rows.store(url, preview, made_ts=made_ts, expires_ts=expires_ts)

    async def preview(self, url: str, *, now_ts: int) -> dict[str, Any] | None:
        found = await self._rows.preview(url, now_ts=now_ts)
        self.reads += 1
        self._read.set()
        return found


@dataclasses.dataclass
class Env:
    previewer: UrlPreviewer
    source: ScriptedSource
    rows: CountingRows
    media: MediaRepository
    clock: Clock

    async def reads_done(self, count: int) -> None:
        """Until ``count`` cache reads have returned and every task is parked."""
        await self.rows.wait_for_reads(count)
        await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
def env(storage: Storage, tmp_path: Path) -> Env:
    clock = Clock()
    media = MediaRepository(
        server_name="example.org",
        rows=storage.media,
        files=MediaFiles(tmp_path / "media"),
        max_upload_bytes=4096,
        clock_ms=clock,
    )
    source = ScriptedSource()
    rows = CountingRows(storage.url_previews)
    previewer = UrlPreviewer(source=source, rows=rows, images=media, clock_ms=clock)
    return Env(previewer, source, rows, media, clock)


async def test_a_preview_is_served_from_storage_until_it_expires(env: Env) -> None:
    env.source.html(PAGE, b"<title>one</title>")
    assert await env.previewer.preview(ALICE, PAGE) == {"og:title": "one"}
    env.source.html(PAGE, b"<title>two</title>")
    env.clock.now += PREVIEW_LIFETIME_MS - 1
    assert await env.previewer.preview(ALICE, PAGE) == {"og:title": "one"}
    env.clock.now += 1
    assert await env.previewer.preview(ALICE, PAGE) == {"og:title": "two"}
    assert env.source.fetched == [PAGE, PAGE]


async def test_concurrent_asks_share_one_fetch_and_its_failure(env: Env) -> None:
    env.source.answers[PAGE] = MatrixError("the site is down", errcode="M_UNKNOWN", http_status=502)
    env.source.gate = trio.Event()
    failures: list[tuple[int, str]] = []

    async def ask() -> None:
        with pytest.raises(MatrixError) as info:
            await env.previewer.preview(ALICE, PAGE)
        failures.append((info.value.http_status, info.value.message))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
        # The first ask read twice (before and inside the lock), the others
        # once each and now wait for the lock.
        await env.reads_done(4)
        assert env.source.fetched == [PAGE]
        env.source.gate.set()
    assert failures == [(502, "the site is down")] * 3
    assert env.source.fetched == [PAGE]
    # A failure is not kept: the next ask fetches again.
    env.source.html(PAGE, b"<title>up</title>")
    assert await env.previewer.preview(ALICE, PAGE) == {"og:title": "up"}
    assert env.source.fetched == [PAGE, PAGE]


async def test_a_cancelled_ask_leaves_the_fetch_to_the_next(env: Env) -> None:
    env.source.html(PAGE, b"<title>t</title>")
    env.source.gate = trio.Event()
    answers: list[dict[str, Any]] = []

    async def first_ask(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await env.previewer.preview(ALICE, PAGE)
            answers.append({"never": "answered"})

    async def ask() -> None:
        answers.append(await env.previewer.preview(ALICE, PAGE))

    async with trio.open_nursery() as nursery:
        first: trio.CancelScope = await nursery.start(first_ask)
        await env.reads_done(2)
        nursery.start_soon(ask)
        await env.reads_done(3)
        assert env.source.fetched == [PAGE]
        first.cancel()
        await env.source.wait_for_fetches(2)
        env.source.gate.set()
    assert answers == [{"og:title": "t"}]
    assert env.source.fetched == [PAGE, PAGE]


async def test_the_pages_image_is_stored_and_described_from_its_own_bytes(env: Env) -> None:
    image = png(40, 30)
    env.source.html(
        PAGE,
        b'<meta property="og:image" content="/i.png"><meta property="og:image:width" content="1">'
        b'<meta property="og:image:type" content="image/gif">'
        b'<meta property="og:image:alt" content="A drawing">',
    )
    env.source.answers["https://site.example/i.png"] = FetchedUrl(
        "https://site.example/i.png", "image/png; charset=binary", image
    )
    found = await env.previewer.preview(ALICE, PAGE)
    uri = found.pop("og:image")
    assert found == {
        "og:image:alt": "A drawing",
        "og:image:type": "image/png",
        "og:image:width": 40,
        "og:image:height": 30,
        "matrix:image:size": len(image),
    }
    server_name, _, media_id = uri.removeprefix("mxc://").partition("/")
    content = await env.media.download(server_name, media_id)
    assert (content.content_type, content.size) == ("image/png", len(image))


async def test_an_image_over_the_upload_limit_is_left_out_or_refused(env: Env) -> None:
    big = FetchedUrl("https://site.example/big.bin", "image/png", b"x" * 5000)
    env.source.answers[big.url] = big
    env.source.html(PAGE, b'<title>t</title><img src="/big.bin">')
    assert await env.previewer.preview(ALICE, PAGE) == {"og:title": "t"}
    with pytest.raises(MatrixError) as info:
        await env.previewer.preview(ALICE, big.url)
    assert (info.value.http_status, info.value.errcode) == (502, "M_TOO_LARGE")


async def test_an_image_pillow_cannot_read_is_kept_without_dimensions(env: Env) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    url = "https://site.example/logo.svg"
    env.source.answers[url] = FetchedUrl(url, "image/svg+xml", svg)
    found = await env.previewer.preview(ALICE, url)
    assert set(found) == {"og:image", "og:image:type", "matrix:image:size"}
    assert (found["og:image:type"], found["matrix:image:size"]) == ("image/svg+xml", len(svg))
