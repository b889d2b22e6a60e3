"""End-to-end encryption keys over real HTTP: uploads, queries, claims,
cross-signing, signatures and the device lists of ``/sync``."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from _client import Client, SharedRoom, open_shared_room, q
from _e2e import OTK, cross_signing, device_keys, one_time_keys, sign_as

from ranvier.protocol.signing import sign_json
from ranvier.testing.homeserver import TestUser


@dataclass
class Env(SharedRoom):
    async def upload(self, user: TestUser, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = await self.client.ok(user, "POST", "/keys/upload", body)
        return answer

    async def query(self, user: TestUser, *users: TestUser) -> dict[str, Any]:
        body: dict[str, Any] = {"device_keys": {other.user_id: [] for other in users}}
        answer: dict[str, Any] = await self.client.ok(user, "POST", "/keys/query", body)
        return answer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as shared:
        yield shared


async def test_keys_uploaded_by_bob_are_found_by_alice(env: Env) -> None:
    keys = device_keys(env.bob)
    answer = await env.upload(
        env.bob,
        {
            "device_keys": keys.body,
            "one_time_keys": one_time_keys(keys, env.bob, "a", "b"),
            "fallback_keys": one_time_keys(keys, env.bob, "f"),
        },
    )
    assert answer == {"one_time_key_counts": {OTK: 2}}
    found = await env.query(env.alice, env.bob, env.carol)
    assert found["device_keys"][env.bob.user_id] == {env.bob.device_id: keys.body}
    # A named device's name comes along, outside what the device signed.
    await env.client.ok(env.bob, "PUT", f"/devices/{env.bob.device_id}", {"display_name": "tab"})
    found = await env.query(env.alice, env.bob, env.carol)
    shown = found["device_keys"][env.bob.user_id][env.bob.device_id]
    assert shown.pop("unsigned") == {"device_display_name": "tab"}
    assert shown == keys.body
    assert found["device_keys"][env.carol.user_id] == {}
    assert found["failures"] == {}
    # Only the requester's own device's counts, in /sync too.
    body = await env.sync(env.bob)
    assert body["device_one_time_keys_count"] == {OTK: 2}
    assert body["device_unused_fallback_key_types"] == [OTK]
    assert (await env.sync(env.alice))["device_one_time_keys_count"] == {OTK: 0}


@pytest.mark.parametrize(
    ("change", "status", "errcode"),
    [
        ("other user", 400, "M_INVALID_PARAM"),
        ("other device", 400, "M_INVALID_PARAM"),
        ("forged", 400, "M_INVALID_SIGNATURE"),
        ("unsigned", 400, "M_INVALID_SIGNATURE"),
        ("no own key", 400, "M_INVALID_PARAM"),
        ("not an object", 400, "M_BAD_JSON"),
        ("bad key name", 400, "M_INVALID_PARAM"),
    ],
)
async def test_refused_uploads_write_nothing(
    env: Env, change: str, status: int, errcode: str
) -> None:
    keys = device_keys(env.bob)
    body: dict[str, Any] = {
        "device_keys": keys.body,
        "one_time_keys": one_time_keys(keys, env.bob, "a"),
    }
    device = body["device_keys"]
    if change == "other user":
        body["device_keys"] = sign_json(
            {**_unsigned(device), "user_id": env.alice.user_id}, env.alice.user_id, keys.signing_key
        )
    elif change == "other device":
        body["device_keys"] = sign_json(
            {**_unsigned(device), "device_id": "ELSEWHERE"}, env.bob.user_id, keys.signing_key
        )
    elif change == "forged":
        body["device_keys"] = {**device, "algorithms": ["m.other"]}
    elif change == "unsigned":
        body["device_keys"] = _unsigned(device)
    elif change == "no own key":
        stripped = _unsigned(device)
        stripped["keys"] = {f"curve25519:{env.bob.device_id}": "x"}
        body["device_keys"] = sign_json(stripped, env.bob.user_id, keys.signing_key)
    elif change == "not an object":
        body["device_keys"] = ["keys"]
    elif change == "bad key name":
        body["one_time_keys"] = {"no-colon": {"key": "x"}}
    await env.client.refused(env.bob, "POST", "/keys/upload", body, status=status, errcode=errcode)
    assert (await env.query(env.alice, env.bob))["device_keys"][env.bob.user_id] == {}
    assert (await env.sync(env.bob))["device_one_time_keys_count"] == {OTK: 0}


def _unsigned(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key != "signatures"}


async def test_one_time_keys_are_claimed_exactly_once_under_concurrency(env: Env) -> None:
    keys = device_keys(env.bob)
    names = [f"k{n}" for n in range(5)]
    await env.upload(
        env.bob,
        {
            "device_keys": keys.body,
            "one_time_keys": one_time_keys(keys, env.bob, *names),
            "fallback_keys": one_time_keys(keys, env.bob, "fallback"),
        },
    )
    claimed: list[str] = []

    async def claim(user: TestUser) -> None:
        answer = await env.client.ok(
            user,
            "POST",
            "/keys/claim",
            {"one_time_keys": {env.bob.user_id: {env.bob.device_id: OTK}}},
        )
        assert answer["failures"] == {}
        (name,) = answer["one_time_keys"][env.bob.user_id][env.bob.device_id]
        claimed.append(name.partition(":")[2])

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(claim, env.alice if n % 2 else env.carol)
    assert sorted(claimed) == [*["fallback"] * 3, *names]
    counts = await env.upload(env.bob, {})
    # Out of one-time keys, the count says 0 rather than nothing.
    assert counts == {"one_time_key_counts": {OTK: 0}}
    assert (await env.sync(env.bob))["device_unused_fallback_key_types"] == []
    # A device with none: nothing for it, and no failure.
    answer = await env.client.ok(
        env.alice,
        "POST",
        "/keys/claim",
        {"one_time_keys": {env.carol.user_id: {env.carol.device_id: OTK}}},
    )
    assert answer == {"one_time_keys": {}, "failures": {}}


async def test_another_servers_users_are_failures_when_it_cannot_be_reached(env: Env) -> None:
    answer = await env.client.ok(
        env.alice,
        "POST",
        "/keys/query",
        {"device_keys": {"@someone:unreachable.invalid": []}},
    )
    assert set(answer["failures"]) == {"unreachable.invalid"}
    assert "@someone:unreachable.invalid" not in answer["device_keys"]
    claimed = await env.client.ok(
        env.alice,
        "POST",
        "/keys/claim",
        {"one_time_keys": {"@someone:unreachable.invalid": {"DEV": OTK}}},
    )
    assert claimed["one_time_keys"] == {}
    assert set(claimed["failures"]) == {"unreachable.invalid"}


async def test_a_key_change_wakes_and_is_listed_for_those_sharing_a_room(env: Env) -> None:
    since = (await env.sync(env.alice))["next_batch"]
    carol_since = (await env.sync(env.carol))["next_batch"]
    keys = device_keys(env.bob)

    async def carol_uploads() -> None:
        await env.upload(env.carol, {"device_keys": device_keys(env.carol).body})

    answer = await env.woken_sync(
        env.alice,
        since,
        quiet=carol_uploads,
        wake=lambda: env.upload(env.bob, {"device_keys": keys.body}),
    )
    assert answer["device_lists"] == {"changed": [env.bob.user_id], "left": []}
    # Carol shares no room with Bob: her sync lists only herself.
    carol = await env.sync(env.carol, since=carol_since)
    assert carol["device_lists"]["changed"] == [env.carol.user_id]
    # The same through /keys/changes.
    changes = await env.client.ok(
        env.alice,
        "GET",
        "/keys/changes",
        params={"from": since, "to": answer["next_batch"]},
    )
    assert changes == {"changed": [env.bob.user_id], "left": []}
    await env.client.refused(
        env.alice,
        "GET",
        "/keys/changes",
        params={"from": since},
        status=400,
        errcode="M_MISSING_PARAM",
    )
    await env.client.refused(
        env.alice,
        "GET",
        "/keys/changes",
        params={"from": "nonsense", "to": since},
        status=400,
        errcode="M_INVALID_PARAM",
    )


async def test_joining_and_leaving_a_shared_room_are_listed(env: Env) -> None:
    since = (await env.sync(env.alice))["next_batch"]
    await env.client.ok(env.carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    joined = await env.sync(env.alice, since=since)
    assert env.carol.user_id in joined["device_lists"]["changed"]
    before_leaving = (await env.sync(env.bob))["next_batch"]
    await env.client.ok(env.bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    left = await env.sync(env.alice, since=joined["next_batch"])
    assert left["device_lists"] == {"changed": [], "left": [env.bob.user_id]}
    # Bob's own sync lists those he no longer shares a room with.
    bob_left = await env.sync(env.bob, since=before_leaving)
    assert bob_left["device_lists"]["left"] == sorted([env.alice.user_id, env.carol.user_id])
    # Bob, having left, no longer shares a room with Alice or Carol.
    bob_since = (await env.sync(env.bob))["next_batch"]
    await env.upload(env.alice, {"device_keys": device_keys(env.alice).body})
    assert (await env.sync(env.bob, since=bob_since))["device_lists"]["changed"] == []


async def _upload_cross_signing(
    client: Client, user: TestUser, body: dict[str, Any], *, status: int = 200
) -> dict[str, Any]:
    got, answer = await client.call(user, "POST", "/keys/device_signing/upload", body)
    assert got == status, answer
    result: dict[str, Any] = answer
    return result


async def test_cross_signing_keys_are_stored_and_shown_to_the_right_users(
    tmp_path: Path,
) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        # The first keys need no password.
        mine = cross_signing(env.bob)
        await _upload_cross_signing(env.client, env.bob, mine.body)
        to_alice = await env.query(env.alice, env.bob)
        assert to_alice["master_keys"] == {env.bob.user_id: mine.body["master_key"]}
        assert to_alice["self_signing_keys"] == {env.bob.user_id: mine.body["self_signing_key"]}
        assert to_alice["user_signing_keys"] == {}
        to_bob = await env.query(env.bob, env.bob)
        assert to_bob["user_signing_keys"] == {env.bob.user_id: mine.body["user_signing_key"]}
        # The same keys again: no password either, nothing changes.
        await _upload_cross_signing(env.client, env.bob, mine.body)
        # New keys replace the old ones only with the password, which Bob
        # (registered without one) cannot give: refused, nothing written.
        other = cross_signing(env.bob)
        answer = await _upload_cross_signing(env.client, env.bob, other.body, status=401)
        assert answer["flows"] == [{"stages": ["m.login.password"]}]
        assert (await env.query(env.alice, env.bob))["master_keys"] == to_alice["master_keys"]


async def test_replacing_cross_signing_keys_takes_the_password(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        dave = await env.hs.register_user("dave", "daves password")
        await _upload_cross_signing(env.client, dave, cross_signing(dave).body)
        other = cross_signing(dave)
        session = (await _upload_cross_signing(env.client, dave, other.body, status=401))["session"]
        wrong = {"type": "m.login.password", "password": "nope", "session": session}
        refused = await _upload_cross_signing(
            env.client, dave, {**other.body, "auth": wrong}, status=401
        )
        assert refused["errcode"] == "M_FORBIDDEN"
        right = {**wrong, "password": "daves password"}
        await _upload_cross_signing(env.client, dave, {**other.body, "auth": right})
        shown = await env.query(env.alice, dave)
        assert shown["master_keys"] == {dave.user_id: other.body["master_key"]}


async def test_a_key_added_beside_a_lone_master_key_takes_the_password(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        dave = await env.hs.register_user("dave", "daves password")
        keys = cross_signing(dave)
        master_only = {"master_key": keys.body["master_key"]}
        # A master key alone is a first upload, and so is its retry.
        assert await _upload_cross_signing(env.client, dave, master_only) == {}
        assert await _upload_cross_signing(env.client, dave, master_only) == {}
        other = {"master_key": cross_signing(dave).body["master_key"]}
        refused = await _upload_cross_signing(env.client, dave, other, status=401)
        assert refused["flows"] == [{"stages": ["m.login.password"]}]
        # A self-signing key the server does not hold yet is a new key too,
        # even with the master key left out of the request.
        adding = {"self_signing_key": keys.body["self_signing_key"]}
        asked = await _upload_cross_signing(env.client, dave, adding, status=401)
        assert asked["flows"] == [{"stages": ["m.login.password"]}]
        shown = await env.query(dave, dave)
        assert shown["master_keys"] == {dave.user_id: keys.body["master_key"]}
        assert shown["self_signing_keys"] == {}
        password = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": dave.user_id},
            "password": "daves password",
            "session": asked["session"],
        }
        with_auth = {**adding, "auth": password}
        assert await _upload_cross_signing(env.client, dave, with_auth) == {}
        # The same request again, its spent session and all: nothing new,
        # so nothing to authenticate.
        assert await _upload_cross_signing(env.client, dave, with_auth) == {}
        shown = await env.query(env.alice, dave)
        assert shown["master_keys"] == {dave.user_id: keys.body["master_key"]}
        assert shown["self_signing_keys"] == {dave.user_id: keys.body["self_signing_key"]}


@pytest.mark.parametrize("change", ["unsigned self-signing", "other user", "no master", "usage"])
async def test_refused_cross_signing_uploads_write_nothing(env: Env, change: str) -> None:
    keys = cross_signing(env.bob)
    body = dict(keys.body)
    errcode = "M_INVALID_PARAM"
    if change == "unsigned self-signing":
        body["self_signing_key"] = _unsigned(body["self_signing_key"])
        errcode = "M_INVALID_SIGNATURE"
    elif change == "other user":
        body["master_key"] = {**body["master_key"], "user_id": env.alice.user_id}
    elif change == "no master":
        del body["master_key"]
    elif change == "usage":
        body["master_key"] = {**body["master_key"], "usage": ["self_signing"]}
    await env.client.refused(
        env.bob, "POST", "/keys/device_signing/upload", body, status=400, errcode=errcode
    )
    shown = await env.query(env.bob, env.bob)
    assert (shown["master_keys"], shown["self_signing_keys"]) == ({}, {})


async def test_signatures_are_verified_then_added_to_the_keys(env: Env) -> None:
    device = device_keys(env.bob)
    await env.upload(env.bob, {"device_keys": device.body})
    cross = cross_signing(env.bob)
    await _upload_cross_signing(env.client, env.bob, cross.body)
    since = (await env.sync(env.alice))["next_batch"]
    # Bob's self-signing key signs his device; his device signs his master key.
    signed_device = sign_as(device.body, env.bob, cross.self_signing, named=True)
    signed_master = sign_as(cross.body["master_key"], env.bob, device.signing_key, named=False)
    forged = sign_as(device.body, env.bob, cross_signing(env.bob).self_signing, named=True)
    master_id = next(iter(cross.body["master_key"]["keys"])).partition(":")[2]
    answer = await env.client.ok(
        env.bob,
        "POST",
        "/keys/signatures/upload",
        {env.bob.user_id: {env.bob.device_id: signed_device, master_id: signed_master}},
    )
    assert answer == {"failures": {}}
    shown = await env.query(env.alice, env.bob)
    device_signatures = shown["device_keys"][env.bob.user_id][env.bob.device_id]["signatures"]
    assert device_signatures == signed_device["signatures"]
    assert shown["master_keys"][env.bob.user_id]["signatures"] == signed_master["signatures"]
    assert env.bob.user_id in (await env.sync(env.alice, since=since))["device_lists"]["changed"]
    # A signature by a key that is not Bob's, on a key not stored, or by
    # someone else on Bob's device: failures, and nothing added.
    answer = await env.client.ok(
        env.bob,
        "POST",
        "/keys/signatures/upload",
        {
            env.bob.user_id: {
                env.bob.device_id: forged,
                "NOSUCHDEVICE": {**device.body, "device_id": "NOSUCHDEVICE"},
            }
        },
    )
    assert set(answer["failures"][env.bob.user_id]) == {env.bob.device_id, "NOSUCHDEVICE"}
    again = await env.query(env.alice, env.bob)
    assert again["device_keys"] == shown["device_keys"]


@pytest.mark.parametrize(
    ("path", "body", "errcode"),
    [
        ("/keys/query", {"device_keys": ["@bob:localhost"]}, "M_BAD_JSON"),
        ("/keys/query", {"device_keys": {"@bob:localhost": "DEV"}}, "M_BAD_JSON"),
        ("/keys/claim", {"one_time_keys": []}, "M_BAD_JSON"),
        ("/keys/claim", {"one_time_keys": {"@bob:localhost": {"DEV": 1}}}, "M_BAD_JSON"),
        ("/keys/upload", {"fallback_keys": {f"{OTK}:f": 5}}, "M_BAD_JSON"),
        ("/keys/signatures/upload", [], "M_NOT_JSON"),
    ],
)
async def test_malformed_key_requests_are_refused(
    env: Env, path: str, body: Any, errcode: str
) -> None:
    keys = device_keys(env.bob)
    await env.upload(
        env.bob, {"device_keys": keys.body, "one_time_keys": one_time_keys(keys, env.bob, "a")}
    )
    await env.client.refused(env.bob, "POST", path, body, status=400, errcode=errcode)
    # The key is still there to claim, and nothing else was stored.
    claimed = await env.client.ok(
        env.alice,
        "POST",
        "/keys/claim",
        {"one_time_keys": {env.bob.user_id: {env.bob.device_id: OTK}}},
    )
    assert list(claimed["one_time_keys"][env.bob.user_id][env.bob.device_id]) == [f"{OTK}:a"]
    assert (await env.sync(env.bob))["device_unused_fallback_key_types"] == []


async def test_key_endpoints_need_an_access_token(env: Env) -> None:
    for method, path in (
        ("POST", "/keys/upload"),
        ("POST", "/keys/query"),
        ("POST", "/keys/claim"),
        ("GET", "/keys/changes"),
        ("POST", "/keys/device_signing/upload"),
        ("POST", "/keys/signatures/upload"),
    ):
        await env.client.refused(
            None,
            method,
            path,
            {} if method == "POST" else None,
            status=401,
            errcode="M_MISSING_TOKEN",
        )


async def test_a_deleted_devices_keys_and_messages_are_forgotten(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        dave = await env.hs.register_user("dave", "daves password")
        await env.client.ok(dave, "POST", f"/rooms/{q(env.room_id)}/join", {})
        keys = device_keys(dave)
        await env.upload(
            dave, {"device_keys": keys.body, "one_time_keys": one_time_keys(keys, dave, "a")}
        )
        message = {"messages": {dave.user_id: {dave.device_id: {"n": 1}}}}
        await env.client.ok(env.alice, "PUT", "/sendToDevice/m.test/t1", message)
        since = (await env.sync(env.alice))["next_batch"]
        path = f"/devices/{dave.device_id}"
        status, challenge = await env.client.call(dave, "DELETE", path, {})
        assert status == 401
        password = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "dave"},
            "password": "daves password",
            "session": challenge["session"],
        }
        await env.client.ok(dave, "DELETE", path, {"auth": password})
        # Those sharing a room with Dave hear his device list changed.
        assert dave.user_id in (await env.sync(env.alice, since=since))["device_lists"]["changed"]
        assert (await env.query(env.alice, dave))["device_keys"][dave.user_id] == {}
        stored = env.hs.server.storage.e2e_keys
        assert await stored.key_counts(dave.user_id, dave.device_id) == ({}, [])
        upto = await stored.to_device_position()
        assert await stored.to_device_messages(dave.user_id, dave.device_id, 0, upto, 10) == []


async def _keys_and_a_message(env: Env, user: TestUser) -> None:
    """``user``'s device with keys, and a message waiting for it from Alice."""
    keys = device_keys(user)
    await env.upload(
        user, {"device_keys": keys.body, "one_time_keys": one_time_keys(keys, user, "a")}
    )
    message = {"messages": {user.user_id: {user.device_id: {"for": user.device_id}}}}
    await env.client.ok(env.alice, "PUT", f"/sendToDevice/m.test/{user.device_id}", message)


