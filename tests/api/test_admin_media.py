"""The media admin API over real HTTP: media details, quarantine of one
piece, of a room's and of a user's media, protection from it, a room's
and a user's media listed, and deletion (one piece, a user's, by date
and size), each refused to anyone but an admin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _admin import admin_call, admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q

from ranvier.testing.homeserver import TestUser

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _auth(user: TestUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.access_token}"}


async def _upload(
    env: WithAdmin, data: bytes, user: TestUser | None = None, content_type: str = "text/plain"
) -> str:
    """The media ID of an upload (Alice's unless ``user`` is given)."""
    response = await env.client.http.post(
        f"{MEDIA}/upload",
        content=data,
        headers={**_auth(user or env.alice), "Content-Type": content_type},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["content_uri"]).rpartition("/")[2]


async def _download(env: WithAdmin, media_id: str, *, legacy: bool = False) -> httpx.Response:
    name = env.hs.server_name
    if legacy:
        return await env.client.http.get(f"{MEDIA}/download/{name}/{media_id}")
    return await env.client.http.get(f"{AUTHED}/download/{name}/{media_id}", headers=_auth(env.bob))


async def _admin(env: WithAdmin, method: str, path: str, **kw: Any) -> Any:
    return await admin_ok(env.client.http, env.admin, method, path, {}, **kw)


def _store(env: WithAdmin) -> Path:
    return env.hs.server.config.media_store


async def test_everything_is_refused_to_non_admins(env: WithAdmin) -> None:
    media_id = await _upload(env, b"x")
    name = env.hs.server_name
    room_id = await env.client.create_room(env.alice)
    calls = [
        ("GET", f"/v1/media/{name}/{media_id}"),
        ("DELETE", f"/v1/media/{name}/{media_id}"),
        ("POST", f"/v1/media/quarantine/{name}/{media_id}"),
        ("POST", f"/v1/media/unquarantine/{name}/{media_id}"),
        ("POST", f"/v1/media/protect/{media_id}"),
        ("POST", f"/v1/media/unprotect/{media_id}"),
        ("POST", "/v1/media/delete?before_ts=99999999999999"),
        ("POST", "/v1/purge_media_cache?before_ts=99999999999999"),
        ("GET", f"/v1/room/{q(room_id)}/media"),
        ("POST", f"/v1/room/{q(room_id)}/media/quarantine"),
        ("POST", f"/v1/quarantine_media/{q(room_id)}"),
        ("POST", f"/v1/media/{name}/delete?before_ts=99999999999999"),
        ("POST", f"/v1/user/{q(env.alice.user_id)}/media/quarantine"),
        ("GET", f"/v1/users/{q(env.alice.user_id)}/media"),
        ("DELETE", f"/v1/users/{q(env.alice.user_id)}/media"),
    ]
    for method, path in calls:
        await admin_refused(
            env.client.http, env.alice, method, path, {}, status=403, errcode="M_FORBIDDEN"
        )
        status, _ = await admin_call(env.client.http, None, method, path, {})
        assert status == 401, (method, path)
    served = await _download(env, media_id)
    assert served.content == b"x"


async def test_quarantined_media_is_not_served_until_unquarantined(env: WithAdmin) -> None:
    png = await _upload(env, b"\x89PNG not really", content_type="image/png")
    name = env.hs.server_name
    await _admin(env, "POST", f"/v1/media/quarantine/{name}/{png}")
    details = await _admin(env, "GET", f"/v1/media/{name}/{png}")
    authed = await _download(env, png)
    legacy = await _download(env, png, legacy=True)
    thumbnail = await env.client.http.get(
        f"{AUTHED}/thumbnail/{name}/{png}",
        params={"width": 32, "height": 32},
        headers=_auth(env.bob),
    )
    # The uploader is refused too, and the file is kept.
    own = await env.client.http.get(f"{AUTHED}/download/{name}/{png}", headers=_auth(env.alice))
    kept = (_store(env) / "local" / png).is_file()

    await _admin(env, "POST", f"/v1/media/unquarantine/{name}/{png}")
    again = await _download(env, png)
    details_after = await _admin(env, "GET", f"/v1/media/{name}/{png}")

    assert details["media_info"]["quarantined_by"] == env.admin.user_id
    for refused in (authed, legacy, thumbnail, own):
        assert (refused.status_code, refused.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert kept
    assert again.content == b"\x89PNG not really"
    assert details_after["media_info"]["quarantined_by"] is None


async def test_media_details(env: WithAdmin) -> None:
    before = time.time_ns() // 1_000_000
    uploaded = await env.client.http.post(
        f"{MEDIA}/upload",
        params={"filename": "n.txt"},
        content=b"12345",
        headers={**_auth(env.alice), "Content-Type": "text/plain"},
    )
    media_id = str(uploaded.json()["content_uri"]).rpartition("/")[2]
    name = env.hs.server_name
    await _download(env, media_id)
    details = await _admin(env, "GET", f"/v1/media/{name}/{media_id}")
    unknown_status, unknown = await admin_call(
        env.client.http, env.admin, "GET", f"/v1/media/{name}/nosuchmedia"
    )

    info = details["media_info"]
    assert info["media_origin"] == name
    assert info["media_id"] == media_id
    assert info["user_id"] == env.alice.user_id
    assert (info["media_type"], info["media_length"]) == ("text/plain", 5)
    assert info["upload_name"] == "n.txt"
    assert info["created_ts"] >= before
    assert info["last_access_ts"] >= info["created_ts"]
    assert info["quarantined_by"] is None
    assert info["safe_from_quarantine"] is False
    assert (unknown_status, unknown["errcode"]) == (404, "M_NOT_FOUND")


async def test_protected_media_is_not_quarantined_by_any_call(env: WithAdmin) -> None:
    name = env.hs.server_name
    protected = await _upload(env, b"sticker")
    plain = await _upload(env, b"plain")
    await _admin(env, "POST", f"/v1/media/protect/{protected}")
    by_user = await _admin(env, "POST", f"/v1/user/{q(env.alice.user_id)}/media/quarantine")
    await _admin(env, "POST", f"/v1/media/quarantine/{name}/{protected}")
    served = await _download(env, protected)
    refused = await _download(env, plain)
    details = await _admin(env, "GET", f"/v1/media/{name}/{protected}")
    # Unprotected, a sweep takes it.
    await _admin(env, "POST", f"/v1/media/unprotect/{protected}")
    again = await _admin(env, "POST", f"/v1/user/{q(env.alice.user_id)}/media/quarantine")
    after = await _download(env, protected)

    assert by_user == {"num_quarantined": 1}
    assert served.content == b"sticker"
    assert refused.status_code == 404
    assert details["media_info"]["safe_from_quarantine"] is True
    assert again == {"num_quarantined": 2}
    assert after.status_code == 404


async def test_protecting_unknown_media_is_not_found(env: WithAdmin) -> None:
    for path in ("/v1/media/protect/nosuchmedia", "/v1/media/unprotect/nosuchmedia"):
        await admin_refused(
            env.client.http, env.admin, "POST", path, {}, status=404, errcode="M_NOT_FOUND"
        )
    await admin_refused(
        env.client.http,
        env.admin,
        "POST",
        f"/v1/media/quarantine/{env.hs.server_name}/bad.id",
        {},
        status=400,
        errcode="M_INVALID_PARAM",
    )


async def test_a_rooms_media_is_listed_and_quarantined_protected_media_apart(
    env: WithAdmin,
) -> None:
    name = env.hs.server_name
    image = await _upload(env, b"image")
    thumb = await _upload(env, b"thumb")
    sticker = await _upload(env, b"sticker")
    elsewhere = await _upload(env, b"elsewhere")
    await _admin(env, "POST", f"/v1/media/protect/{sticker}")
    room_id = await env.client.create_room(env.alice, preset="public_chat")
    other_room = await env.client.create_room(env.alice)
    contents = [
        {
            "msgtype": "m.image",
            "body": "i",
            "url": f"mxc://{name}/{image}",
            "info": {"thumbnail_url": f"mxc://{name}/{thumb}"},
        },
        {"msgtype": "m.image", "body": "s", "url": f"mxc://{name}/{sticker}"},
        {"msgtype": "m.file", "body": "r", "url": "mxc://remote.example/RemoteMedia1"},
        {"msgtype": "m.text", "body": "not media", "url": "https://example.org/x"},
        # Named twice: listed once.
        {"msgtype": "m.image", "body": "i again", "url": f"mxc://{name}/{image}"},
    ]
    for index, content in enumerate(contents):
        await env.client.ok(
            env.alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t{index}", content
        )
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(other_room)}/send/m.room.message/o",
        {"msgtype": "m.image", "body": "e", "url": f"mxc://{name}/{elsewhere}"},
    )

    listed = await _admin(env, "GET", f"/v1/room/{q(room_id)}/media")
    quarantined = await _admin(env, "POST", f"/v1/room/{q(room_id)}/media/quarantine")
    # The older path does the same; what is quarantined already counts.
    again = await _admin(env, "POST", f"/v1/quarantine_media/{q(room_id)}")
    statuses = {m: (await _download(env, m)).status_code for m in (image, thumb, sticker)}
    untouched = await _download(env, elsewhere)
    remote = await env.hs.server.storage.media.quarantined_by("remote.example", "RemoteMedia1")
    missing_status, missing = await admin_call(
        env.client.http, env.admin, "GET", f"/v1/room/{q('!nowhere:' + name)}/media"
    )

    assert listed == {
        "local": [f"mxc://{name}/{image}", f"mxc://{name}/{thumb}", f"mxc://{name}/{sticker}"],
        "remote": ["mxc://remote.example/RemoteMedia1"],
    }
    assert quarantined == again == {"num_quarantined": 3}
    assert statuses == {image: 404, thumb: 404, sticker: 200}
    assert untouched.content == b"elsewhere"
    assert remote == env.admin.user_id
    assert (missing_status, missing["errcode"]) == (404, "M_NOT_FOUND")


