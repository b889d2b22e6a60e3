"""The content repository over real HTTP: uploads and downloads (plain and
created ahead), headers, limits, unknown media, tokens, config."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
import trio.testing

from ranvier.config import MediaConfig
from ranvier.core.media import MAX_PENDING_UPLOADS
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    alice: TestUser
    bob: TestUser

    def auth(self, user: TestUser | None) -> dict[str, str]:
        return {} if user is None else {"Authorization": f"Bearer {user.access_token}"}

    async def upload(
        self,
        data: bytes,
        *,
        content_type: str | None = "application/octet-stream",
        filename: str | None = None,
        user: TestUser | None = None,
    ) -> str:
        headers = self.auth(user or self.alice)
        if content_type is not None:
            headers["Content-Type"] = content_type
        params = {} if filename is None else {"filename": filename}
        response = await self.http.post(
            f"{MEDIA}/upload", content=data, headers=headers, params=params
        )
        assert response.status_code == 200, response.text
        uri: str = response.json()["content_uri"]
        return uri

    async def download(
        self, uri: str, *, user: TestUser | None = None, suffix: str = "", **params: Any
    ) -> httpx.Response:
        server_and_id = uri.removeprefix("mxc://")
        return await self.http.get(
            f"{AUTHED}/download/{server_and_id}{suffix}",
            headers=self.auth(user or self.alice),
            params=params,
        )


@asynccontextmanager
async def open_env(tmp_path: Path, *, max_upload_bytes: int | None = None) -> AsyncIterator[Env]:
    config = config_for_tests(tmp_path)
    if max_upload_bytes is not None:
        config = msgspec.structs.replace(
            config, media=MediaConfig(max_upload_bytes=max_upload_bytes)
        )
    async with open_test_homeserver(tmp_path, config=config) as hs:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        async with httpx.AsyncClient(base_url=hs.client_url, timeout=60) as http:
            yield Env(hs, http, alice, bob)


def _error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert isinstance(body.get("error"), str)
    assert body["error"]
    return response.status_code, body["errcode"]


async def test_an_upload_downloads_byte_for_byte_with_its_headers(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    async with open_env(tmp_path) as env:
        uri = await env.upload(data, content_type="image/png", filename="cat.png")
        server_name, _, media_id = uri.removeprefix("mxc://").partition("/")
        response = await env.download(uri)

    assert server_name == "localhost"
    assert len(media_id) >= 24
    assert set(media_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-disposition"] == 'inline; filename="cat.png"'
    assert "sandbox" in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert response.headers["access-control-allow-origin"] == "*"


async def test_the_file_is_kept_under_its_media_id_in_the_store(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        uri = await env.upload(b"kept")
        media_id = uri.rpartition("/")[2]
        stored = (env.hs.server.config.media_store / "local" / media_id).read_bytes()
        leftovers = [
            path.name
            for path in (env.hs.server.config.media_store / "local").iterdir()
            if path.name != media_id
        ]
    assert stored == b"kept"
    assert leftovers == []


async def test_unsafe_types_are_attachments_and_names_come_from_the_path(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        html = await env.upload(b"<script>alert(1)</script>", content_type="text/html")
        named = await env.upload(b"x", content_type="text/plain", filename="notes.txt")
        untyped = await env.upload(b"y", content_type=None)
        html_answer = await env.download(html)
        renamed = await env.download(named, suffix="/r%C3%A9sum%C3%A9.txt")
        untyped_answer = await env.download(untyped)

    assert html_answer.headers["content-type"] == "text/html"
    assert html_answer.headers["content-disposition"] == "attachment"
    assert renamed.headers["content-disposition"] == "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt"
    assert untyped_answer.headers["content-type"] == "application/octet-stream"
    assert untyped_answer.headers["content-disposition"] == "attachment"


async def test_the_legacy_download_needs_no_token(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        uri = await env.upload(b"old clients", content_type="text/plain")
        response = await env.http.get(f"{MEDIA}/download/{uri.removeprefix('mxc://')}")
        r0 = await env.http.get(f"/_matrix/media/r0/download/{uri.removeprefix('mxc://')}")
    assert (response.status_code, response.content) == (200, b"old clients")
    assert (r0.status_code, r0.content) == (200, b"old clients")


async def test_the_current_endpoints_need_a_token(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        uri = await env.upload(b"private")
        path = uri.removeprefix("mxc://")
        answers = [
            await env.http.get(f"{AUTHED}/download/{path}"),
            await env.http.get(f"{AUTHED}/thumbnail/{path}", params={"width": 1, "height": 1}),
            await env.http.get(f"{AUTHED}/config"),
            await env.http.post(f"{MEDIA}/upload", content=b"x"),
            await env.http.post("/_matrix/media/v1/create"),
            await env.http.get(
                f"{AUTHED}/download/{path}", headers={"Authorization": "Bearer nope"}
            ),
        ]
    assert [_error(answer) for answer in answers] == [(401, "M_MISSING_TOKEN")] * 5 + [
        (401, "M_UNKNOWN_TOKEN")
    ]


async def test_unknown_media_is_not_found(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        answers = [
            await env.download("mxc://localhost/NoSuchMediaHere123456789"),
            await env.download("mxc://localhost/bad.id"),
            await env.download("mxc://not a server/abc"),
            await env.http.get(f"{MEDIA}/download/localhost/NoSuchMediaHere123456789"),
            # Not waited for, whatever the timeout.
            await env.download("mxc://localhost/NoSuchMediaHere123456789", timeout_ms=0),
        ]
    assert [_error(answer) for answer in answers] == [(404, "M_NOT_FOUND")] * 5


async def test_config_gives_the_upload_limit(tmp_path: Path) -> None:
    async with open_env(tmp_path, max_upload_bytes=12345) as env:
        headers = env.auth(env.alice)
        current = await env.http.get(f"{AUTHED}/config", headers=headers)
        legacy = await env.http.get(f"{MEDIA}/config", headers=headers)
    assert current.json() == legacy.json() == {"m.upload.size": 12345}


async def test_uploads_over_the_limit_are_refused_and_leave_no_file(tmp_path: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"z" * 300

    async with open_env(tmp_path, max_upload_bytes=1000) as env:
        headers = {**env.auth(env.alice), "Content-Type": "text/plain"}
        declared = await env.http.post(f"{MEDIA}/upload", content=b"z" * 1001, headers=headers)
        # Sent chunked: no Content-Length to refuse it by, so it is cut off.
        streamed = await env.http.post(f"{MEDIA}/upload", content=chunks(), headers=headers)
        exact = await env.upload(b"z" * 1000)
        local = env.hs.server.config.media_store / "local"
        files = sorted(path.name for path in local.iterdir())
    assert _error(declared) == (413, "M_TOO_LARGE")
    assert _error(streamed) == (413, "M_TOO_LARGE")
    assert files == [exact.rpartition("/")[2]]


async def test_an_upload_larger_than_the_client_api_body_limit_goes_through(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    async with open_env(tmp_path) as env:
        uri = await env.upload(data)
        response = await env.download(uri)
    assert response.content == data


async def test_created_media_is_uploaded_once_by_its_creator(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        created = await env.http.post("/_matrix/media/v1/create", headers=env.auth(env.alice))
        uri = created.json()["content_uri"]
        path = uri.removeprefix("mxc://")
        before = await env.download(uri, timeout_ms=0)
        by_bob = await env.http.put(
            f"{MEDIA}/upload/{path}", content=b"bob's", headers=env.auth(env.bob)
        )
        first = await env.http.put(
            f"{MEDIA}/upload/{path}",
            content=b"alice's",
            headers={**env.auth(env.alice), "Content-Type": "text/plain"},
            params={"filename": "a.txt"},
        )
        second = await env.http.put(
            f"{MEDIA}/upload/{path}", content=b"again", headers=env.auth(env.alice)
        )
        unknown = await env.http.put(
            f"{MEDIA}/upload/localhost/NeverCreated000000000000",
            content=b"x",
            headers=env.auth(env.alice),
        )
        other_server = await env.http.put(
            f"{MEDIA}/upload/example.org/{path.partition('/')[2]}",
            content=b"x",
            headers=env.auth(env.alice),
        )
        after = await env.download(uri)

    assert created.status_code == 200
    assert uri.startswith("mxc://localhost/")
    assert isinstance(created.json()["unused_expires_at"], int)
    assert _error(before) == (504, "M_NOT_YET_UPLOADED")
    assert _error(by_bob) == (403, "M_FORBIDDEN")
    assert (first.status_code, first.json()) == (200, {})
    assert _error(second) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    assert _error(unknown) == (404, "M_NOT_FOUND")
    assert _error(other_server) == (404, "M_NOT_FOUND")
    assert after.content == b"alice's"
    assert after.headers["content-disposition"] == 'inline; filename="a.txt"'


async def test_a_download_waits_for_the_upload_of_created_media(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        created = await env.http.post("/_matrix/media/v1/create", headers=env.auth(env.alice))
        uri = created.json()["content_uri"]
        answers: list[httpx.Response] = []

        async def wait_for_it() -> None:
            answers.append(await env.download(uri, timeout_ms=60_000))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_it)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert answers == []
                uploaded = await env.http.put(
                    f"{MEDIA}/upload/{uri.removeprefix('mxc://')}",
                    content=b"worth the wait",
                    headers=env.auth(env.alice),
                )
    assert uploaded.status_code == 200
    (answer,) = answers
    assert (answer.status_code, answer.content) == (200, b"worth the wait")


async def test_other_client_paths_still_reach_the_client_api(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        whoami = await env.http.get(
            "/_matrix/client/v3/account/whoami", headers=env.auth(env.alice)
        )
        preflight = await env.http.options(f"{MEDIA}/upload")
        unknown = await env.http.get(f"{MEDIA}/nothing-here", headers=env.auth(env.alice))
        wrong_method = await env.http.delete(f"{MEDIA}/upload", headers=env.auth(env.alice))
    assert whoami.json()["user_id"] == "@alice:localhost"
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert _error(unknown) == (404, "M_UNRECOGNIZED")
    assert _error(wrong_method) == (405, "M_UNRECOGNIZED")


async def test_created_ids_waiting_for_their_upload_are_limited(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        answers = [
            await env.http.post("/_matrix/media/v1/create", headers=env.auth(env.alice))
            for _ in range(MAX_PENDING_UPLOADS + 1)
        ]
        for_bob = await env.http.post("/_matrix/media/v1/create", headers=env.auth(env.bob))
    assert [answer.status_code for answer in answers] == [200] * MAX_PENDING_UPLOADS + [429]
    assert _error(answers[-1]) == (429, "M_LIMIT_EXCEEDED")
    assert answers[-1].json()["retry_after_ms"] > 0
    assert int(answers[-1].headers["retry-after"]) > 0
    assert for_bob.status_code == 200
