"""What deactivation leaves of an account, over real HTTP: a user with
account data, room tags, push rules, ignored users, a key backup, a
dehydrated device, devices with keys and waiting messages, a pusher, a
filter, a sliding sync connection and receipts deactivates; afterwards
neither the admin API, the other users' endpoints nor the database itself
hold any of it, and deactivating again changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_ok
from _client import Client, WithAdmin, open_with_admin, q
from _dehydrated import dehydrated_body
from _dehydrated import ok as dehydrated_ok
from _e2e import OTK, device_keys, one_time_keys
from _federation import eventually, share_a_room, two_servers
from _sliding_sync import all_rooms, slide

from ranvier.protocol.signing import sign_json
from ranvier.testing.homeserver import TestUser

PASSWORD = "carol's long password"
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
BACKUP_AUTH_DATA = {"public_key": "carols backup key"}

#: Tables that keep rows of a deactivated user, on purpose
#: (ranvier.storage.deactivation says why); each checked below for what
#: its rows may still hold.
KEPT = frozenset(
    {
        "users",
        "room_key_backup_versions",
        "receipts",
        "device_list_changes",
        "uia_sessions",
    }
)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _database(env: WithAdmin) -> sqlite3.Connection:
    path = Path(env.hs.server.storage.path)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _rows_of(env: WithAdmin, user_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row naming ``user_id`` in a ``user_id`` column, by table."""
    conn = _database(env)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        found: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
            if "user_id" not in columns:
                continue
            rows = conn.execute(f'SELECT * FROM "{table}" WHERE user_id = ?', (user_id,)).fetchall()
            if rows:
                found[table] = rows
        return found
    finally:
        conn.close()


def _dump(env: WithAdmin) -> dict[str, list[tuple[Any, ...]]]:
    conn = _database(env)
    try:
        return {
            table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for (table,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    finally:
        conn.close()


async def _login(c: Client, device_id: str) -> TestUser:
    return await c.log_in("carol", PASSWORD, device_id=device_id)


async def _fill(env: WithAdmin, carol: TestUser, phone: TestUser, room_id: str) -> None:
    """Give Carol one of each kind of data deactivation removes."""
    c, bob = env.client, env.bob
    user = f"/user/{q(carol.user_id)}"
    await c.ok(carol, "PUT", f"{user}/account_data/org.example.secret", {"s": 1})
    await c.ok(carol, "PUT", f"{user}/account_data/m.direct", {bob.user_id: [room_id]})
    await c.ok(
        carol,
        "PUT",
        f"{user}/account_data/m.ignored_user_list",
        {"ignored_users": {"@spam:elsewhere.example": {}}},
    )
    await c.ok(carol, "PUT", f"{user}/rooms/{q(room_id)}/account_data/org.example.r", {"r": 2})
    await c.ok(carol, "PUT", f"{user}/rooms/{q(room_id)}/tags/m.favourite", {"order": 0.5})
    await c.ok(
        carol,
        "PUT",
        "/pushrules/global/override/org.example.rule",
        {"conditions": [], "actions": ["notify"]},
    )
    # Keys of the phone, a message waiting for it and one it sent.
    keys = device_keys(phone)
    await c.ok(
        phone,
        "POST",
        "/keys/upload",
        {
            "device_keys": keys.body,
            "one_time_keys": one_time_keys(keys, phone, "a", "b"),
            "fallback_keys": {
                f"{OTK}:fb": sign_json(
                    {"key": "fallback", "fallback": True}, phone.user_id, keys.signing_key
                )
            },
        },
    )
    await c.ok(
        bob,
        "PUT",
        "/sendToDevice/org.example.ping/t1",
        {"messages": {carol.user_id: {phone.device_id: {"hello": 1}}}},
    )
    await c.ok(
        phone,
        "PUT",
        "/sendToDevice/org.example.pong/t1",
        {"messages": {bob.user_id: {"*": {"hello": 2}}}},
    )
    body, _ = dehydrated_body(carol, "DRY", "d1")
    await dehydrated_ok(c, carol, "PUT", body=body)
    version = (
        await c.ok(
            carol,
            "POST",
            "/room_keys/version",
            {"algorithm": BACKUP_ALGORITHM, "auth_data": BACKUP_AUTH_DATA},
        )
    )["version"]
    await c.ok(
        carol,
        "PUT",
        f"/room_keys/keys/{q(room_id)}/session",
        {
            "first_message_index": 0,
            "forwarded_count": 0,
            "is_verified": True,
            "session_data": {"ephemeral": "e", "ciphertext": "carols secret", "mac": "m"},
        },
        params={"version": version},
    )
    await c.ok(
        carol,
        "POST",
        "/pushers/set",
        {
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": "key",
            "app_display_name": "App",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
        },
    )
    await c.ok(carol, "POST", f"{user}/filter", {"room": {"timeline": {"limit": 3}}})
    await slide(c.http, phone, {"conn_id": "c", "lists": {"all": all_rooms(ranges=[[0, 9]])}})
    sent = await c.ok(
        carol,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/txn1",
        {"body": "hi", "msgtype": "m.text"},
    )
    await c.ok(
        carol, "POST", f"/rooms/{q(room_id)}/receipt/m.read.private/{q(sent['event_id'])}", {}
    )
    await c.ok(carol, "POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(sent['event_id'])}", {})
    await c.ok(carol, "POST", f"{user}/openid/request_token", {})


async def _deactivate(c: Client, carol: TestUser) -> None:
    status, challenge = await c.call(carol, "POST", "/account/deactivate", {})
    assert status == 401, challenge
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "carol"},
        "password": PASSWORD,
        "session": challenge["session"],
    }
    await c.ok(carol, "POST", "/account/deactivate", {"auth": auth, "erase": False})


