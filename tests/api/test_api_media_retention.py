"""Media retention over real HTTP: media nobody used for its lifetime is
gone after a pass (file, thumbnails and rows), media used since is kept,
quarantined and protected media is kept, deletions a crash interrupted
are finished, and serving notes accesses sparingly.

The media repository's clock is set by the test and each pass is run as
of a time the test names, so days pass without waiting for them.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
from PIL import Image

from ranvier.config import MediaConfig
from ranvier.core.media import ACCESS_NOTE_INTERVAL_MS
from ranvier.core.media_retention import DAY_MS
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"
T0 = 1_800_000_000_000
HOUR_MS = 60 * 60 * 1000


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (30, 60, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    alice: TestUser
    set_clock: Callable[[int], None]

    @property
    def store(self) -> Path:
        return self.hs.server.config.media_store

    async def upload(self, data: bytes, content_type: str = "image/png") -> str:
        response = await self.http.post(
            f"{MEDIA}/upload",
            content=data,
            headers={
                "Authorization": f"Bearer {self.alice.access_token}",
                "Content-Type": content_type,
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["content_uri"]).rpartition("/")[2]

    async def download(self, media_id: str) -> httpx.Response:
        return await self.http.get(
            f"{AUTHED}/download/{self.hs.server_name}/{media_id}",
            headers={"Authorization": f"Bearer {self.alice.access_token}"},
        )

    async def thumbnail(self, media_id: str) -> httpx.Response:
        return await self.http.get(
            f"{AUTHED}/thumbnail/{self.hs.server_name}/{media_id}",
            params={"width": 32, "height": 32, "method": "crop"},
            headers={"Authorization": f"Bearer {self.alice.access_token}"},
        )

    async def row_exists(self, media_id: str) -> bool:
        return await self.hs.server.storage.media.media(self.hs.server_name, media_id) is not None

    async def last_access(self, media_id: str) -> int | None:
        record = await self.hs.server.storage.media.media(self.hs.server_name, media_id)
        assert record is not None
        return record.last_access_ts


@asynccontextmanager
async def open_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, local_days: int | None = 30
) -> AsyncIterator[Env]:
    config = config_for_tests(tmp_path)
    config = msgspec.structs.replace(
        config, media=MediaConfig(local_media_lifetime_days=local_days)
    )
    async with open_test_homeserver(tmp_path, config=config) as hs:
        now = [T0]
        monkeypatch.setattr(hs.server.media, "_clock_ms", lambda: now[0])

        def set_clock(ms: int) -> None:
            now[0] = ms

        alice = await hs.register_user("alice")
        async with httpx.AsyncClient(base_url=hs.client_url, timeout=60) as http:
            yield Env(hs, http, alice, set_clock)


async def test_media_unused_for_its_lifetime_is_gone_and_used_media_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        unused = await env.upload(_png())
        downloaded = await env.upload(_png())
        thumbnailed = await env.upload(_png())
        # A thumbnail of the unused one, made on the day of its upload.
        made = await env.thumbnail(unused)
        thumbnails = env.store / "thumbnails" / env.hs.server_name / unused
        had_thumbnails = any(thumbnails.iterdir())
        env.set_clock(T0 + 20 * DAY_MS)
        assert (await env.download(downloaded)).status_code == 200
        assert (await env.thumbnail(thumbnailed)).status_code == 200

        first = await env.hs.server.media_retention.run_pass(now_ms=T0 + 31 * DAY_MS)
        gone = await env.download(unused)
        unused_row = await env.row_exists(unused)
        kept = [(await env.download(m)).status_code for m in (downloaded, thumbnailed)]
        files_kept = [(env.store / "local" / m).is_file() for m in (downloaded, thumbnailed)]
        # 30 days after their last use, they go too.
        second = await env.hs.server.media_retention.run_pass(now_ms=T0 + 51 * DAY_MS)
        rows_after = [await env.row_exists(m) for m in (downloaded, thumbnailed)]

    assert made.status_code == 200
    assert had_thumbnails
    assert first == 1
    assert (gone.status_code, gone.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert not unused_row
    assert not (env.store / "local" / unused).exists()
    assert not thumbnails.exists()
    assert kept == [200, 200]
    assert files_kept == [True, True]
    assert second == 2
    assert rows_after == [False, False]
    assert list((env.store / "local").iterdir()) == []


async def test_without_a_lifetime_media_is_kept_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch, local_days=None) as env:
        media_id = await env.upload(b"old")
        deleted = await env.hs.server.media_retention.run_pass(now_ms=T0 + 10_000 * DAY_MS)
        served = await env.download(media_id)

    assert deleted == 0
    assert served.content == b"old"


async def test_quarantined_and_protected_media_outlive_their_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        quarantined = await env.upload(b"q")
        protected = await env.upload(b"p")
        plain = await env.upload(b"x")
        admin_store = env.hs.server.storage.media_admin
        name = env.hs.server_name
        await admin_store.quarantine(
            [(name, quarantined)], server_name=name, quarantined_by=env.alice.user_id, ts=T0
        )
        assert await admin_store.set_protected(name, protected, True)
        deleted = await env.hs.server.media_retention.run_pass(now_ms=T0 + 100 * DAY_MS)
        rows = [await env.row_exists(m) for m in (quarantined, protected, plain)]

    assert deleted == 1
    assert rows == [True, True, False]
    assert (env.store / "local" / quarantined).is_file()
    assert (env.store / "local" / protected).is_file()


async def test_an_avatar_outlives_its_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        avatar = await env.upload(_png())
        set_avatar = await env.http.put(
            f"/_matrix/client/v3/profile/{env.alice.user_id}/avatar_url",
            json={"avatar_url": f"mxc://{env.hs.server_name}/{avatar}"},
            headers={"Authorization": f"Bearer {env.alice.access_token}"},
        )
        deleted = await env.hs.server.media_retention.run_pass(now_ms=T0 + 100 * DAY_MS)
        served = await env.download(avatar)

    assert set_avatar.status_code == 200, set_avatar.text
    assert deleted == 0
    assert served.status_code == 200


async def test_accesses_are_noted_once_an_interval_not_once_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_env(tmp_path, monkeypatch) as env:
        media_id = await env.upload(b"popular")
        never = await env.last_access(media_id)
        env.set_clock(T0 + HOUR_MS)
        await env.download(media_id)
        first = await env.last_access(media_id)
        env.set_clock(T0 + HOUR_MS + ACCESS_NOTE_INTERVAL_MS - 1)
        await env.download(media_id)
        within = await env.last_access(media_id)
        env.set_clock(T0 + HOUR_MS + ACCESS_NOTE_INTERVAL_MS)
        await env.download(media_id)
        after = await env.last_access(media_id)

    assert never is None
    assert first == T0 + HOUR_MS
    assert within == first
    assert after == T0 + HOUR_MS + ACCESS_NOTE_INTERVAL_MS


async def test_media_marked_for_deletion_is_gone_at_once_and_finished_by_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash between marking the rows and removing them leaves."""
    async with open_env(tmp_path, monkeypatch, local_days=None) as env:
        marked = await env.upload(_png())
        file_missing = await env.upload(b"lost")
        await env.thumbnail(marked)
        name = env.hs.server_name
        admin_store = env.hs.server.storage.media_admin
        assert await admin_store.mark_for_deletion([(name, marked), (name, file_missing)], None)
        (env.store / "local" / file_missing).unlink()
        served = await env.download(marked)
        thumbnail = await env.thumbnail(marked)
        file_still_there = (env.store / "local" / marked).is_file()
        finished = await env.hs.server.media_retention.run_pass()
        rows = [await env.row_exists(m) for m in (marked, file_missing)]

    assert (served.status_code, served.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert thumbnail.status_code == 404
    assert file_still_there
    assert finished == 2
    assert rows == [False, False]
    assert list((env.store / "local").iterdir()) == []
    assert not (env.store / "thumbnails" / name / marked).exists()


async def test_the_task_finishes_deletions_left_by_a_stopped_server_when_it_starts(
    tmp_path: Path,
) -> None:
    config = config_for_tests(tmp_path)
    async with open_test_homeserver(tmp_path, config=config) as hs:
        alice = await hs.register_user("alice")
        async with hs.client(alice) as http:
            uploaded = await http.post(f"{MEDIA}/upload", content=b"doomed")
        media_id = str(uploaded.json()["content_uri"]).rpartition("/")[2]
        await hs.server.storage.media_admin.mark_for_deletion([(hs.server_name, media_id)], None)
    path = config.media_store / "local" / media_id
    left_behind = path.is_file()

    async with open_test_homeserver(tmp_path, config=config) as again:
        await again.server.media_retention.wait_for_pass(1)
        row = await again.server.storage.media.media(again.server_name, media_id)

    assert left_behind
    assert row is None
    assert not path.exists()


def test_lifetimes_are_whole_positive_days() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"local_media_lifetime_days": bad}, MediaConfig)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"remote_media_lifetime_days": bad}, MediaConfig)
    assert msgspec.convert({}, MediaConfig).local_media_lifetime_days is None


