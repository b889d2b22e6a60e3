"""Quarantine and the remote media cache between two servers over loopback
TLS: media A quarantines is not served to B, media B quarantines is not
served to B's users and not fetched from A, and B's purge of its cache
drops its copies, which are fetched again when asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _admin import admin_call, admin_ok

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"
FAR_FUTURE = 99_999_999_999_999


@dataclass
class Pair:
    a: TestHomeserver
    b: TestHomeserver
    at_a: httpx.AsyncClient
    at_b: httpx.AsyncClient
    alice: TestUser
    a_admin: TestUser
    bob: TestUser
    b_admin: TestUser

    async def upload_at_a(self, data: bytes) -> tuple[str, str]:
        response = await self.at_a.post(
            f"{MEDIA}/upload",
            content=data,
            headers={"Authorization": f"Bearer {self.alice.access_token}"},
        )
        assert response.status_code == 200, response.text
        origin, _, media_id = (
            str(response.json()["content_uri"]).removeprefix("mxc://").partition("/")
        )
        return origin, media_id

    async def bob_gets(self, origin: str, media_id: str) -> httpx.Response:
        return await self.at_b.get(
            f"{AUTHED}/download/{origin}/{media_id}",
            headers={"Authorization": f"Bearer {self.bob.access_token}"},
        )

    def b_copy(self, origin: str, media_id: str) -> Path:
        return self.b.server.config.media_store / "remote" / origin / media_id


@asynccontextmanager
async def two_servers(tmp_path: Path) -> AsyncIterator[Pair]:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        httpx.AsyncClient(base_url=a.client_url, timeout=60) as at_a,
        httpx.AsyncClient(base_url=b.client_url, timeout=60) as at_b,
    ):
        yield Pair(
            a,
            b,
            at_a,
            at_b,
            await a.register_user("alice"),
            await a.register_user("admin", admin=True),
            await b.register_user("bob"),
            await b.register_user("admin", admin=True),
        )


async def _admin(http: httpx.AsyncClient, admin: TestUser, method: str, path: str) -> Any:
    return await admin_ok(http, admin, method, path, {})


async def test_media_quarantined_at_its_origin_is_not_served_to_other_servers(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as pair:
        origin, media_id = await pair.upload_at_a(b"abusive")
        await _admin(pair.at_a, pair.a_admin, "POST", f"/v1/media/quarantine/{origin}/{media_id}")
        refused = await pair.bob_gets(origin, media_id)
        nothing_kept = await pair.b.server.storage.media.media(origin, media_id)
        await _admin(pair.at_a, pair.a_admin, "POST", f"/v1/media/unquarantine/{origin}/{media_id}")
        served = await pair.bob_gets(origin, media_id)

    assert (refused.status_code, refused.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert nothing_kept is None
    assert served.content == b"abusive"


async def test_other_servers_media_quarantined_here_is_neither_served_nor_fetched(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as pair:
        origin, cached = await pair.upload_at_a(b"cached")
        origin, never = await pair.upload_at_a(b"never fetched")
        assert (await pair.bob_gets(origin, cached)).status_code == 200
        for media_id in (cached, never):
            await _admin(
                pair.at_b, pair.b_admin, "POST", f"/v1/media/quarantine/{origin}/{media_id}"
            )
        refused = [await pair.bob_gets(origin, m) for m in (cached, never)]
        never_row = await pair.b.server.storage.media.media(origin, never)
        never_file = pair.b_copy(origin, never).exists()
        # Kept in the cache while quarantined: a purge spares it.
        purged = await _admin(
            pair.at_b, pair.b_admin, "POST", f"/v1/purge_media_cache?before_ts={FAR_FUTURE}"
        )
        cached_file = pair.b_copy(origin, cached).is_file()
        for media_id in (cached, never):
            await _admin(
                pair.at_b, pair.b_admin, "POST", f"/v1/media/unquarantine/{origin}/{media_id}"
            )
        served = [await pair.bob_gets(origin, m) for m in (cached, never)]

    for answer in refused:
        assert (answer.status_code, answer.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert never_row is None
    assert not never_file
    assert purged == {"deleted": 0}
    assert cached_file
    assert [answer.content for answer in served] == [b"cached", b"never fetched"]
    assert pair.b_copy(origin, never).is_file()


async def test_purging_the_cache_drops_copies_which_are_fetched_again(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as pair:
        origin, media_id = await pair.upload_at_a(b"copied")
        first = await pair.bob_gets(origin, media_id)
        copy = pair.b_copy(origin, media_id)
        copied = copy.is_file()
        past = await _admin(
            pair.at_b, pair.b_admin, "POST", "/v1/purge_media_cache?before_ts=31000000000"
        )
        status, _ = await admin_call(
            pair.at_b, pair.b_admin, "POST", "/v1/purge_media_cache?before_ts=1000000", {}
        )
        purged = await _admin(
            pair.at_b, pair.b_admin, "POST", f"/v1/purge_media_cache?before_ts={FAR_FUTURE}"
        )
        row = await pair.b.server.storage.media.media(origin, media_id)
        file_after = copy.exists()
        # A's own media is not B's cache: A keeps it.
        at_a = await _admin(
            pair.at_a, pair.a_admin, "POST", f"/v1/purge_media_cache?before_ts={FAR_FUTURE}"
        )
        again = await pair.bob_gets(origin, media_id)

    assert first.content == b"copied"
    assert copied
    assert status == 400
    assert purged == {"deleted": 1}
    assert past == {"deleted": 0}
    assert row is None
    assert not file_after
    assert at_a == {"deleted": 0}
    assert again.content == b"copied"
    assert copy.is_file()
