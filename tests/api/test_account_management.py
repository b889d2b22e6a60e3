"""Changing the password and deactivating the account, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import Client, q
from _e2e import device_keys

from ranvier.core.accounts import UserInUseError
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple of a new horse"


@dataclass
class Env:
    hs: TestHomeserver
    client: Client
    alice: TestUser
    bob: TestUser

    async def login(self, device_id: str, password: str = PASSWORD) -> TestUser:
        answer = await self.client.ok(None, "POST", "/login", _login_body(device_id, password))
        return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])


def _login_body(device_id: str, password: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": password,
        "device_id": device_id,
    }


def _password_auth(session: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": password,
        "session": session,
    }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        alice = await hs.register_user("alice", PASSWORD)
        bob = await hs.register_user("bob", "bobs password")
        yield Env(hs, Client(hs, http), alice, bob)


async def _challenge(c: Client, user: TestUser, path: str, body: dict[str, Any]) -> str:
    """The session of the 401 a request without ``auth`` is answered."""
    status, challenge = await c.call(user, "POST", path, body)
    assert status == 401, challenge
    assert challenge["flows"] == [{"stages": ["m.login.password"]}]
    assert "errcode" not in challenge
    session = challenge["session"]
    assert isinstance(session, str)
    assert session
    return session


async def _device_ids(c: Client, user: TestUser) -> list[str]:
    answer = await c.ok(user, "GET", "/devices")
    return sorted(device["device_id"] for device in answer["devices"])


async def _key_devices(c: Client, asker: TestUser, user_id: str) -> list[str]:
    answer = await c.ok(asker, "POST", "/keys/query", {"device_keys": {user_id: []}})
    return sorted(answer["device_keys"].get(user_id, {}))


# Changing the password.


async def test_a_password_change_asks_for_the_old_password(env: Env) -> None:
    c, alice = env.client, env.alice
    body: dict[str, Any] = {"new_password": NEW_PASSWORD}
    session = await _challenge(c, alice, "/account/password", body)
    status, wrong = await c.call(
        alice,
        "POST",
        "/account/password",
        {**body, "auth": _password_auth(session, "not the password")},
    )
    assert (status, wrong["errcode"]) == (401, "M_FORBIDDEN")
    assert wrong["flows"] == [{"stages": ["m.login.password"]}]
    # Bob's own password does not change Alice's.
    status, _ = await c.call(
        env.bob,
        "POST",
        "/account/password",
        {**body, "auth": {**_password_auth(session, PASSWORD), "identifier": None}},
    )
    assert status == 401
    await c.ok(None, "POST", "/login", _login_body("OLD", PASSWORD))
    await c.refused(
        None, "POST", "/login", _login_body("NEW", NEW_PASSWORD), status=403, errcode="M_FORBIDDEN"
    )

    assert (
        await c.ok(alice, "POST", "/account/password", {**body, "auth": _password_auth(session)})
        == {}
    )

    await c.refused(
        None, "POST", "/login", _login_body("OLD2", PASSWORD), status=403, errcode="M_FORBIDDEN"
    )
    await c.ok(None, "POST", "/login", _login_body("NEW", NEW_PASSWORD))
    # Bob's password is his still.
    await c.ok(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "bobs password",
        },
    )


async def test_a_password_change_logs_out_every_other_device(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    phone, laptop = await env.login("PHONE"), await env.login("LAPTOP")
    for user in (alice, phone):
        await c.ok(user, "POST", "/keys/upload", {"device_keys": device_keys(user).body})
    assert await _key_devices(c, bob, alice.user_id) == sorted([alice.device_id, "PHONE"])
    body: dict[str, Any] = {"new_password": NEW_PASSWORD}
    session = await _challenge(c, alice, "/account/password", body)
    await c.ok(alice, "POST", "/account/password", {**body, "auth": _password_auth(session)})

    for gone in (phone, laptop):
        await c.refused(gone, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")
    assert (await c.ok(alice, "GET", "/account/whoami"))["device_id"] == alice.device_id
    assert await _device_ids(c, alice) == [alice.device_id]
    assert await _key_devices(c, bob, alice.user_id) == [alice.device_id]


async def test_logout_devices_false_keeps_the_other_devices(env: Env) -> None:
    c, alice = env.client, env.alice
    phone = await env.login("PHONE")
    body: dict[str, Any] = {"new_password": NEW_PASSWORD, "logout_devices": False}
    session = await _challenge(c, alice, "/account/password", body)
    await c.ok(alice, "POST", "/account/password", {**body, "auth": _password_auth(session)})
    assert (await c.ok(phone, "GET", "/account/whoami"))["device_id"] == "PHONE"
    assert await _device_ids(c, alice) == sorted([alice.device_id, "PHONE"])
    await c.ok(None, "POST", "/login", _login_body("NEW", NEW_PASSWORD))


async def test_bad_password_changes_are_refused_and_change_nothing(env: Env) -> None:
    c, alice = env.client, env.alice
    phone = await env.login("PHONE")
    path = "/account/password"
    await c.refused(
        None, "POST", path, {"new_password": "x"}, status=401, errcode="M_MISSING_TOKEN"
    )
    await c.refused(alice, "POST", path, {}, status=400, errcode="M_MISSING_PARAM")
    await c.refused(alice, "POST", path, {"new_password": 7}, status=400, errcode="M_BAD_JSON")
    await c.refused(
        alice,
        "POST",
        path,
        {"new_password": "x", "logout_devices": "yes"},
        status=400,
        errcode="M_BAD_JSON",
    )
    await c.refused(alice, "POST", path, raw=b"[1]", status=400, errcode="M_NOT_JSON")
    session = await _challenge(c, alice, path, {"new_password": ""})
    await c.refused(
        alice,
        "POST",
        path,
        {"new_password": "", "auth": _password_auth(session)},
        status=400,
        errcode="M_WEAK_PASSWORD",
    )
    await c.refused(
        alice,
        "POST",
        path,
        {"new_password": "x", "auth": {"type": "m.login.dummy", "session": session}},
        status=400,
        errcode="M_UNRECOGNIZED",
    )
    assert (await c.ok(phone, "GET", "/account/whoami"))["device_id"] == "PHONE"
    await c.ok(None, "POST", "/login", _login_body("AGAIN", PASSWORD))


# Deactivation.


async def test_deactivation_asks_for_the_password(env: Env) -> None:
    c, alice = env.client, env.alice
    session = await _challenge(c, alice, "/account/deactivate", {})
    status, wrong = await c.call(
        alice, "POST", "/account/deactivate", {"auth": _password_auth(session, "wrong")}
    )
    assert (status, wrong["errcode"]) == (401, "M_FORBIDDEN")
    await c.refused(
        alice, "POST", "/account/deactivate", {"erase": "yes"}, status=400, errcode="M_BAD_JSON"
    )
    await c.refused(None, "POST", "/account/deactivate", {}, status=401, errcode="M_MISSING_TOKEN")
    assert (await c.ok(alice, "GET", "/account/whoami"))["user_id"] == alice.user_id


async def test_a_deactivated_account_is_gone_for_good(env: Env) -> None:
    c, alice = env.client, env.alice
    phone = await env.login("PHONE")
    await c.ok(alice, "PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": "Al"})
    await c.ok(
        alice, "PUT", f"/profile/{q(alice.user_id)}/avatar_url", {"avatar_url": "mxc://hs/a"}
    )
    await c.ok(
        alice,
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
    assert len((await c.ok(alice, "GET", "/pushers"))["pushers"]) == 1
    session = await _challenge(c, alice, "/account/deactivate", {})
    answer = await c.ok(
        alice, "POST", "/account/deactivate", {"auth": _password_auth(session), "erase": False}
    )
    assert answer == {"id_server_unbind_result": "no-support"}

    for gone in (alice, phone):
        await c.refused(gone, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")
    await c.refused(
        None,
        "POST",
        "/login",
        _login_body("BACK", PASSWORD),
        status=403,
        errcode="M_USER_DEACTIVATED",
    )
    # A wrong password still says nothing about the account.
    await c.refused(
        None, "POST", "/login", _login_body("BACK", "wrong"), status=403, errcode="M_FORBIDDEN"
    )
    # The user ID is never handed out again.
    assert await env.hs.server.storage.accounts.user_exists(alice.user_id)
    with pytest.raises(UserInUseError):
        await env.hs.register_user("alice", "another person")
    profile = await c.ok(env.bob, "GET", f"/profile/{q(alice.user_id)}")
    assert profile.get("displayname") is None
    assert profile.get("avatar_url") is None
    assert await env.hs.server.storage.pushers.pushers_of(alice.user_id) == []


async def test_a_deactivated_user_leaves_their_rooms_and_invites(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    joined = await c.create_room(bob, preset="public_chat")
    await c.ok(alice, "POST", f"/rooms/{q(joined)}/join", {})
    invited = await c.create_room(bob, preset="private_chat", invite=[alice.user_id])
    own = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(own)}/join", {})
    unrelated = await c.create_room(bob, preset="public_chat")

    session = await _challenge(c, alice, "/account/deactivate", {})
    await c.ok(alice, "POST", "/account/deactivate", {"auth": _password_auth(session)})

    for room_id in (joined, invited, own):
        state = await c.state(bob, room_id)
        member = state[("m.room.member", alice.user_id)]
        assert member["content"]["membership"] == "leave", room_id
        assert member["sender"] == alice.user_id
    state = await c.state(bob, unrelated)
    assert ("m.room.member", alice.user_id) not in state
    members = await c.ok(bob, "GET", f"/rooms/{q(own)}/joined_members")
    assert list(members["joined"]) == [bob.user_id]


async def test_a_password_change_retried_in_its_session_answers_as_the_first(env: Env) -> None:
    c, alice = env.client, env.alice
    body: dict[str, Any] = {"new_password": NEW_PASSWORD}
    session = await _challenge(c, alice, "/account/password", body)
    auth = _password_auth(session)
    assert await c.ok(alice, "POST", "/account/password", {**body, "auth": auth}) == {}
    # The old password is no longer right, yet the retry of a change done
    # answers as it did; so does the session alone. Nothing is changed again.
    for retry in (auth, {"session": session}):
        assert await c.ok(alice, "POST", "/account/password", {**body, "auth": retry}) == {}
    await c.ok(None, "POST", "/login", _login_body("NEW", NEW_PASSWORD))
    # Another change in the finished session is another request.
    await c.refused(
        alice,
        "POST",
        "/account/password",
        {**body, "logout_devices": False, "auth": auth},
        status=403,
        errcode="M_FORBIDDEN",
    )
    # A wrong password in a session still open is asked again, in that session.
    other = await _challenge(c, alice, "/account/password", {"new_password": "third"})
    status, wrong = await c.call(
        alice,
        "POST",
        "/account/password",
        {"new_password": "third", "auth": auth | {"session": other}},
    )
    assert (status, wrong["errcode"], wrong["session"]) == (401, "M_FORBIDDEN", other)


async def test_a_deactivation_retried_with_its_logged_out_token_answers_as_the_first(
    env: Env,
) -> None:
    c, alice = env.client, env.alice
    session = await _challenge(c, alice, "/account/deactivate", {})
    auth = _password_auth(session)
    done = await c.ok(alice, "POST", "/account/deactivate", {"auth": auth})
    assert done == {"id_server_unbind_result": "no-support"}
    # The token is gone with the account, but its retry gets the answer.
    for retry in (auth, {"session": session}):
        assert await c.ok(alice, "POST", "/account/deactivate", {"auth": retry}) == done
    # Anything else with that token is refused as ever.
    await c.refused(alice, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")
    await c.refused(alice, "POST", "/account/deactivate", {}, status=401, errcode="M_UNKNOWN_TOKEN")
    await c.refused(
        alice,
        "POST",
        "/account/deactivate",
        {"erase": True, "auth": auth},
        status=401,
        errcode="M_UNKNOWN_TOKEN",
    )
    # Another token does not get the answer of Alice's session: for Bob it
    # is no session, and he is asked to authenticate.
    status, asked = await c.call(
        env.bob, "POST", "/account/deactivate", {"auth": {"session": session}}
    )
    assert status == 401
    assert asked["session"] != session
    assert (await c.ok(env.bob, "GET", "/account/whoami"))["user_id"] == env.bob.user_id
