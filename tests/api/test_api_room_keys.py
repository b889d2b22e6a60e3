"""Server-side key backups over real HTTP: versions, keys, the replacement
rule, wrong and deleted versions, other users, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from _client import Client, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
AUTH_DATA = {"public_key": "abcdefg", "signatures": {"@alice:localhost": {"ed25519:D": "sig"}}}
ROOM = "!room:example.org"
OTHER_ROOM = "!other:example.org"


def key_data(
    first: int = 0, forwarded: int = 0, verified: bool = False, tag: str = "x"
) -> dict[str, Any]:
    return {
        "first_message_index": first,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ephemeral": "e", "ciphertext": tag, "mac": "m"},
    }


@dataclass
class Env:
    client: Client
    alice: TestUser
    bob: TestUser

    async def create(self, user: TestUser | None = None, **body: Any) -> str:
        answer = await self.client.ok(
            user or self.alice,
            "POST",
            "/room_keys/version",
            {"algorithm": ALG, "auth_data": AUTH_DATA, **body},
        )
        assert set(answer) == {"version"}
        version: str = answer["version"]
        return version

    async def info(self, version: str | None = None, user: TestUser | None = None) -> Any:
        path = "/room_keys/version" + ("" if version is None else f"/{version}")
        return await self.client.ok(user or self.alice, "GET", path)

    async def put(self, path: str, body: Any, version: str, user: TestUser | None = None) -> Any:
        return await self.client.ok(
            user or self.alice, "PUT", f"/room_keys/keys{path}", body, params={"version": version}
        )

    async def get(self, path: str, version: str, user: TestUser | None = None) -> Any:
        return await self.client.ok(
            user or self.alice, "GET", f"/room_keys/keys{path}", params={"version": version}
        )

    async def delete(self, path: str, version: str) -> Any:
        return await self.client.ok(
            self.alice, "DELETE", f"/room_keys/keys{path}", params={"version": version}
        )


def session_path(room: str = ROOM, session: str = "s1") -> str:
    return f"/{q(room)}/{q(session)}"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        yield Env(Client(hs, http), await hs.register_user("alice"), await hs.register_user("bob"))


async def test_a_backup_from_creation_to_deletion(env: Env) -> None:
    client = env.client
    await client.refused(env.alice, "GET", "/room_keys/version", status=404, errcode="M_NOT_FOUND")
    version = await env.create()
    assert version == "1"
    info = await env.info()
    assert info == await env.info(version)
    first_etag = info.pop("etag")
    assert isinstance(first_etag, str)
    assert info == {"algorithm": ALG, "auth_data": AUTH_DATA, "count": 0, "version": "1"}
    # An empty backup, at each of the three paths.
    assert await env.get("", version) == {"rooms": {}}
    assert await env.get(f"/{q(ROOM)}", version) == {"sessions": {}}
    await client.refused(
        env.alice,
        "GET",
        f"/room_keys/keys{session_path()}",
        params={"version": version},
        status=404,
        errcode="M_NOT_FOUND",
    )
    # One key at each of the three paths.
    one = await env.put(session_path(), key_data(tag="one"), version)
    assert one["count"] == 1
    assert one["etag"] != first_etag
    two = await env.put(f"/{q(ROOM)}", {"sessions": {"s2": key_data(tag="two")}}, version)
    three = await env.put(
        "", {"rooms": {OTHER_ROOM: {"sessions": {"s3": key_data(tag="three")}}}}, version
    )
    assert (two["count"], three["count"]) == (2, 3)
    assert len({one["etag"], two["etag"], three["etag"]}) == 3
    info = await env.info()
    assert (info["count"], info["etag"]) == (3, three["etag"])
    assert await env.get(session_path(), version) == key_data(tag="one")
    assert await env.get(f"/{q(ROOM)}", version) == {
        "sessions": {"s1": key_data(tag="one"), "s2": key_data(tag="two")}
    }
    assert await env.get("", version) == {
        "rooms": {
            ROOM: {"sessions": {"s1": key_data(tag="one"), "s2": key_data(tag="two")}},
            OTHER_ROOM: {"sessions": {"s3": key_data(tag="three")}},
        }
    }
    # Deleted: the version, its keys, and no current version left.
    assert await client.ok(env.alice, "DELETE", f"/room_keys/version/{version}") == {}
    await client.refused(
        env.alice, "GET", f"/room_keys/version/{version}", status=404, errcode="M_NOT_FOUND"
    )
    await client.refused(env.alice, "GET", "/room_keys/version", status=404, errcode="M_NOT_FOUND")
    await client.refused(
        env.alice,
        "GET",
        "/room_keys/keys",
        params={"version": version},
        status=404,
        errcode="M_NOT_FOUND",
    )
    # Deleting it again succeeds; a version never created does not.
    assert await client.ok(env.alice, "DELETE", f"/room_keys/version/{version}") == {}
    await client.refused(
        env.alice, "DELETE", "/room_keys/version/2", status=404, errcode="M_NOT_FOUND"
    )
    # The next version has a number of its own, and none of the old keys.
    assert await env.create() == "2"
    assert (await env.info())["count"] == 0


@pytest.mark.parametrize(
    ("held", "uploaded", "replaces"),
    [
        # 1. is_verified decides first, over lower indexes.
        (key_data(first=0), key_data(first=5, forwarded=5, verified=True), True),
        (key_data(first=5, forwarded=5, verified=True), key_data(first=0), False),
        # 2. then the lower first_message_index, over a lower forwarded_count.
        (key_data(first=3, forwarded=0), key_data(first=2, forwarded=4), True),
        (key_data(first=2, forwarded=4), key_data(first=3, forwarded=0), False),
        # 3. then the lower forwarded_count.
        (key_data(first=3, forwarded=2), key_data(first=3, forwarded=1), True),
        (key_data(first=3, forwarded=1), key_data(first=3, forwarded=2), False),
        # Equal in all three: the stored key stays.
        (key_data(first=3, forwarded=1), key_data(first=3, forwarded=1), False),
    ],
)
async def test_a_stored_key_is_replaced_by_the_specs_rule(
    env: Env, held: dict[str, Any], uploaded: dict[str, Any], replaces: bool
) -> None:
    version = await env.create()
    before = await env.put(session_path(), {**held, "session_data": {"held": True}}, version)
    after = await env.put(session_path(), {**uploaded, "session_data": {"new": True}}, version)
    stored = await env.get(session_path(), version)
    if replaces:
        assert stored == {**uploaded, "session_data": {"new": True}}
        assert after["etag"] != before["etag"]
    else:
        assert stored == {**held, "session_data": {"held": True}}
        assert after == before
    assert after["count"] == 1


async def test_racing_uploads_of_one_session_leave_the_best_key(env: Env) -> None:
    version = await env.create()
    candidates = [
        key_data(first=first, forwarded=forwarded, verified=verified, tag=f"{first}{forwarded}")
        for first in (0, 4)
        for forwarded in (0, 2)
        for verified in (False, True)
    ]
    etags: list[str] = []

    async def upload(data: dict[str, Any]) -> None:
        etags.append((await env.put(session_path(), data, version))["etag"])

    async with trio.open_nursery() as nursery:
        for data in reversed(candidates):
            nursery.start_soon(upload, data)
    assert len(etags) == len(candidates)
    best = key_data(first=0, forwarded=0, verified=True, tag="00")
    assert await env.get(session_path(), version) == best
    assert (await env.info())["count"] == 1


async def test_keys_are_stored_in_the_current_version_only(env: Env) -> None:
    client = env.client
    first = await env.create()
    await env.put(session_path(session="old"), key_data(), first)
    second = await env.create()
    assert (first, second) == ("1", "2")
    answer = await client.call(
        env.alice, "PUT", f"/room_keys/keys{session_path()}", key_data(), params={"version": first}
    )
    assert answer[0] == 403
    assert answer[1]["errcode"] == "M_WRONG_ROOM_KEYS_VERSION"
    assert answer[1]["current_version"] == "2"
    for unknown in ("3", "abc", "01", "-1", "99999999999999999999999"):
        await client.refused(
            env.alice,
            "PUT",
            "/room_keys/keys",
            {"rooms": {}},
            params={"version": unknown},
            status=404,
            errcode="M_NOT_FOUND",
        )
    # An older version is still read, and its keys may be deleted.
    assert await env.get("", first) == {"rooms": {ROOM: {"sessions": {"old": key_data()}}}}
    # With the newer one deleted, the older is current again.
    await client.ok(env.alice, "DELETE", f"/room_keys/version/{second}")
    assert (await env.info())["version"] == first
    assert (await env.put(session_path(), key_data(), first))["count"] == 2
    await client.refused(
        env.alice,
        "PUT",
        f"/room_keys/keys{session_path()}",
        key_data(),
        params={"version": second},
        status=404,
        errcode="M_NOT_FOUND",
    )


async def test_deleting_keys_moves_the_etag_and_count(env: Env) -> None:
    version = await env.create()
    body = {
        "rooms": {
            room: {"sessions": {f"s{i}": key_data() for i in range(3)}}
            for room in (ROOM, OTHER_ROOM)
        }
    }
    stored = await env.put("", body, version)
    assert stored["count"] == 6
    one = await env.delete(session_path(), version)
    assert one["count"] == 5
    assert one["etag"] != stored["etag"]
    # Nothing left to delete there: nothing changes.
    assert await env.delete(session_path(), version) == one
    room = await env.delete(f"/{q(ROOM)}", version)
    assert room["count"] == 3
    assert room["etag"] != one["etag"]
    everything = await env.delete("", version)
    assert everything["count"] == 0
    assert everything["etag"] != room["etag"]
    info = await env.info()
    assert (info["count"], info["etag"]) == (0, everything["etag"])
    assert await env.get("", version) == {"rooms": {}}
    await env.client.refused(
        env.alice,
        "DELETE",
        "/room_keys/keys",
        params={"version": "9"},
        status=404,
        errcode="M_NOT_FOUND",
    )


async def test_another_users_backup_is_invisible(env: Env) -> None:
    client, bob = env.client, env.bob
    version = await env.create()
    await env.put(session_path(), key_data(tag="alice's"), version)
    await client.refused(bob, "GET", "/room_keys/version", status=404, errcode="M_NOT_FOUND")
    for method in ("GET", "DELETE"):
        await client.refused(
            bob, method, f"/room_keys/version/{version}", status=404, errcode="M_NOT_FOUND"
        )
    await client.refused(
        bob,
        "PUT",
        f"/room_keys/version/{version}",
        {"algorithm": ALG, "auth_data": {}},
        status=404,
        errcode="M_NOT_FOUND",
    )
    for method, body in (("GET", None), ("PUT", key_data()), ("DELETE", None)):
        await client.refused(
            bob,
            method,
            f"/room_keys/keys{session_path()}",
            body,
            params={"version": version},
            status=404,
            errcode="M_NOT_FOUND",
        )
    # Bob's own backup is numbered for him, and holds none of Alice's keys.
    bobs = await env.create(bob)
    assert bobs == version
    assert await env.get("", bobs, bob) == {"rooms": {}}
    await env.put(session_path(), key_data(tag="bob's"), bobs, bob)
    assert await env.get(session_path(), version) == key_data(tag="alice's")
    assert (await env.info())["count"] == 1


async def test_updating_a_version_changes_its_auth_data_alone(env: Env) -> None:
    client = env.client
    version = await env.create()
    stored = await env.put(session_path(), key_data(), version)
    path = f"/room_keys/version/{version}"
    new_auth = {"public_key": "hijklmn"}
    for body, errcode in (
        ({"algorithm": "m.other", "auth_data": new_auth}, "M_INVALID_PARAM"),
        ({"algorithm": ALG, "auth_data": new_auth, "version": "2"}, "M_INVALID_PARAM"),
        ({"algorithm": ALG, "auth_data": new_auth, "version": 1}, "M_INVALID_PARAM"),
        ({"algorithm": ALG, "auth_data": "text"}, "M_BAD_JSON"),
        ({"auth_data": new_auth}, "M_MISSING_PARAM"),
    ):
        await client.refused(env.alice, "PUT", path, body, status=400, errcode=errcode)
    assert (await env.info())["auth_data"] == AUTH_DATA
    body = {"algorithm": ALG, "auth_data": new_auth, "version": version}
    assert await client.ok(env.alice, "PUT", path, body) == {}
    info = await env.info()
    assert (info["auth_data"], info["etag"], info["count"]) == (new_auth, stored["etag"], 1)
    await client.refused(
        env.alice,
        "PUT",
        "/room_keys/version/5",
        {**body, "version": "5"},
        status=404,
        errcode="M_NOT_FOUND",
    )


@pytest.mark.parametrize(
    ("bad", "errcode"),
    [
        ({**key_data(), "is_verified": "yes"}, "M_BAD_JSON"),
        ({**key_data(), "first_message_index": -1}, "M_BAD_JSON"),
        ({**key_data(), "forwarded_count": 1.5}, "M_BAD_JSON"),
        ({**key_data(), "first_message_index": 2**53}, "M_BAD_JSON"),
        ({**key_data(), "session_data": "ciphertext"}, "M_BAD_JSON"),
        ({k: v for k, v in key_data().items() if k != "session_data"}, "M_MISSING_PARAM"),
        ({k: v for k, v in key_data().items() if k != "is_verified"}, "M_MISSING_PARAM"),
        ({k: v for k, v in key_data().items() if k != "forwarded_count"}, "M_MISSING_PARAM"),
        (["not", "an", "object"], "M_BAD_JSON"),
    ],
)
async def test_a_bad_key_refuses_the_whole_upload(env: Env, bad: Any, errcode: str) -> None:
    version = await env.create()
    before = await env.info()
    body = {"rooms": {ROOM: {"sessions": {"good": key_data(), "bad": bad}}}}
    await env.client.refused(
        env.alice,
        "PUT",
        "/room_keys/keys",
        body,
        params={"version": version},
        status=400,
        errcode=errcode,
    )
    assert await env.info() == before
    assert await env.get("", version) == {"rooms": {}}


@pytest.mark.parametrize(
    ("path", "body", "errcode"),
    [
        ("", {}, "M_MISSING_PARAM"),
        ("", {"rooms": []}, "M_BAD_JSON"),
        ("", {"rooms": {ROOM: {}}}, "M_MISSING_PARAM"),
        ("", {"rooms": {ROOM: "sessions"}}, "M_BAD_JSON"),
        (f"/{q(ROOM)}", {"sessions": []}, "M_BAD_JSON"),
        (f"/{q(ROOM)}", {"rooms": {}}, "M_MISSING_PARAM"),
    ],
)
async def test_badly_shaped_uploads_are_refused(
    env: Env, path: str, body: Any, errcode: str
) -> None:
    version = await env.create()
    await env.client.refused(
        env.alice,
        "PUT",
        f"/room_keys/keys{path}",
        body,
        params={"version": version},
        status=400,
        errcode=errcode,
    )
    assert (await env.info())["count"] == 0


async def test_bad_version_bodies_and_parameters_are_refused(env: Env) -> None:
    client = env.client
    for body, errcode in (
        ({"auth_data": AUTH_DATA}, "M_MISSING_PARAM"),
        ({"algorithm": ALG}, "M_MISSING_PARAM"),
        ({"algorithm": 5, "auth_data": AUTH_DATA}, "M_BAD_JSON"),
        ({"algorithm": ALG, "auth_data": "secret"}, "M_BAD_JSON"),
    ):
        await client.refused(
            env.alice, "POST", "/room_keys/version", body, status=400, errcode=errcode
        )
    await client.refused(
        env.alice,
        "POST",
        "/room_keys/version",
        raw=b"[1]",
        status=400,
        errcode="M_NOT_JSON",
    )
    # None of them made a version.
    await client.refused(env.alice, "GET", "/room_keys/version", status=404, errcode="M_NOT_FOUND")
    version = await env.create()
    for method in ("GET", "PUT", "DELETE"):
        await client.refused(
            env.alice,
            method,
            "/room_keys/keys",
            {"rooms": {}} if method == "PUT" else None,
            status=400,
            errcode="M_MISSING_PARAM",
        )
    assert version == "1"


_ENDPOINTS = [
    ("POST", "/room_keys/version"),
    ("GET", "/room_keys/version"),
    *((method, "/room_keys/version/1") for method in ("GET", "PUT", "DELETE")),
    *(
        (method, f"/room_keys/keys{path}?version=1")
        for path in ("", f"/{q(ROOM)}", session_path())
        for method in ("GET", "PUT", "DELETE")
    ),
]


@pytest.mark.parametrize(("method", "path"), _ENDPOINTS)
async def test_every_endpoint_takes_an_access_token(env: Env, method: str, path: str) -> None:
    await env.client.refused(None, method, path, {}, status=401, errcode="M_MISSING_TOKEN")
    await env.client.refused(
        None, method, path, {}, token="not a token", status=401, errcode="M_UNKNOWN_TOKEN"
    )


async def test_the_r0_paths_serve_the_same_backup(env: Env) -> None:
    version = await env.create()
    response = await env.client.http.get(
        "/_matrix/client/r0/room_keys/version",
        headers={"Authorization": f"Bearer {env.alice.access_token}"},
    )
    assert response.status_code == 200
    assert response.json()["version"] == version