async def test_other_servers_media_unused_for_its_lifetime_is_dropped_and_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki.create(tmp_path)
    b_config = config_for_tests(tmp_path / "b", federation=pki)
    b_config = msgspec.structs.replace(
        b_config, media=MediaConfig(remote_media_lifetime_days=7, local_media_lifetime_days=7)
    )
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", config=b_config) as b,
    ):
        monkeypatch.setattr(b.server.media, "_clock_ms", lambda: T0)
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        async with a.client(alice) as at_a, b.client(bob) as at_b:
            uploaded = await at_a.post(f"{MEDIA}/upload", content=b"from a")
            uri = str(uploaded.json()["content_uri"]).removeprefix("mxc://")
            origin, _, media_id = uri.partition("/")
            first = await at_b.get(f"{AUTHED}/download/{uri}")
            kept = b.server.config.media_store / "remote" / origin / media_id
            was_kept = kept.is_file()
            deleted = await b.server.media_retention.run_pass(now_ms=T0 + 8 * DAY_MS)
            row_after = await b.server.storage.media.media(origin, media_id)
            file_after = kept.exists()
            again = await at_b.get(f"{AUTHED}/download/{uri}")
            row_again = await b.server.storage.media.media(origin, media_id)
            # A's own copy is A's: B's retention never touches it.
            at_origin = await at_a.get(f"{AUTHED}/download/{uri}")

    assert first.content == b"from a"
    assert was_kept
    assert deleted == 1
    assert row_after is None
    assert not file_after
    assert again.content == b"from a"
    assert row_again is not None
    assert kept.is_file()
    assert at_origin.content == b"from a"