async def _forgotten(env: Env, user: TestUser) -> bool:
    """Whether nothing of ``user``'s device is stored: reads of keys join on
    devices, so this looks at the tables themselves."""

    def rows(conn: sqlite3.Connection) -> int:
        return sum(
            conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE user_id = ? AND device_id = ?",
                (user.user_id, user.device_id),
            ).fetchone()[0]
            for table in ("e2e_device_keys", "e2e_one_time_keys", "to_device_inbox")
        )

    return await env.hs.server.storage.readers.read(rows) == 0


async def test_a_logged_out_devices_keys_and_messages_are_forgotten(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        dave = await env.hs.register_user("dave", "daves password")
        await env.client.ok(dave, "POST", f"/rooms/{q(env.room_id)}/join", {})
        login = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "dave"},
            "password": "daves password",
        }
        devices: list[TestUser] = [dave]
        for _ in range(2):
            logged_in = await env.client.ok(None, "POST", "/login", login)
            devices.append(
                TestUser(dave.user_id, logged_in["access_token"], logged_in["device_id"])
            )
        for device in devices:
            await _keys_and_a_message(env, device)
        since = (await env.sync(env.alice))["next_batch"]
        # One device logs out: it alone is forgotten, and Alice hears of it.
        await env.client.ok(devices[0], "POST", "/logout", {})
        assert await _forgotten(env, devices[0])
        assert not await _forgotten(env, devices[1])
        synced = await env.sync(env.alice, since=since)
        assert dave.user_id in synced["device_lists"]["changed"]
        found = (await env.query(env.alice, dave))["device_keys"][dave.user_id]
        assert sorted(found) == sorted(device.device_id for device in devices[1:])
        # Every other device logs out at once: all forgotten.
        await env.client.ok(devices[1], "POST", "/logout/all", {})
        assert await _forgotten(env, devices[1])
        assert await _forgotten(env, devices[2])
        synced = await env.sync(env.alice, since=synced["next_batch"])
        assert dave.user_id in synced["device_lists"]["changed"]
        assert (await env.query(env.alice, dave))["device_keys"][dave.user_id] == {}


