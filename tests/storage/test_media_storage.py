"""Media rows in a real SQLite file, media files in a real directory, and
every media write run twice."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _twice import run_twice, write_call

from ranvier.replication import operations
from ranvier.storage import Storage, WriteOperation
from ranvier.storage import media as module
from ranvier.storage.media import MediaRecord, ThumbnailRecord, UploadQuota, UploadWindow
from ranvier.storage.media_files import MediaFileExistsError, MediaFiles

US = "example.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


async def test_an_upload_is_described_whole(storage: Storage) -> None:
    media = storage.media
    assert await media.media(US, "m1") is None
    await media.add_upload(
        US, "m1", user_id=ALICE, content_type="image/png", upload_name="a.png", size=3, ts=7
    )
    assert await media.media(US, "m1") == MediaRecord(
        US, "m1", ALICE, "image/png", "a.png", 3, 7, 7
    )
    # Another origin's media of the same ID is another piece of media.
    assert await media.media("other.org", "m1") is None


async def test_created_media_is_filled_once_by_its_creator(storage: Storage) -> None:
    media = storage.media
    await media.create(US, "m2", user_id=ALICE, created_ts=5)
    pending = await media.media(US, "m2")
    assert pending is not None
    assert (pending.uploaded, pending.size, pending.user_id) == (False, None, ALICE)

    def fill(user: str, size: int, ts: int) -> Any:
        return media.complete_upload(
            US, "m2", user_id=user, content_type="text/plain", upload_name=None, size=size, ts=ts
        )

    assert await fill(BOB, 1, 6) == "forbidden"
    assert await fill(ALICE, 2, 6) == "stored"
    assert await fill(ALICE, 3, 8) == "already uploaded"
    assert (
        await media.complete_upload(
            US, "never", user_id=ALICE, content_type=None, upload_name=None, size=1, ts=1
        )
        == "unknown"
    )
    assert await media.media(US, "m2") == MediaRecord(US, "m2", ALICE, "text/plain", None, 2, 5, 6)


async def test_pending_uploads_are_the_users_own_unfilled_recent_ids(storage: Storage) -> None:
    media = storage.media
    for media_id, user, ts in (("p3", ALICE, 30), ("p1", ALICE, 10), ("p2", ALICE, 20)):
        await media.create(US, media_id, user_id=user, created_ts=ts)
    await media.create(US, "bobs", user_id=BOB, created_ts=15)
    await media.create("other.org", "elsewhere", user_id=ALICE, created_ts=15)
    await media.complete_upload(
        US, "p2", user_id=ALICE, content_type=None, upload_name=None, size=1, ts=25
    )
    assert await media.pending_uploads(US, ALICE, created_since=0) == [10, 30]
    assert await media.pending_uploads(US, ALICE, created_since=11) == [30]
    assert await media.pending_uploads(US, BOB, created_since=0) == [15]


async def test_remote_media_and_thumbnails(storage: Storage) -> None:
    media = storage.media
    await media.add_remote(
        "other.org", "r1", content_type="image/jpeg", upload_name=None, size=10, ts=3
    )
    # Fetched again alongside: the first row stays.
    await media.add_remote(
        "other.org", "r1", content_type="image/png", upload_name="x", size=11, ts=4
    )
    assert await media.media("other.org", "r1") == MediaRecord(
        "other.org", "r1", None, "image/jpeg", None, 10, 3, 3
    )
    box: dict[str, Any] = {"width": 32, "height": 32, "method": "crop"}
    assert await media.thumbnail("other.org", "r1", **box) is None
    await media.add_thumbnail("other.org", "r1", **box, content_type="image/jpeg", size=5)
    await media.add_thumbnail("other.org", "r1", **box, content_type="image/jpeg", size=6)
    assert await media.thumbnail("other.org", "r1", **box) == ThumbnailRecord(
        32, 32, "crop", "image/jpeg", 6
    )
    assert await media.thumbnail("other.org", "r1", width=32, height=32, method="scale") is None


async def test_a_thumbnail_needs_its_media(storage: Storage) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await storage.media.add_thumbnail(
            US, "none", width=1, height=1, method="crop", content_type="image/png", size=1
        )


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_file_is_written_whole_and_never_over_another(tmp_path: Path) -> None:
    files = MediaFiles(tmp_path / "store")
    path = files.local("abc")
    assert path == tmp_path / "store" / "local" / "abc"
    assert await files.write(path, _chunks(b"one ", b"two")) == 7
    with pytest.raises(MediaFileExistsError):
        await files.write(path, _chunks(b"other"))
    assert path.read_bytes() == b"one two"
    assert await files.write_bytes(path, b"replaced", replace=True) == 8
    assert [chunk async for chunk in files.chunks(path)] == [b"replaced"]
    assert await files.size(path) == 8
    assert await files.size(files.local("missing")) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["abc"]


async def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    files = MediaFiles(tmp_path)

    async def failing() -> AsyncIterator[bytes]:
        yield b"half"
        raise RuntimeError("the client went away")

    path = files.remote("other.org:8448", "xyz")
    with pytest.raises(RuntimeError):
        await files.write(path, failing())
    assert list(path.parent.iterdir()) == []


def test_names_that_would_leave_the_store_are_refused(tmp_path: Path) -> None:
    files = MediaFiles(tmp_path)
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError, match="cannot name a file"):
            files.local(bad)
        with pytest.raises(ValueError, match="cannot name a file"):
            files.remote(bad, "x")
    assert files.thumbnail("o", "m", 32, 24, "crop") == tmp_path / "thumbnails" / "o" / "m" / (
        "32x24-crop"
    )


_FILL = {"content_type": "text/plain", "upload_name": "n", "size": 4, "ts": 9}
_TWICE: dict[str, WriteOperation[Any]] = {
    "media.create_media": write_call(
        module._create_media, origin=US, media_id="new", user_id=ALICE, created_ts=1
    ),
    "media.add_upload": write_call(
        module._add_upload, origin=US, media_id="up", user_id=ALICE, **_FILL
    ),
    "media.complete_upload": write_call(
        module._complete_upload, origin=US, media_id="pending", user_id=ALICE, **_FILL
    ),
    "media.add_remote": write_call(module._add_remote, origin="o.org", media_id="r", **_FILL),
    "media.record_access": write_call(module._record_access, origin=US, media_id="pending", ts=5),
    "media.add_thumbnail": write_call(
        module._add_thumbnail,
        origin=US,
        media_id="pending",
        width=32,
        height=32,
        method="crop",
        content_type="image/png",
        size=3,
    ),
}


def test_every_write_of_the_module_is_run_twice_here() -> None:
    names = {name for name in operations.operation_names() if name.startswith("media.")}
    assert names == set(_TWICE)


@pytest.mark.parametrize("name", sorted(_TWICE))
async def test_a_write_run_twice_leaves_what_the_first_run_left(
    storage: Storage, db_path: Path, name: str
) -> None:
    """A worker's write repeated after the main process restarted."""
    await storage.media.create(US, "pending", user_id=ALICE, created_ts=1)
    operation = _TWICE[name]
    await run_twice(storage, db_path, operation, ("media", "media_thumbnails"))


