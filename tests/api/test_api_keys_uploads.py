"""Uploading, querying and claiming keys as an encrypting client does, and
the device-list entries a new login makes, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room
from _e2e import OTK, device_keys, one_time_keys

from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _upload(env: SharedRoom, user: TestUser, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await env.client.ok(user, "POST", "/keys/upload", body)
    return answer


async def _claim(env: SharedRoom, user: TestUser) -> dict[str, Any]:
    answer: dict[str, Any] = await env.client.ok(
        env.alice, "POST", "/keys/claim", {"one_time_keys": {user.user_id: {user.device_id: OTK}}}
    )
    claimed: dict[str, Any] = answer["one_time_keys"].get(user.user_id, {}).get(user.device_id, {})
    return claimed


async def test_device_keys_without_keys_or_algorithms_are_refused(env: SharedRoom) -> None:
    keys = device_keys(env.bob)
    bare = {"user_id": env.bob.user_id, "device_id": env.bob.device_id}
    await env.client.refused(
        env.bob,
        "POST",
        "/keys/upload",
        {"device_keys": bare, "one_time_keys": one_time_keys(keys, env.bob, "a")},
        status=400,
        errcode="M_BAD_JSON",
    )
    # Nor is a bare claim to be another user's device taken.
    bare = {"user_id": env.alice.user_id, "device_id": env.alice.device_id}
    status, _ = await env.client.call(env.bob, "POST", "/keys/upload", {"device_keys": bare})
    assert status == 400
    answer = await env.client.ok(
        env.alice, "POST", "/keys/query", {"device_keys": {env.bob.user_id: []}}
    )
    assert answer["device_keys"][env.bob.user_id] == {}
    assert await _claim(env, env.bob) == {}


async def test_one_devices_keys_are_queried_by_name(env: SharedRoom) -> None:
    keys = device_keys(env.bob)
    await _upload(env, env.bob, {"device_keys": keys.body})
    answer = await env.client.ok(
        env.alice,
        "POST",
        "/keys/query",
        {"device_keys": {env.bob.user_id: [env.bob.device_id], env.carol.user_id: []}},
    )
    assert answer["device_keys"][env.bob.user_id] == {env.bob.device_id: keys.body}
    assert answer["device_keys"][env.carol.user_id] == {}
    # A device that is not there is left out.
    answer = await env.client.ok(
        env.alice, "POST", "/keys/query", {"device_keys": {env.bob.user_id: ["NOSUCHDEVICE"]}}
    )
    assert answer["device_keys"][env.bob.user_id] == {}


async def test_devices_named_as_an_object_are_refused(env: SharedRoom) -> None:
    await env.client.refused(
        env.alice,
        "POST",
        "/keys/query",
        {"device_keys": {env.bob.user_id: {"DEVICE1": True, "DEVICE2": True}}},
        status=400,
        errcode="M_BAD_JSON",
    )


async def test_a_claimed_key_is_given_once_and_the_oldest_first(env: SharedRoom) -> None:
    keys = device_keys(env.bob)
    # Uploaded in the opposite order of their names.
    second = one_time_keys(keys, env.bob, "1")
    first = one_time_keys(keys, env.bob, "0")
    await _upload(env, env.bob, {"device_keys": keys.body, "one_time_keys": second})
    await _upload(env, env.bob, {"one_time_keys": first})
    assert await _claim(env, env.bob) == second
    assert await _claim(env, env.bob) == first
    assert await _claim(env, env.bob) == {}


async def test_uploading_the_same_keys_again_changes_nothing(env: SharedRoom) -> None:
    keys = device_keys(env.bob)
    otks = one_time_keys(keys, env.bob, "a", "b", "c", "d")
    for body in (
        {"device_keys": keys.body, "one_time_keys": otks},
        {"one_time_keys": otks},
        {"device_keys": keys.body, "one_time_keys": otks},
    ):
        assert await _upload(env, env.bob, body) == {"one_time_key_counts": {OTK: 4}}


async def test_overlapping_uploads_count_each_key_once(env: SharedRoom) -> None:
    keys = device_keys(env.bob)
    otks = one_time_keys(keys, env.bob, "a", "b", "c", "d")
    abc = {name: otks[name] for name in list(otks)[:3]}
    bcd = {name: otks[name] for name in list(otks)[1:]}
    assert await _upload(env, env.bob, {"device_keys": keys.body}) == {
        "one_time_key_counts": {OTK: 0}
    }
    assert await _upload(env, env.bob, {"one_time_keys": abc}) == {"one_time_key_counts": {OTK: 3}}
    assert await _upload(env, env.bob, {"one_time_keys": bcd}) == {"one_time_key_counts": {OTK: 4}}
    # The same key ID with other content is refused.
    changed = {f"{OTK}:a": {**otks[f"{OTK}:a"], "key": "different"}}
    status, answer = await env.client.call(
        env.bob, "POST", "/keys/upload", {"one_time_keys": changed}
    )
    assert status == 400, answer
    assert answer["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON")


async def test_a_new_login_is_a_device_list_change(env: SharedRoom) -> None:
    password = "correct horse"
    dave = await env.hs.register_user("dave", password=password)
    first = device_keys(dave)
    await _upload(
        env, dave, {"device_keys": first.body, "one_time_keys": one_time_keys(first, dave, "a")}
    )
    await env.client.ok(dave, "POST", f"/rooms/{env.room_id}/join", {})
    since = (await env.sync(env.alice))["next_batch"]

    login = await env.client.ok(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": dave.user_id},
            "password": password,
        },
    )
    second_device = TestUser(dave.user_id, login["access_token"], login["device_id"])
    second = device_keys(second_device)
    await _upload(env, second_device, {"device_keys": second.body})

    answer = await env.sync(env.alice, since=since)
    assert dave.user_id in answer["device_lists"]["changed"]
    changes = await env.client.ok(
        env.alice, "GET", "/keys/changes", params={"from": since, "to": answer["next_batch"]}
    )
    assert changes["changed"] == [dave.user_id]
    found = await env.client.ok(
        env.alice, "POST", "/keys/query", {"device_keys": {dave.user_id: []}}
    )
    assert found["device_keys"][dave.user_id] == {
        dave.device_id: first.body,
        second_device.device_id: second.body,
    }


async def test_a_login_alone_is_a_device_list_change_for_the_user_too(env: SharedRoom) -> None:
    """No keys uploaded yet: those sharing a room with the user, and the
    user's own devices, hear of the new device all the same."""
    password = "correct horse"
    dave = await env.hs.register_user("dave", password=password)
    await env.client.ok(dave, "POST", f"/rooms/{env.room_id}/join", {})
    since = {user.user_id: (await env.sync(user))["next_batch"] for user in (env.alice, dave)}
    identifier = {"type": "m.id.user", "user": dave.user_id}
    login = {"type": "m.login.password", "identifier": identifier, "password": password}
    await env.client.ok(None, "POST", "/login", login)
    for user in (env.alice, dave):
        answer = await env.sync(user, since=since[user.user_id])
        assert answer["device_lists"]["changed"] == [dave.user_id]
        changes = await env.client.ok(
            user,
            "GET",
            "/keys/changes",
            params={"from": since[user.user_id], "to": answer["next_batch"]},
        )
        assert changes["changed"] == [dave.user_id]
    # Logging the same device in again adds no device: no change.
    again = (await env.sync(env.alice))["next_batch"]
    login_again = await env.client.ok(None, "POST", "/login", login)
    await env.client.ok(None, "POST", "/login", {**login, "device_id": login_again["device_id"]})
    answer = await env.sync(env.alice, since=again)
    assert answer["device_lists"]["changed"] == [dave.user_id]
    quiet = answer["next_batch"]
    await env.client.ok(None, "POST", "/login", {**login, "device_id": login_again["device_id"]})
    assert (await env.sync(env.alice, since=quiet))["device_lists"]["changed"] == []
