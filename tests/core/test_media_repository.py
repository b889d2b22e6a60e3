"""The media repository over real storage and a real media store, on a
clock the test moves: created media IDs expire unused, and a user may
hold only so many waiting for their upload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ranvier.core.media import MAX_PENDING_UPLOADS, UNUSED_EXPIRY_MS, MediaRepository
from ranvier.errors import LimitExceededError, MatrixError
from ranvier.storage import Storage
from ranvier.storage.media_files import MediaFiles

US = "example.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _repository(storage: Storage, tmp_path: Path, clock: Clock) -> MediaRepository:
    return MediaRepository(
        server_name=US,
        rows=storage.media,
        files=MediaFiles(tmp_path / "media"),
        max_upload_bytes=1000,
        clock_ms=clock,
    )


async def _upload_to(media: MediaRepository, user: str, uri: str, data: bytes) -> None:
    server_name, _, media_id = uri.removeprefix("mxc://").partition("/")
    await media.upload_to(
        user,
        server_name,
        media_id,
        _body(data),
        content_type="text/plain",
        filename=None,
        declared_length=len(data),
    )


async def test_a_created_id_expires_unused(storage: Storage, tmp_path: Path) -> None:
    clock = Clock()
    media = _repository(storage, tmp_path, clock)
    kept, expires_at = await media.create(ALICE)
    lapsed, _ = await media.create(ALICE)
    assert expires_at == clock.now + UNUSED_EXPIRY_MS
    clock.now = expires_at
    await _upload_to(media, ALICE, kept, b"just in time")
    clock.now += 1
    with pytest.raises(MatrixError) as late:
        await _upload_to(media, ALICE, lapsed, b"too late")
    with pytest.raises(MatrixError) as gone:
        await media.download(US, lapsed.rpartition("/")[2], timeout_ms=0)
    content = await media.download(US, kept.rpartition("/")[2])
    assert (late.value.http_status, late.value.errcode) == (404, "M_NOT_FOUND")
    assert (gone.value.http_status, gone.value.errcode) == (404, "M_NOT_FOUND")
    assert b"".join([chunk async for chunk in content.chunks()]) == b"just in time"


async def test_a_user_holds_only_so_many_ids_waiting(storage: Storage, tmp_path: Path) -> None:
    clock = Clock()
    media = _repository(storage, tmp_path, clock)
    created = []
    for _ in range(MAX_PENDING_UPLOADS):
        created.append((await media.create(ALICE))[0])
        clock.now += 1000
    with pytest.raises(LimitExceededError) as refused:
        await media.create(ALICE)
    # The oldest frees a place when it expires.
    assert refused.value.retry_after_ms == UNUSED_EXPIRY_MS - MAX_PENDING_UPLOADS * 1000
    assert (await media.create(BOB))[0].startswith(f"mxc://{US}/")
    # An upload frees a place at once.
    await _upload_to(media, ALICE, created[3], b"done")
    await media.create(ALICE)
    with pytest.raises(LimitExceededError):
        await media.create(ALICE)
    # Expired IDs no longer count.
    clock.now = 1_700_000_000_000 + UNUSED_EXPIRY_MS + 1
    assert (await media.create(ALICE))[0].startswith(f"mxc://{US}/")
