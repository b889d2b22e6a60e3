"""URL preview rows in a real SQLite file: kept until they expire, replaced
when made again, and every write run twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from _twice import dump_tables, run_twice, write_call

from ranvier.replication import operations
from ranvier.storage import Storage
from ranvier.storage import url_previews as module

URL = "https://example.org/post"
PREVIEW = {"og:title": "A post", "og:image:width": 640, "matrix:image:size": 1234}


async def test_a_preview_is_served_until_it_expires(storage: Storage) -> None:
    previews = storage.url_previews
    assert await previews.preview(URL, now_ts=0) is None
    await previews.store(URL, PREVIEW, made_ts=1_000, expires_ts=5_000)
    assert await previews.preview(URL, now_ts=1_000) == PREVIEW
    assert await previews.preview(URL, now_ts=4_999) == PREVIEW
    assert await previews.preview(URL, now_ts=5_000) is None
    assert await previews.preview(URL + "/other", now_ts=1_000) is None


async def test_a_preview_made_again_replaces_the_old_one(storage: Storage) -> None:
    previews = storage.url_previews
    await previews.store(URL, PREVIEW, made_ts=1_000, expires_ts=5_000)
    await previews.store(URL, {}, made_ts=6_000, expires_ts=9_000)
    assert await previews.preview(URL, now_ts=6_000) == {}


async def test_expired_previews_are_deleted_when_one_is_written(
    storage: Storage, db_path: Path
) -> None:
    previews = storage.url_previews
    await previews.store("https://a.example/", PREVIEW, made_ts=0, expires_ts=100)
    await previews.store("https://b.example/", PREVIEW, made_ts=50, expires_ts=300)
    await previews.store("https://c.example/", PREVIEW, made_ts=200, expires_ts=400)
    rows = dump_tables(db_path, ["url_previews"])["url_previews"]
    assert sorted(row[0] for row in rows) == ["https://b.example/", "https://c.example/"]


def test_every_write_of_the_module_is_run_twice_here() -> None:
    names = {name for name in operations.operation_names() if name.startswith("url_previews.")}
    assert names == {"url_previews.store_preview"}


async def test_a_write_run_twice_leaves_what_the_first_run_left(
    storage: Storage, db_path: Path
) -> None:
    """A worker's write repeated after the main process restarted."""
    await storage.url_previews.store("https://old.example/", {}, made_ts=0, expires_ts=10)
    operation = write_call(
        module._store_preview,
        url=URL,
        preview_json=b'{"og:title":"t"}',
        made_ts=20,
        expires_ts=30,
    )
    await run_twice(storage, db_path, operation, ("url_previews",))
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT url, made_ts FROM url_previews").fetchall() == [(URL, 20)]
    finally:
        conn.close()
