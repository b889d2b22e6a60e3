"""Admins logging in as a user (``POST /_synapse/admin/v1/users/{userId}/login``)
over real HTTP: the token acts as the user on the client API with no device
of theirs, expires when asked, is logged out by itself and with the admin's
tokens but not by the user's own logouts, ends with the user's deactivation
and the admin's rights, is written to the log, and every refusal leaves
nothing stored."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _admin import admin_call, admin_ok, admin_refused
from _client import Client, WithAdmin, open_with_admin, q

from ranvier.config import ServerNoticesConfig
from ranvier.testing.homeserver import TestUser, config_for_tests, open_test_homeserver

_START_MS = 1_700_000_000_000


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _path(user_id: str) -> str:
    return f"/v1/users/{q(user_id)}/login"


async def _login_as(env: WithAdmin, admin: TestUser, user_id: str, body: Any = None) -> TestUser:
    """The user as the admin is let act as them, by the token they are given."""
    answer = await admin_ok(env.client.http, admin, "POST", _path(user_id), body or {})
    assert set(answer) == {"access_token"}
    token = answer["access_token"]
    assert isinstance(token, str)
    assert token
    return TestUser(user_id, token, "")


async def _whoami(env: WithAdmin, user: TestUser) -> tuple[int, Any]:
    return await env.client.call(user, "GET", "/account/whoami")


async def _acts_as(env: WithAdmin, user: TestUser) -> bool:
    status, answer = await _whoami(env, user)
    if status == 200:
        assert answer["user_id"] == user.user_id
        return True
    assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN"), answer
    return False


async def _puppet_tokens(env: WithAdmin) -> list[tuple[Any, ...]]:
    def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return conn.execute("SELECT user_id, admin_id, expires_ts FROM puppet_tokens").fetchall()

    return await env.hs.server.storage.readers.read(read)


async def _devices(env: WithAdmin, user: TestUser) -> list[str]:
    answer = await env.client.ok(user, "GET", "/devices")
    return sorted(device["device_id"] for device in answer["devices"])


async def test_the_token_acts_as_the_user_with_no_device_of_theirs(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    devices = await _devices(env, alice)

    puppet = await _login_as(env, env.admin, alice.user_id)
    assert await _whoami(env, puppet) == (200, {"user_id": alice.user_id, "is_guest": False})

    sent = await c.ok(
        puppet,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "written by the admin"},
    )
    # Bob reads it as Alice's.
    page = await c.ok(bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b"})
    (message,) = [event for event in page["chunk"] if event["event_id"] == sent["event_id"]]
    assert message["sender"] == alice.user_id
    assert message["content"]["body"] == "written by the admin"
    joined = await c.ok(puppet, "GET", "/joined_rooms")
    assert joined == {"joined_rooms": [room_id]}

    # Nothing tells Alice: no device more, to herself or to an admin.
    assert await _devices(env, alice) == devices
    assert await _devices(env, puppet) == devices
    whois = await admin_ok(c.http, env.admin, "GET", f"/v1/whois/{q(alice.user_id)}")
    assert sorted(whois["devices"]) == devices
    # Alice is no admin, so neither is the token.
    status, _ = await admin_call(c.http, puppet, "GET", "/v2/users")
    assert status == 403


async def test_the_token_uploads_no_keys_having_no_device(env: WithAdmin) -> None:
    puppet = await _login_as(env, env.admin, env.alice.user_id)
    one_time = {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}}
    await env.client.refused(
        puppet,
        "POST",
        "/keys/upload",
        {"one_time_keys": one_time},
        status=400,
        errcode="M_INVALID_PARAM",
    )

    def read(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM e2e_one_time_keys").fetchone()[0])

    assert await env.hs.server.storage.readers.read(read) == 0
    # Alice's own device uploads as ever.
    counts = await env.client.ok(env.alice, "POST", "/keys/upload", {"one_time_keys": one_time})
    assert counts["one_time_key_counts"]["signed_curve25519"] == 1


async def test_each_token_has_transaction_ids_of_its_own(env: WithAdmin) -> None:
    """Two puppet tokens of one user are two clients with no device: one
    transaction ID sent on each is two events, a retry on one token its
    own event again, and the user's device has its own as ever; each
    reads back the transaction ID of its own event alone."""
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    first = await _login_as(env, env.admin, alice.user_id)
    second = await _login_as(env, env.admin, alice.user_id)
    path = f"/rooms/{q(room_id)}/send/m.room.message/same"

    async def send(user: TestUser, body: str) -> str:
        answer = await c.ok(user, "PUT", path, {"msgtype": "m.text", "body": body})
        return str(answer["event_id"])

    one = await send(first, "one")
    two = await send(second, "two")
    assert one != two
    assert await send(first, "one again") == one
    assert await send(second, "two again") == two
    own = await send(alice, "from the device")
    assert own not in (one, two)

    bodies = [
        event["content"]["body"]
        for event in (
            await c.ok(alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b"})
        )["chunk"]
        if event["type"] == "m.room.message"
    ]
    assert sorted(bodies) == ["from the device", "one", "two"]
    for reader, event_id, shown in (
        (first, one, "same"),
        (first, two, None),
        (second, two, "same"),
        (second, one, None),
        (alice, own, "same"),
        (alice, one, None),
    ):
        event = await c.ok(reader, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
        assert event.get("unsigned", {}).get("transaction_id") == shown, (reader, event_id)


async def test_each_token_has_to_device_transaction_ids_of_its_own(env: WithAdmin) -> None:
    """The same for ``/sendToDevice``: one transaction ID on two puppet
    tokens is two messages, a retry on either is none more."""
    c, alice = env.client, env.alice
    first = await _login_as(env, env.admin, alice.user_id)
    second = await _login_as(env, env.admin, alice.user_id)

    async def send(user: TestUser, body: str) -> None:
        message = {"messages": {alice.user_id: {alice.device_id: {"body": body}}}}
        await c.ok(user, "PUT", "/sendToDevice/m.test/same", message)

    await send(first, "one")
    await send(second, "two")
    await send(first, "one again")
    await send(second, "two again")
    synced = await c.ok(alice, "GET", "/sync")
    bodies = [event["content"]["body"] for event in synced["to_device"]["events"]]
    assert sorted(bodies) == ["one", "two"]


async def test_the_token_expires_at_valid_until_ms(env: WithAdmin) -> None:
    now = [_START_MS]
    env.hs.server.accounts.clock_ms = lambda: now[0]
    lasting = await _login_as(env, env.admin, env.alice.user_id)
    puppet = await _login_as(
        env, env.admin, env.alice.user_id, {"valid_until_ms": _START_MS + 60_000}
    )
    assert await _acts_as(env, puppet)
    now[0] = _START_MS + 59_999
    assert await _acts_as(env, puppet)
    now[0] = _START_MS + 60_000
    status, answer = await _whoami(env, puppet)
    assert (status, answer["errcode"], answer["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", True)
    # Without valid_until_ms the token lasts.
    now[0] = _START_MS + 10 * 365 * 86_400_000
    assert await _acts_as(env, lasting)
    # An expired token goes when the next one is made.
    await _login_as(env, env.admin, env.bob.user_id)
    assert sorted(await _puppet_tokens(env)) == [
        (env.alice.user_id, env.admin.user_id, None),
        (env.bob.user_id, env.admin.user_id, None),
    ]


async def test_the_users_logouts_leave_the_token_the_admins_end_it(env: WithAdmin) -> None:
    c, alice = env.client, env.alice
    phone = await env.hs.register_user("admin2", admin=True)
    puppet = await _login_as(env, env.admin, alice.user_id)
    other = await _login_as(env, env.admin, alice.user_id)
    kept = await _login_as(env, phone, alice.user_id)

    # Alice logging out everywhere logs out her devices, not the admin.
    await c.ok(alice, "POST", "/logout/all", {})
    assert not await _acts_as(env, alice)
    assert await _acts_as(env, puppet)

    # The token logged out with itself goes alone.
    assert await c.ok(puppet, "POST", "/logout", {}) == {}
    assert not await _acts_as(env, puppet)
    assert await _acts_as(env, other)
    assert await _acts_as(env, kept)
    status, _ = await admin_call(c.http, env.admin, "GET", "/v2/users")
    assert status == 200

    # The admin logging out everywhere ends the tokens they were given, not
    # another admin's.
    await c.ok(env.admin, "POST", "/logout/all", {})
    assert not await _acts_as(env, other)
    assert await _acts_as(env, kept)
    assert await _puppet_tokens(env) == [(alice.user_id, phone.user_id, None)]


async def test_deactivating_the_user_ends_the_token_for_good(env: WithAdmin) -> None:
    http, admin, bob = env.client.http, env.admin, env.bob
    puppet = await _login_as(env, admin, bob.user_id)
    assert await _acts_as(env, puppet)
    await admin_ok(http, admin, "POST", f"/v1/deactivate/{q(bob.user_id)}", {})
    assert not await _acts_as(env, puppet)
    await admin_ok(
        http, admin, "PUT", f"/v2/users/{q(bob.user_id)}", {"deactivated": False, "password": "pw"}
    )
    assert not await _acts_as(env, puppet)
    assert await _puppet_tokens(env) == []


async def test_losing_admin_rights_ends_the_tokens_given_as_an_admin(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    root = await env.hs.register_user("root", admin=True)
    puppet = await _login_as(env, root, env.alice.user_id)
    assert await _acts_as(env, puppet)
    rights = f"/v1/users/{q(root.user_id)}/admin"
    await admin_ok(http, admin, "PUT", rights, {"admin": False})
    assert not await _acts_as(env, puppet)
    await admin_ok(http, admin, "PUT", rights, {"admin": True})
    assert not await _acts_as(env, puppet)
    assert await _puppet_tokens(env) == []


async def test_an_admin_may_act_as_another_admin_with_their_rights(env: WithAdmin) -> None:
    root = await env.hs.register_user("root", admin=True)
    puppet = await _login_as(env, env.admin, root.user_id)
    assert await _acts_as(env, puppet)
    listed = await admin_ok(env.client.http, puppet, "GET", "/v2/users")
    assert root.user_id in [user["name"] for user in listed["users"]]


async def test_each_token_given_is_logged(env: WithAdmin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ranvier.core.accounts")
    year_2100 = 4_102_444_800_000
    puppet = await _login_as(env, env.admin, env.alice.user_id, {"valid_until_ms": year_2100})
    await _login_as(env, env.admin, env.bob.user_id)
    assert await env.client.ok(puppet, "POST", "/logout", {}) == {}
    lines = [
        record.getMessage() for record in caplog.records if record.name == "ranvier.core.accounts"
    ]
    assert lines == [
        f"admin {env.admin.user_id} was given an access token acting as {env.alice.user_id},"
        " until 2100-01-01T00:00:00+00:00",
        f"admin {env.admin.user_id} was given an access token acting as {env.bob.user_id},"
        " with no expiry",
        f"admin {env.admin.user_id} logged out an access token acting as {env.alice.user_id}",
    ]


async def test_refusals_store_nothing(env: WithAdmin) -> None:
    http, admin, alice, bob = env.client.http, env.admin, env.alice, env.bob
    server = env.hs.server_name
    await admin_ok(http, admin, "POST", f"/v1/deactivate/{q(bob.user_id)}", {})
    refusals: list[tuple[TestUser | None, str, Any, int, str]] = [
        (alice, alice.user_id, {}, 403, "M_FORBIDDEN"),
        (alice, env.admin.user_id, {}, 403, "M_FORBIDDEN"),
        (None, alice.user_id, {}, 401, "M_MISSING_TOKEN"),
        (admin, f"@nobody:{server}", {}, 404, "M_NOT_FOUND"),
        (admin, "@alice:elsewhere.test", {}, 400, "M_INVALID_PARAM"),
        (admin, "not a user ID", {}, 400, "M_INVALID_PARAM"),
        (admin, admin.user_id, {}, 400, "M_INVALID_PARAM"),
        (admin, bob.user_id, {}, 400, "M_INVALID_PARAM"),
        (admin, alice.user_id, {"valid_until_ms": "soon"}, 400, "M_BAD_JSON"),
        (admin, alice.user_id, {"valid_until_ms": True}, 400, "M_BAD_JSON"),
        (admin, alice.user_id, {"valid_until_ms": 1.5}, 400, "M_BAD_JSON"),
        (admin, alice.user_id, {"valid_until_ms": -1}, 400, "M_INVALID_PARAM"),
        (admin, alice.user_id, {"valid_until_ms": 2**53}, 400, "M_INVALID_PARAM"),
        (admin, alice.user_id, [], 400, "M_NOT_JSON"),
    ]
    for caller, user_id, body, status, errcode in refusals:
        await admin_refused(
            http, caller, "POST", _path(user_id), body, status=status, errcode=errcode
        )
    assert await _puppet_tokens(env) == []
    # Alice is untouched, and the admin's right request still answered.
    assert await _acts_as(env, alice)
    await _login_as(env, admin, alice.user_id, {"valid_until_ms": None})
    assert await _puppet_tokens(env) == [(alice.user_id, admin.user_id, None)]


async def test_the_server_notices_user_is_not_logged_in_as(tmp_path: Path) -> None:
    config = msgspec.structs.replace(
        config_for_tests(tmp_path / "hs"),
        server_notices=ServerNoticesConfig(system_mxid_localpart="notices"),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        env = WithAdmin(
            hs,
            Client(hs, http),
            await hs.register_user("alice"),
            await hs.register_user("bob"),
            await hs.register_user("admin", admin=True),
        )
        notice = {"msgtype": "m.server_notice", "body": "hello"}
        await admin_ok(
            http,
            env.admin,
            "POST",
            "/v1/send_server_notice",
            {"user_id": env.alice.user_id, "content": notice},
        )
        system = f"@notices:{hs.server_name}"
        shown = await admin_ok(http, env.admin, "GET", f"/v2/users/{q(system)}")
        assert shown["deactivated"] is False
        await admin_refused(
            http, env.admin, "POST", _path(system), {}, status=400, errcode="M_INVALID_PARAM"
        )
        assert await _puppet_tokens(env) == []
