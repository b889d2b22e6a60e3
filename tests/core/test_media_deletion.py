"""Deleting media over real storage and a real media store: a deletion
cancelled while its files go leaves its rows marked, served as gone and
not fetched again, until the next pass finishes them; a deletion by rule
keeps media used since it was chosen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ranvier.core.media import FetchedMedia, MediaRepository, MediaWriter
from ranvier.core.media_deletion import MediaDeleter
from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.media_admin import DeletionRule
from ranvier.storage.media_files import MediaFiles

US = "example.org"
THEM = "other.org"
ALICE = "@alice:example.org"


class _HeldFiles(MediaFiles):
    """The store, with a removal that waits until the test lets it go."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.removing = trio.Event()
        self.release = trio.Event()

    async def remove(self, path: Path) -> None:
        self.removing.set()
        await self.release.wait()
        await super().remove(path)


class _Origin:
    """Another server's media, counting how often it is fetched."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(
        self, origin: str, media_id: str, *, max_bytes: int, timeout_ms: int, write: MediaWriter
    ) -> FetchedMedia:
        self.fetches += 1

        async def body() -> AsyncIterator[bytes]:
            yield b"theirs"

        size = await write(body())
        return FetchedMedia(content_type="text/plain", filename=None, size=size)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_cancelled_deletion_is_gone_at_once_and_finished_later(
    storage: Storage, tmp_path: Path
) -> None:
    files = _HeldFiles(tmp_path / "media")
    origin = _Origin()
    media = MediaRepository(
        server_name=US, rows=storage.media, files=files, remote=origin, max_upload_bytes=100
    )
    deleter = MediaDeleter(server_name=US, store=storage.media_admin, files=files)
    uri = await media.upload(
        ALICE, _body(b"ours"), content_type=None, filename=None, declared_length=None
    )
    ours = uri.rpartition("/")[2]
    await media.download(THEM, "remote1")
    assert origin.fetches == 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deleter.delete, [(US, ours), (THEM, "remote1")])
        await files.removing.wait()
        nursery.cancel_scope.cancel()
    marked = await storage.media_admin.pending_deletions(10)
    refused = []
    for server_name, media_id in ((US, ours), (THEM, "remote1")):
        with pytest.raises(MatrixError) as caught:
            await media.download(server_name, media_id)
        refused.append(caught.value.errcode)
    files_still_there = (files.local(ours).is_file(), files.remote(THEM, "remote1").is_file())
    fetches_while_marked = origin.fetches

    files.release.set()
    finished = await deleter.finish_pending()
    rows = [await storage.media.media(*key) for key in ((US, ours), (THEM, "remote1"))]
    refetched = await media.download(THEM, "remote1")

    assert sorted(marked) == sorted([(US, ours), (THEM, "remote1")])
    assert refused == ["M_NOT_FOUND", "M_NOT_FOUND"]
    assert fetches_while_marked == 1
    assert refetched.size == len(b"theirs")
    assert origin.fetches == 2
    assert files_still_there == (True, True)
    assert finished == 2
    assert rows == [None, None]
    assert not files.local(ours).exists()


async def test_a_deletion_by_rule_keeps_media_used_since_it_was_chosen(
    storage: Storage, tmp_path: Path
) -> None:
    files = MediaFiles(tmp_path / "media")
    deleter = MediaDeleter(server_name=US, store=storage.media_admin, files=files)
    for media_id in ("chosen", "used"):
        await files.write_bytes(files.local(media_id), b"x")
        await storage.media.add_upload(
            US, media_id, user_id=ALICE, content_type=None, upload_name=None, size=1, ts=10
        )
    rule = DeletionRule(50)
    chosen = await storage.media_admin.deletion_candidates(
        US, local=True, rule=rule, keep_profiles=False, limit=10
    )
    await storage.media.record_access(US, "used", ts=60)
    deleted = await deleter.delete(chosen, rule)

    assert sorted(chosen) == [(US, "chosen"), (US, "used")]
    assert deleted == [(US, "chosen")]
    assert files.local("used").is_file()
    assert not files.local("chosen").exists()