async def test_deactivation_leaves_none_of_the_accounts_private_data(env: WithAdmin) -> None:
    c, http, admin, bob = env.client, env.client.http, env.admin, env.bob
    carol = await env.hs.register_user("carol", PASSWORD)
    phone = await _login(c, "PHONE")
    room_id = await c.create_room(carol, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await _fill(env, carol, phone, room_id)
    before = _rows_of(env, carol.user_id)
    for table in (
        "account_data",
        "room_key_backup_keys",
        "dehydrated_devices",
        "e2e_device_keys",
        "e2e_one_time_keys",
        "e2e_fallback_keys",
        "to_device_inbox",
        "to_device_transactions",
        "pushers",
        "user_filters",
        "sliding_sync_connections",
        "client_transactions",
        "openid_tokens",
    ):
        assert before.get(table), table
    assert {row[2] for row in before["receipts"]} == {"m.read", "m.read.private"}
    # Bob's sharing a room with her hears of her devices going.
    since = (await c.ok(bob, "GET", "/sync"))["next_batch"]

    await _deactivate(c, carol)

    user = f"/users/{q(carol.user_id)}"
    assert await admin_ok(http, admin, "GET", f"/v1{user}/accountdata") == {
        "account_data": {"global": {}, "rooms": {}}
    }
    devices = await admin_ok(http, admin, "GET", f"/v2{user}/devices")
    assert (devices["devices"], devices["total"]) == ([], 0)
    pushers = await admin_ok(http, admin, "GET", f"/v1{user}/pushers")
    assert (pushers["pushers"], pushers["total"]) == ([], 0)
    queried = await c.ok(bob, "POST", "/keys/query", {"device_keys": {carol.user_id: []}})
    assert queried["device_keys"].get(carol.user_id, {}) == {}
    claimed = await c.ok(
        bob, "POST", "/keys/claim", {"one_time_keys": {carol.user_id: {"PHONE": OTK, "DRY": OTK}}}
    )
    assert claimed["one_time_keys"].get(carol.user_id, {}) == {}
    changes = await c.ok(bob, "GET", "/sync", params={"since": since})
    device_lists = changes.get("device_lists", {})
    assert carol.user_id in device_lists.get("changed", []) + device_lists.get("left", [])

    storage = env.hs.server.storage
    assert await storage.room_keys.version(carol.user_id) is None
    assert await storage.dehydrated_devices.dehydrated_device(carol.user_id) is None
    assert await storage.client_data.get_account_data(carol.user_id, room_id, "m.tag") is None

    left = _rows_of(env, carol.user_id)
    assert set(left) <= KEPT, set(left) - KEPT
    # A deleted version's row keeps its number taken, and nothing the
    # client gave.
    assert [(row[1], row[3], row[5]) for row in left["room_key_backup_versions"]] == [(1, b"{}", 1)]
    # Receipts the room's members saw stay; her private one is gone.
    assert {row[2] for row in left["receipts"]} == {"m.read"}

    # Deactivating again, as an admin, changes nothing.
    once = _dump(env)
    await admin_ok(http, admin, "POST", f"/v1/deactivate/{q(carol.user_id)}", {})
    assert _dump(env) == once


async def test_a_deactivated_user_still_in_a_room_is_not_in_the_user_directory(
    env: WithAdmin,
) -> None:
    """The storage write alone, as when a room could not be left yet."""
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    search = {"search_term": "alice"}
    found = await c.ok(bob, "POST", "/user_directory/search", search)
    assert [result["user_id"] for result in found["results"]] == [alice.user_id]

    assert await env.hs.server.storage.accounts.deactivate_account(alice.user_id) is not None

    state = await c.state(bob, room_id)
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert (await c.ok(bob, "POST", "/user_directory/search", search))["results"] == []


async def test_another_server_hears_a_deactivated_users_devices_go(tmp_path: Path) -> None:
    """The devices' removal, made in the deactivation's own write, reaches
    the servers sharing a room with the user; the account alone is
    deactivated here, so that Bob is still in the room."""
    async with two_servers(tmp_path) as servers:
        _, b, ca, cb, alice, bob = servers
        await share_a_room(servers)
        token = (await ca.ok(alice, "GET", "/sync"))["next_batch"]
        await cb.ok(bob, "POST", "/keys/upload", {"device_keys": device_keys(bob).body})
        changed: list[str] = []

        async def listed() -> bool:
            nonlocal token
            answer = await ca.ok(alice, "GET", "/sync", params={"since": token, "timeout": 0})
            changed.extend(answer.get("device_lists", {}).get("changed", []))
            token = answer["next_batch"]
            return bob.user_id in changed

        async def bobs_devices() -> dict[str, Any]:
            answer = await ca.ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
            devices: dict[str, Any] = answer["device_keys"].get(bob.user_id, {})
            return devices

        await eventually(listed, "Bob's keys in Alice's device lists")
        assert list(await bobs_devices()) == [bob.device_id]
        changed.clear()

        await b.server.accounts.deactivate(bob.user_id)

        await eventually(listed, "Bob's devices gone in Alice's device lists")
        assert await bobs_devices() == {}
