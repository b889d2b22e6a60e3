"""URL previews through a client_reader worker: the preview and its image
written through the main process, and served by either without a second
fetch."""

from __future__ import annotations

import io
import time
from pathlib import Path

import trio
from _worker_configs import main_and_worker_configs
from PIL import Image

from ranvier.config import MediaConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.testing.web_pages import Page, WebPages

PREVIEW = "/_matrix/client/v1/media/preview_url"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (9, 8, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_preview_made_on_a_worker_is_kept_for_both(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    site = WebPages()
    await site.start(nursery)
    site.pages["/post"] = Page(
        body=b'<meta property="og:title" content="Shared"><meta property="og:image" content="/i">'
    )
    site.pages["/i"] = Page(body=_png(), content_type="image/png")
    main_config, worker_config = main_and_worker_configs(
        tmp_path,
        media=MediaConfig(
            store_path=tmp_path / "media", url_preview_ip_range_allowlist=("127.0.0.1",)
        ),
    )
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(alice) as on_worker,
            main.client(alice) as on_main,
        ):
            on_worker_answer = await on_worker.get(PREVIEW, params={"url": site.url("/post")})
            on_main_answer = await on_main.get(PREVIEW, params={"url": site.url("/post")})
            kept = await main.server.storage.url_previews.preview(
                site.url("/post"), now_ts=time.time_ns() // 1_000_000
            )
            image = on_worker_answer.json()["og:image"].removeprefix("mxc://")
            from_main = await on_main.get(f"/_matrix/client/v1/media/download/{image}")

    assert on_worker_answer.status_code == 200, on_worker_answer.text
    preview = on_worker_answer.json()
    assert (preview["og:title"], preview["og:image:width"], preview["og:image:height"]) == (
        "Shared",
        50,
        40,
    )
    assert on_main_answer.json() == preview == kept
    assert (site.hits["/post"], site.hits["/i"]) == (1, 1)
    assert from_main.content == _png()