async def test_a_users_media_is_listed_in_pages_and_deleted(env: WithAdmin) -> None:
    ids = [await _upload(env, b"x" * size) for size in (3, 1, 2)]
    bobs = await _upload(env, b"bob's", user=env.bob)
    path = f"/v1/users/{q(env.alice.user_id)}/media"
    first = await _admin(env, "GET", path, params={"limit": 2})
    second = await _admin(env, "GET", path, params={"limit": 2, "from": first["next_token"]})
    by_size = await _admin(env, "GET", path, params={"order_by": "media_length"})
    bad_order_status, bad_order = await admin_call(
        env.client.http, env.admin, "GET", path, params={"order_by": "colour"}
    )
    # One file already missing: its rows go all the same.
    (_store(env) / "local" / ids[1]).unlink()
    deleted = await _admin(env, "DELETE", path, params={"order_by": "media_length", "limit": 2})
    rows = [await env.hs.server.storage.media.media(env.hs.server_name, m) for m in ids]
    remaining = await _admin(env, "GET", path)
    bobs_served = await _download(env, bobs)
    unknown_status, unknown = await admin_call(
        env.client.http, env.admin, "GET", f"/v1/users/{q('@nobody:' + env.hs.server_name)}/media"
    )
    remote_status, remote = await admin_call(
        env.client.http, env.admin, "GET", f"/v1/users/{q('@x:elsewhere.example')}/media"
    )

    # Newest first by default; the third upload is the newest.
    assert first["total"] == 3
    assert len(first["media"]) == 2
    assert first["next_token"] == 2
    assert "next_token" not in second
    listed = [m["media_id"] for m in first["media"] + second["media"]]
    assert sorted(listed) == sorted(ids)
    entry = next(m for m in by_size["media"] if m["media_id"] == ids[0])
    assert entry["media_length"] == 3
    assert entry["media_type"] == "text/plain"
    assert entry["safe_from_quarantine"] is False
    assert [m["media_id"] for m in by_size["media"]] == [ids[1], ids[2], ids[0]]
    assert (bad_order_status, bad_order["errcode"]) == (400, "M_INVALID_PARAM")
    assert deleted == {"deleted_media": [ids[1], ids[2]], "total": 2}
    assert [row is None for row in rows] == [False, True, True]
    assert not (_store(env) / "local" / ids[2]).exists()
    assert [m["media_id"] for m in remaining["media"]] == [ids[0]]
    assert bobs_served.status_code == 200
    assert (unknown_status, unknown["errcode"]) == (404, "M_NOT_FOUND")
    assert (remote_status, remote["errcode"]) == (400, "M_INVALID_PARAM")