async def test_a_replacement_retried_in_its_finished_session_changes_nothing(
    tmp_path: Path,
) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        dave = await env.hs.register_user("dave", "daves password")
        await _upload_cross_signing(env.client, dave, cross_signing(dave).body)

        async def replace(body: dict[str, Any]) -> dict[str, Any]:
            session = (await _upload_cross_signing(env.client, dave, body, status=401))["session"]
            auth = {"type": "m.login.password", "password": "daves password", "session": session}
            assert await _upload_cross_signing(env.client, dave, {**body, "auth": auth}) == {}
            return auth

        second, third = cross_signing(dave).body, cross_signing(dave).body
        second_auth = await replace(second)
        await replace(third)
        # The second upload's answer was lost and its retry comes late: it
        # answers as the first did, and does not undo the third.
        for auth in (second_auth, {"session": second_auth["session"]}):
            assert await _upload_cross_signing(env.client, dave, {**second, "auth": auth}) == {}
            shown = await env.query(env.alice, dave)
            assert shown["master_keys"] == {dave.user_id: third["master_key"]}
        # Other keys in the finished session are another request: refused.
        fourth = {**cross_signing(dave).body, "auth": second_auth}
        refused = await _upload_cross_signing(env.client, dave, fourth, status=403)
        assert refused["errcode"] == "M_FORBIDDEN"
        shown = await env.query(env.alice, dave)
        assert shown["master_keys"] == {dave.user_id: third["master_key"]}
