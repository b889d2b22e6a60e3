"""The ``media_create`` rate limit on uploads and ``create``, over real HTTP.

MediaApp serves these routes in front of ClientApp, so it applies the
limit itself: per user, admins exempt, and refused before the body is read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec

from ranvier.config import RateConfig
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver

MEDIA = "/_matrix/media/v3"
BURST = 3


@asynccontextmanager
async def _open(tmp_path: Path) -> AsyncIterator[tuple[TestHomeserver, httpx.AsyncClient]]:
    config = config_for_tests(tmp_path, rate_limits=True)
    # Slow enough that no token comes back during the test.
    rate = RateConfig(per_second=0.0001, burst=BURST)
    config = msgspec.structs.replace(
        config, ratelimit=msgspec.structs.replace(config.ratelimit, media_create=rate)
    )
    async with (
        open_test_homeserver(tmp_path, config=config) as hs,
        httpx.AsyncClient(base_url=hs.client_url, timeout=60) as http,
    ):
        yield hs, http


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}


def _stored(hs: TestHomeserver) -> tuple[int, int]:
    local = hs.server.config.media_store / "local"
    files = len(list(local.iterdir())) if local.exists() else 0
    with sqlite3.connect(hs.server.config.paths.database) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM media").fetchone()
    return files, int(rows)


async def test_the_upload_after_the_burst_is_refused_and_not_stored(tmp_path: Path) -> None:
    async with _open(tmp_path) as (hs, http):
        alice = await hs.register_user("alice")
        for n in range(BURST):
            response = await http.post(
                f"{MEDIA}/upload", content=f"file {n}".encode(), headers=_auth(alice.access_token)
            )
            assert response.status_code == 200, response.text
        before = _stored(hs)
        refused = await http.post(
            f"{MEDIA}/upload", content=b"one too many", headers=_auth(alice.access_token)
        )
        after = _stored(hs)
    assert before == (BURST, BURST)
    assert refused.status_code == 429, refused.text
    assert refused.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert refused.json()["retry_after_ms"] > 0
    assert int(refused.headers["retry-after"]) > 0
    assert after == before


async def test_create_and_upload_to_share_the_limit(tmp_path: Path) -> None:
    async with _open(tmp_path) as (hs, http):
        alice = await hs.register_user("alice")
        created = await http.post("/_matrix/media/v1/create", headers=_auth(alice.access_token))
        assert created.status_code == 200, created.text
        server_and_id = created.json()["content_uri"].removeprefix("mxc://")
        for _ in range(BURST - 1):
            response = await http.post(
                "/_matrix/media/r0/upload", content=b"x", headers=_auth(alice.access_token)
            )
            assert response.status_code == 200, response.text
        # The burst is spent: filling the created media ID is refused too.
        refused = await http.put(
            f"{MEDIA}/upload/{server_and_id}", content=b"late", headers=_auth(alice.access_token)
        )
        again = await http.post("/_matrix/media/v1/create", headers=_auth(alice.access_token))
    assert refused.status_code == 429, refused.text
    assert again.status_code == 429, again.text


async def test_admins_are_not_limited_and_users_are_limited_apart(tmp_path: Path) -> None:
    async with _open(tmp_path) as (hs, http):
        admin = await hs.register_user("root", admin=True)
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        admin_statuses = [
            (
                await http.post(f"{MEDIA}/upload", content=b"a", headers=_auth(admin.access_token))
            ).status_code
            for _ in range(BURST * 3)
        ]
        alice_statuses = [
            (
                await http.post(f"{MEDIA}/upload", content=b"a", headers=_auth(alice.access_token))
            ).status_code
            for _ in range(BURST + 1)
        ]
        bob_status = (
            await http.post(f"{MEDIA}/upload", content=b"b", headers=_auth(bob.access_token))
        ).status_code
        # Downloads are not counted.
        download = await http.get(
            "/_matrix/client/v1/media/config", headers=_auth(alice.access_token)
        )
    assert admin_statuses == [200] * (BURST * 3)
    assert alice_statuses == [200] * BURST + [429]
    assert bob_status == 200
    assert download.status_code == 200