async def test_one_piece_of_media_is_deleted_with_its_thumbnails(env: WithAdmin) -> None:
    name = env.hs.server_name
    media_id = await _upload(env, b"gone soon")
    await _admin(env, "POST", f"/v1/media/quarantine/{name}/{media_id}")
    deleted = await _admin(env, "DELETE", f"/v1/media/{name}/{media_id}")
    row = await env.hs.server.storage.media.media(name, media_id)
    quarantine = await env.hs.server.storage.media.quarantined_by(name, media_id)
    again_status, again = await admin_call(
        env.client.http, env.admin, "DELETE", f"/v1/media/{name}/{media_id}"
    )
    remote_status, remote = await admin_call(
        env.client.http, env.admin, "DELETE", "/v1/media/remote.example/SomeMedia"
    )
    served = await _download(env, media_id)

    assert deleted == {"deleted_media": [media_id], "total": 1}
    assert row is None
    assert quarantine is None
    assert not (_store(env) / "local" / media_id).exists()
    assert (again_status, again["errcode"]) == (404, "M_NOT_FOUND")
    assert (remote_status, remote["errcode"]) == (400, "M_INVALID_PARAM")
    assert served.status_code == 404


async def test_local_media_deleted_by_date_and_size_profiles_kept_unless_asked(
    env: WithAdmin,
) -> None:
    name = env.hs.server_name
    small = await _upload(env, b"s")
    large = await _upload(env, b"l" * 100)
    avatar = await _upload(env, b"a" * 100)
    quarantined = await _upload(env, b"q" * 100)
    await env.client.ok(
        env.alice,
        "PUT",
        f"/profile/{q(env.alice.user_id)}/avatar_url",
        {"avatar_url": f"mxc://{name}/{avatar}"},
    )
    await _admin(env, "POST", f"/v1/media/quarantine/{name}/{quarantined}")
    now = time.time_ns() // 1_000_000
    past = await _admin(env, "POST", "/v1/media/delete", params={"before_ts": now - 3_600_000})
    by_size = await _admin(
        env, "POST", "/v1/media/delete", params={"before_ts": now + 60_000, "size_gt": 10}
    )
    small_kept = await _download(env, small)
    # At the older path, which names the server.
    with_profiles = await _admin(
        env,
        "POST",
        f"/v1/media/{name}/delete",
        params={"before_ts": now + 60_000, "keep_profiles": "false"},
    )
    elsewhere_status, elsewhere = await admin_call(
        env.client.http,
        env.admin,
        "POST",
        "/v1/media/elsewhere.example/delete",
        {},
        params={"before_ts": now},
    )
    missing_status, missing = await admin_call(
        env.client.http, env.admin, "POST", "/v1/media/delete", {}
    )
    seconds_status, seconds = await admin_call(
        env.client.http,
        env.admin,
        "POST",
        "/v1/media/delete",
        {},
        params={"before_ts": now // 1000},
    )

    assert past == {"deleted_media": [], "total": 0}
    assert by_size == {"deleted_media": [large], "total": 1}
    assert small_kept.content == b"s"
    assert sorted(with_profiles["deleted_media"]) == sorted([small, avatar])
    assert (_store(env) / "local" / quarantined).is_file()
    assert (missing_status, missing["errcode"]) == (400, "M_MISSING_PARAM")
    assert (elsewhere_status, elsewhere["errcode"]) == (400, "M_INVALID_PARAM")
    assert (seconds_status, seconds["errcode"]) == (400, "M_INVALID_PARAM")