async def test_uploaded_bytes_are_summed_within_the_window(storage: Storage) -> None:
    media = storage.media
    for media_id, size, ts in (("old", 10, 1000), ("edge", 20, 5000), ("new", 40, 9000)):
        await media.add_upload(
            US, media_id, user_id=ALICE, content_type=None, upload_name=None, size=size, ts=ts
        )
    # Not Alice's uploads: Bob's, another server's, and an ID not yet filled.
    await media.add_upload(
        US, "bobs", user_id=BOB, content_type=None, upload_name=None, size=100, ts=9000
    )
    await media.add_remote(
        "other.org", "far", content_type=None, upload_name=None, size=100, ts=9000
    )
    await media.create(US, "empty", user_id=ALICE, created_ts=9000)
    # Created long before the window, uploaded within it.
    await media.create(US, "ahead", user_id=ALICE, created_ts=100)
    await media.complete_upload(
        US, "ahead", user_id=ALICE, content_type=None, upload_name=None, size=8, ts=9600
    )

    async def used(period_ms: int, *, lead_ms: int = 10_000) -> int:
        window = UploadWindow(period_ms=period_ms, max_bytes=1)
        quota = UploadQuota(windows=(window,), created_lead_ms=lead_ms)
        return await media.uploaded_bytes(US, ALICE, window=window, quota=quota, ts=10_000)

    # The window (5000, 10000] leaves out the upload at its very start.
    assert await used(5000) == 40 + 8
    assert await used(5001) == 20 + 40 + 8
    assert await used(20_000) == 10 + 20 + 40 + 8
    assert await used(500) == 8
    # Rows created more than the lead before the window are not read.
    assert await used(5000, lead_ms=0) == 40


