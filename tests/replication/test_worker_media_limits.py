"""Upload windows with a client_reader worker: the worker's uploads are
decided by the main process's storage write, against every upload stored
through either process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from _worker_configs import alice_on_both

from ranvier.config import MediaConfig, UploadLimit
from ranvier.core.media import MediaRepository

MEDIA = "/_matrix/media/v3"


def _media(tmp_path: Path) -> MediaConfig:
    return MediaConfig(
        store_path=tmp_path / "media",
        upload_limits=(UploadLimit(period_seconds=3600, max_bytes=100),),
    )


def _count_checks(
    monkeypatch: pytest.MonkeyPatch, repositories: list[MediaRepository], done: trio.Event
) -> None:
    """Set ``done`` once each repository has made its check before a body."""
    checked = 0
    for repository in repositories:
        check = repository._check_quota

        async def counted(*args: object, _check: object = check, **kwargs: object) -> None:
            nonlocal checked
            await _check(*args, **kwargs)  # type: ignore[operator]
            checked += 1
            if checked == len(repositories):
                done.set()

        monkeypatch.setattr(repository, "_check_quota", counted)


async def test_the_worker_counts_what_the_main_process_stored(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path, media=_media(tmp_path)) as both:
        on_main = await both.on_main.post(f"{MEDIA}/upload", content=b"a" * 60)
        over = await both.on_worker.post(f"{MEDIA}/upload", content=b"b" * 60)
        fits = await both.on_worker.post(f"{MEDIA}/upload", content=b"c" * 40)
        after = await both.on_main.post(f"{MEDIA}/upload", content=b"d")
        files = sorted(path.name for path in (tmp_path / "media" / "local").iterdir())

    assert on_main.status_code == 200
    assert (over.status_code, over.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert fits.status_code == 200
    assert (after.status_code, after.json()["errcode"]) == (403, "M_FORBIDDEN")
    stored = {response.json()["content_uri"].rpartition("/")[2] for response in (on_main, fits)}
    assert set(files) == stored


async def test_uploads_racing_through_both_processes_store_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with alice_on_both(tmp_path, media=_media(tmp_path)) as both:
        both_checked = trio.Event()
        _count_checks(monkeypatch, [both.main.server.media, both.worker.media], both_checked)

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 30
            await both_checked.wait()
            yield b"x" * 30

        responses: list[httpx.Response] = []

        async def send(client: httpx.AsyncClient) -> None:
            responses.append(await client.post(f"{MEDIA}/upload", content=body()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, both.on_main)
            nursery.start_soon(send, both.on_worker)
        files = list((tmp_path / "media" / "local").iterdir())

    assert sorted(response.status_code for response in responses) == [200, 403]
    assert len(files) == 1
