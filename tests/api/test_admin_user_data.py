"""An account's devices, pushers and account data through the admin API,
over real HTTP: what an admin reads is the account's real data, and what
an admin changes the user sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_ok, admin_refused
from _client import Client, WithAdmin, open_with_admin, q
from _e2e import device_keys

from ranvier.testing.homeserver import TestUser

PASSWORD = "carol's long password"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _login(c: Client, device_id: str) -> TestUser:
    return await c.log_in(
        "carol", PASSWORD, device_id=device_id, initial_device_display_name=f"{device_id} phone"
    )


async def _refusals(env: WithAdmin, method: str, tail: str, body: Any = None) -> None:
    """A non-admin gets 403, another server's user 400, no account 404."""
    http, admin, bob = env.client.http, env.admin, env.bob
    alice = env.alice.user_id
    await admin_refused(
        http, bob, method, tail.format(q(alice)), body, status=403, errcode="M_FORBIDDEN"
    )
    await admin_refused(
        http,
        admin,
        method,
        tail.format(q("@someone:elsewhere.example")),
        body,
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await admin_refused(
        http,
        admin,
        method,
        tail.format(q(f"@nobody:{env.hs.server_name}")),
        body,
        status=404,
        errcode="M_NOT_FOUND",
    )


async def test_devices_are_listed_shown_renamed_and_deleted(env: WithAdmin) -> None:
    c, http, admin, bob = env.client, env.client.http, env.admin, env.bob
    carol = await env.hs.register_user("carol", PASSWORD)
    phone = await _login(c, "PHONE")
    await c.ok(phone, "POST", "/keys/upload", {"device_keys": device_keys(phone).body})
    room_id = await c.create_room(carol, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    since = (await c.ok(bob, "GET", "/sync"))["next_batch"]
    devices = f"/v2/users/{q(carol.user_id)}/devices"

    listed = await admin_ok(http, admin, "GET", devices)
    assert listed["total"] == 2
    by_id = {device["device_id"]: device for device in listed["devices"]}
    assert set(by_id) == {carol.device_id, "PHONE"}
    shown = by_id["PHONE"]
    assert isinstance(shown["last_seen_ts"], int)
    assert shown == {
        "device_id": "PHONE",
        "display_name": "PHONE phone",
        "last_seen_ts": shown["last_seen_ts"],
        "last_seen_ip": None,
        "last_seen_user_agent": None,
        "user_id": carol.user_id,
        "dehydrated": False,
    }
    one = await admin_ok(http, admin, "GET", f"{devices}/PHONE")
    assert one == {key: value for key, value in shown.items() if key != "dehydrated"}

    # Renamed: the user sees the new name.
    assert await admin_ok(http, admin, "PUT", f"{devices}/PHONE", {"display_name": "old"}) == {}
    assert (await c.ok(carol, "GET", "/devices/PHONE"))["display_name"] == "old"
    assert await admin_ok(http, admin, "PUT", f"{devices}/PHONE", {}) == {}
    assert (await c.ok(carol, "GET", "/devices/PHONE"))["display_name"] == "old"

    # Deleted: its token stops working, its keys are gone, the list moved.
    query: dict[str, Any] = {"device_keys": {carol.user_id: []}}
    before = await c.ok(bob, "POST", "/keys/query", query)
    assert "PHONE" in before["device_keys"][carol.user_id]
    assert await admin_ok(http, admin, "DELETE", f"{devices}/PHONE") == {}
    await c.refused(phone, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")
    after = await c.ok(bob, "POST", "/keys/query", query)
    assert "PHONE" not in after["device_keys"].get(carol.user_id, {})
    synced = await c.ok(bob, "GET", "/sync", params={"since": since})
    assert carol.user_id in synced["device_lists"]["changed"]
    remaining = await admin_ok(http, admin, "GET", devices)
    assert [device["device_id"] for device in remaining["devices"]] == [carol.device_id]
    assert remaining["total"] == 1

    for method, body in (("GET", None), ("PUT", {"display_name": "x"}), ("DELETE", None)):
        await admin_refused(
            http, admin, method, f"{devices}/PHONE", body, status=404, errcode="M_NOT_FOUND"
        )
        await _refusals(env, method, "/v2/users/{}/devices/" + carol.device_id, body)
    await _refusals(env, "GET", "/v2/users/{}/devices")
    # Carol's own device is untouched by all of it.
    await c.ok(carol, "GET", "/account/whoami")


async def test_delete_devices_deletes_several_without_a_password(env: WithAdmin) -> None:
    c, http, admin = env.client, env.client.http, env.admin
    carol = await env.hs.register_user("carol", PASSWORD)
    phone, laptop = await _login(c, "PHONE"), await _login(c, "LAPTOP")
    path = f"/v2/users/{q(carol.user_id)}/delete_devices"
    await admin_refused(
        http, admin, "POST", path, {"devices": "PHONE"}, status=400, errcode="M_BAD_JSON"
    )
    await c.ok(phone, "GET", "/account/whoami")
    body = {"devices": ["PHONE", "LAPTOP", "NEVER"]}
    assert await admin_ok(http, admin, "POST", path, body) == {}
    for gone in (phone, laptop):
        await c.refused(gone, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")
    own = await c.ok(carol, "GET", "/devices")
    assert [device["device_id"] for device in own["devices"]] == [carol.device_id]
    await _refusals(env, "POST", "/v2/users/{}/delete_devices", {"devices": []})


async def test_pushers_are_listed(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    path = f"/v1/users/{q(alice.user_id)}/pushers"
    assert await admin_ok(http, admin, "GET", path) == {"pushers": [], "total": 0}
    pusher = {
        "pushkey": "key-1",
        "kind": "http",
        "app_id": "org.example.app",
        "app_display_name": "Example",
        "device_display_name": "Alice's phone",
        "profile_tag": "tag",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify", "format": "x"},
    }
    await c.ok(alice, "POST", "/pushers/set", pusher)
    listed = await admin_ok(http, admin, "GET", path)
    assert listed == {"pushers": [pusher], "total": 1}
    await _refusals(env, "GET", "/v1/users/{}/pushers")


async def test_account_data_is_shown_global_and_per_room(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    path = f"/v1/users/{q(alice.user_id)}/accountdata"
    empty = await admin_ok(http, admin, "GET", path)
    assert empty == {"account_data": {"global": {}, "rooms": {}}}
    room_id = await c.create_room(alice)
    user = f"/user/{q(alice.user_id)}"
    await c.ok(alice, "PUT", f"{user}/account_data/org.example.a", {"a": 1})
    await c.ok(alice, "PUT", f"{user}/account_data/org.example.b", {"b": [2]})
    await c.ok(alice, "PUT", f"{user}/account_data/org.example.a", {"a": 3})
    await c.ok(alice, "PUT", f"{user}/rooms/{q(room_id)}/account_data/org.example.r", {"r": 4})
    await c.ok(env.bob, "PUT", f"/user/{q(env.bob.user_id)}/account_data/org.example.a", {})
    shown = await admin_ok(http, admin, "GET", path)
    assert shown == {
        "account_data": {
            "global": {"org.example.a": {"a": 3}, "org.example.b": {"b": [2]}},
            "rooms": {room_id: {"org.example.r": {"r": 4}}},
        }
    }
    await _refusals(env, "GET", "/v1/users/{}/accountdata")