async def test_an_upload_that_would_cross_a_window_is_refused_whole(storage: Storage) -> None:
    media = storage.media
    hour = UploadWindow(period_ms=1000, max_bytes=100)
    day = UploadWindow(period_ms=10_000, max_bytes=150)
    quota = UploadQuota(windows=(hour, day), created_lead_ms=0)

    async def upload(media_id: str, size: int, ts: int, user: str = ALICE) -> Any:
        return await media.add_upload(
            US,
            media_id,
            user_id=user,
            content_type=None,
            upload_name=None,
            size=size,
            ts=ts,
            quota=quota,
        )

    assert await upload("a", 60, 0) is None
    assert await upload("b", 50, 500) == hour
    assert await media.media(US, "b") is None
    # Exactly the maximum is within it.
    assert await upload("c", 40, 500) is None
    assert await upload("d", 1, 900, user=BOB) is None
    # The first hour's window has moved past "a"; the day's has not.
    assert await upload("e", 60, 1200) == day
    assert await media.media(US, "e") is None
    assert await upload("f", 50, 1200) is None

    # Filling a created ID is held to the windows too, and stays unfilled.
    await media.create(US, "later", user_id=ALICE, created_ts=1300)

    def fill(size: int, ts: int) -> Any:
        return media.complete_upload(
            US,
            "later",
            user_id=ALICE,
            content_type=None,
            upload_name=None,
            size=size,
            ts=ts,
            quota=quota,
        )

    assert await fill(1, 1300) == day
    pending = await media.media(US, "later")
    assert pending is not None
    assert not pending.uploaded
    # Once every upload has left the day's window, it fits.
    assert await fill(100, 11_200) == "stored"


async def test_a_write_within_its_quota_run_twice_is_not_counted_against_itself(
    storage: Storage, db_path: Path
) -> None:
    quota = UploadQuota(windows=(UploadWindow(period_ms=1000, max_bytes=4),), created_lead_ms=0)
    await storage.media.create(US, "pending", user_id=ALICE, created_ts=1)
    add = write_call(
        module._add_upload, origin=US, media_id="up", user_id=ALICE, quota=quota, **_FILL
    )
    assert await run_twice(storage, db_path, add, ("media",)) is None
    # Alice has her 4 bytes in this window: the created ID cannot be filled
    # now, though the same fill run twice elsewhere answered as it should.
    fill = write_call(
        module._complete_upload, origin=US, media_id="pending", user_id=ALICE, quota=quota, **_FILL
    )
    assert await storage.actor.submit(fill) == UploadWindow(period_ms=1000, max_bytes=4)
    later = write_call(
        module._complete_upload,
        origin=US,
        media_id="pending",
        user_id=ALICE,
        quota=quota,
        **{**_FILL, "ts": 2000},
    )
    assert await run_twice(storage, db_path, later, ("media",)) == "stored"
