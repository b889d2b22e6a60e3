"""Registering, logging in and out, devices, password changes and
deactivation as a client goes through them, over HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import V3, Client

from ranvier.testing.homeserver import TestUser, open_test_homeserver

_PASSWORD = "superuser"


@dataclass
class Env:
    client: Client
    alice: TestUser

    async def login(
        self, user: str, password: str = _PASSWORD, **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            **extra,
        }
        status, answer = await self.client.call(None, "POST", "/login", body)
        return status, answer

    async def session(self, password: str = _PASSWORD, **extra: Any) -> TestUser:
        """A new login of Alice's."""
        status, answer = await self.login(self.alice.user_id, password, **extra)
        assert status == 200, answer
        return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])

    async def works(self, user: TestUser) -> bool:
        status, _ = await self.client.call(user, "GET", "/account/whoami")
        assert status in (200, 401)
        return status == 200

    def auth(self, password: str = _PASSWORD, user: str | None = None) -> dict[str, Any]:
        return {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user or self.alice.user_id},
            "password": password,
        }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        yield Env(Client(hs, http), await hs.register_user("alice", password=_PASSWORD))


async def _register(env: Env, body: Any) -> tuple[int, dict[str, Any]]:
    status, answer = await env.client.call(None, "POST", "/register", body)
    return status, answer


# --- registration --------------------------------------------------------------


async def test_an_empty_registration_is_answered_with_flows_of_stages(env: Env) -> None:
    response = await env.client.http.post(V3 + "/register", content=b"{}")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    flows = response.json()["flows"]
    assert flows
    assert all(isinstance(flow["stages"], list) for flow in flows)


async def test_registration_creates_lower_cased_users_on_the_named_device(env: Env) -> None:
    status, made = await _register(
        env,
        {
            "auth": {"type": "m.login.dummy"},
            "username": "user-UPPER",
            "password": "sUp3rs3kr1t",
            "device_id": "my_device_id",
        },
    )
    assert status == 200, made
    assert made["user_id"] == "@user-upper:localhost"
    assert made["device_id"] == "my_device_id"
    assert isinstance(made["access_token"], str)
    # Taken now, whatever the case or the password.
    status, again = await _register(
        env,
        {"auth": {"type": "m.login.dummy"}, "username": "user-upper", "password": "other"},
    )
    assert (status, again["errcode"]) == (400, "M_USER_IN_USE")


@pytest.mark.parametrize(
    "char", ["!", '"', ":", "?", "\\", "@", "[", "]", "{", "|", "}", "£", "é", "\n", "'", ","]
)
async def test_usernames_with_special_characters_are_refused(env: Env, char: str) -> None:
    status, answer = await _register(
        env,
        {
            "auth": {"type": "m.login.dummy"},
            "username": f"user-{char}-reject-please",
            "password": "sUp3rs3kr1t",
        },
    )
    assert (status, answer["errcode"]) == (400, "M_INVALID_USERNAME")
    got, available = await env.client.call(
        None, "GET", "/register/available", params={"username": f"user-{char}-reject-please"}
    )
    assert (got, available["errcode"]) == (400, "M_INVALID_USERNAME")


@pytest.mark.parametrize("char", list("q3._=-/"))
async def test_usernames_with_allowed_characters_register(env: Env, char: str) -> None:
    status, answer = await _register(
        env,
        {"auth": {"type": "m.login.dummy"}, "username": f"chrtestuser{char}", "password": "pw"},
    )
    assert status == 200, answer
    assert answer["user_id"] == f"@chrtestuser{char}:localhost"


async def test_a_non_ascii_password_registers_through_the_session(env: Env) -> None:
    body: dict[str, Any] = {
        "username": "test_user",
        "password": "übers3kr1t",
        "device_id": "xyzzy",
        "initial_device_display_name": "display_name",
    }
    status, first = await _register(env, body)
    assert status == 401
    status, made = await _register(
        env, {**body, "auth": {"type": "m.login.dummy", "session": first["session"]}}
    )
    assert status == 200, made
    assert isinstance(made["access_token"], str)
    status, _ = await env.login("test_user", "übers3kr1t")
    assert status == 200


async def _user_count(env: Env) -> int:
    def read(conn: sqlite3.Connection) -> int:
        (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
        return int(count)

    return await env.client.hs.server.storage.readers.read(read)


async def _registration_session(env: Env, body: dict[str, Any]) -> str:
    status, challenge = await _register(env, body)
    assert status == 401, challenge
    session = challenge["session"]
    assert isinstance(session, str)
    return session


@pytest.mark.parametrize("username", [None, "carol"])
async def test_a_registration_retried_in_its_session_answers_the_same_user(
    env: Env, username: str | None
) -> None:
    body: dict[str, Any] = {"password": "pw"}
    if username is not None:
        body["username"] = username
    session = await _registration_session(env, body)
    dummy = {**body, "auth": {"type": "m.login.dummy", "session": session}}
    status, made = await _register(env, dummy)
    assert status == 200, made
    users = await _user_count(env)

    # The answer was lost: the client sends the stage again, then the
    # session alone. No second account, no M_USER_IN_USE: the same user,
    # logged in anew, the first login still working.
    status, again = await _register(env, dummy)
    assert status == 200, again
    assert again["user_id"] == made["user_id"]
    assert again["device_id"] != made["device_id"]
    status, alone = await _register(env, {**body, "auth": {"session": session}})
    assert status == 200, alone
    assert alone["user_id"] == made["user_id"]
    for answer in (made, again, alone):
        whoami = await env.client.ok(None, "GET", "/account/whoami", token=answer["access_token"])
        assert whoami["user_id"] == made["user_id"]
    # A retry that inhibits the login gets the user ID alone.
    status, bare = await _register(env, {**dummy, "inhibit_login": True})
    assert (status, bare) == (200, {"user_id": made["user_id"], "home_server": "localhost"})
    assert await _user_count(env) == users

    # Another name in the finished session is refused, and made nowhere.
    status, other = await _register(env, {**dummy, "username": "dave"})
    assert (status, other["errcode"]) == (400, "M_INVALID_PARAM")
    assert await _user_count(env) == users
    status, _ = await env.client.call(
        None, "GET", "/register/available", params={"username": "dave"}
    )
    assert status == 200


async def test_a_session_the_server_never_opened_keeps_no_registration(env: Env) -> None:
    """A session a client made up is not the server's to answer retries
    in: a second registration in it is a registration of its own."""
    body = {"password": "pw", "auth": {"type": "m.login.dummy", "session": "made-up"}}
    status, first = await _register(env, body)
    assert status == 200, first
    status, second = await _register(env, body)
    assert status == 200, second
    assert second["user_id"] != first["user_id"]
    status, named = await _register(env, {**body, "username": "erin"})
    assert status == 200, named
    status, taken = await _register(env, {**body, "username": "erin"})
    assert (status, taken["errcode"]) == (400, "M_USER_IN_USE")


async def test_availability_of_names(env: Env) -> None:
    free = await env.client.ok(None, "GET", "/register/available", params={"username": "free"})
    assert free == {"available": True}
    await env.client.refused(
        None,
        "GET",
        "/register/available",
        params={"username": "alice"},
        status=400,
        errcode="M_USER_IN_USE",
    )


# --- login ---------------------------------------------------------------------


async def test_login_flows_are_json_with_types(env: Env) -> None:
    response = await env.client.http.get(V3 + "/login")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    types = [flow["type"] for flow in response.json()["flows"]]
    assert "m.login.password" in types


async def test_logging_in_by_user_id_localpart_or_upper_case(env: Env) -> None:
    for name in ("@alice:localhost", "alice", "@ALICE:localhost", "ALICE"):
        status, answer = await env.login(name)
        assert status == 200, (name, answer)
        assert answer["user_id"] == env.alice.user_id
        user = TestUser(answer["user_id"], answer["access_token"], answer["device_id"])
        whoami = await env.client.ok(user, "GET", "/account/whoami")
        assert whoami["user_id"] == env.alice.user_id
    status, answer = await env.login(env.alice.user_id, device_id="test_device_id")
    assert (status, answer["device_id"]) == (200, "test_device_id")


async def test_a_wrong_password_or_unknown_user_is_forbidden(env: Env) -> None:
    for user, password in ((env.alice.user_id, "wrong_password"), ("i-dont-exist", _PASSWORD)):
        status, answer = await env.login(user, password)
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")


# --- logout --------------------------------------------------------------------


async def test_logout_ends_this_session_and_logout_all_every_one(env: Env) -> None:
    one, two, three = await env.session(), await env.session(), await env.session()
    await env.client.ok(one, "POST", "/logout", {})
    assert [await env.works(user) for user in (one, two, three)] == [False, True, True]
    await env.client.ok(two, "POST", "/logout/all", {})
    assert [await env.works(user) for user in (two, three, env.alice)] == [False, False, False]


async def test_logout_needs_a_good_token(env: Env) -> None:
    await env.client.refused(
        None, "POST", "/logout", {}, token="not-a-token", status=401, errcode="M_UNKNOWN_TOKEN"
    )
    await env.client.refused(None, "POST", "/logout", {}, status=401, errcode="M_MISSING_TOKEN")
    assert await env.works(env.alice)


# --- devices -------------------------------------------------------------------


async def test_devices_are_read_listed_and_renamed(env: Env) -> None:
    await env.session(device_id="login_device", initial_device_display_name="device display")
    await env.session(device_id="login_device_2")
    device = await env.client.ok(env.alice, "GET", "/devices/login_device")
    assert (device["device_id"], device["display_name"]) == ("login_device", "device display")
    listed = await env.client.ok(env.alice, "GET", "/devices")
    ids = {device["device_id"] for device in listed["devices"]}
    assert ids == {env.alice.device_id, "login_device", "login_device_2"}
    await env.client.ok(env.alice, "PUT", "/devices/login_device", {"display_name": "new name"})
    device = await env.client.ok(env.alice, "GET", "/devices/login_device")
    assert device["display_name"] == "new name"
    await env.client.refused(
        env.alice, "GET", "/devices/unknown_device", status=404, errcode="M_NOT_FOUND"
    )
    await env.client.refused(
        env.alice,
        "PUT",
        "/devices/unknown_device",
        {"display_name": "x"},
        status=404,
        errcode="M_NOT_FOUND",
    )


async def test_deleting_a_device_asks_for_the_owners_password(env: Env) -> None:
    other = await env.session()
    path = f"/devices/{other.device_id}"
    status, asked = await env.client.call(env.alice, "DELETE", path)
    assert status == 401
    assert {"session", "flows", "params"} <= set(asked)
    status, wrong = await env.client.call(
        env.alice,
        "DELETE",
        path,
        {"auth": {**env.auth("super-wrong-password"), "session": asked["session"]}},
    )
    assert (status, wrong["errcode"]) == (401, "M_FORBIDDEN")
    assert {"session", "flows", "params", "error"} <= set(wrong)
    await env.client.ok(env.alice, "DELETE", path, {"auth": env.auth()})
    await env.client.refused(env.alice, "GET", path, status=404, errcode="M_NOT_FOUND")
    assert not await env.works(other)


async def test_another_users_password_does_not_delete_a_device(env: Env) -> None:
    await env.client.hs.register_user("bob", password="bobspassword")
    other = await env.session()
    path = f"/devices/{other.device_id}"
    status, answer = await env.client.call(
        env.alice, "DELETE", path, {"auth": env.auth("bobspassword", "@bob:localhost")}
    )
    assert status == 403, answer
    await env.client.ok(env.alice, "GET", path)
    assert await env.works(other)
    await env.client.ok(env.alice, "DELETE", path, {"auth": env.auth()})
    await env.client.refused(env.alice, "GET", path, status=404, errcode="M_NOT_FOUND")


# --- password changes ----------------------------------------------------------


async def _change_password(env: Env, old: str, new: str, **extra: Any) -> None:
    await env.client.ok(
        env.alice,
        "POST",
        "/account/password",
        {"auth": env.auth(old), "new_password": new, **extra},
    )


async def test_a_new_password_replaces_the_old_and_ends_other_sessions(env: Env) -> None:
    other = await env.session()
    await _change_password(env, _PASSWORD, "my_new_password")
    status, answer = await env.login(env.alice.user_id)
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    status, answer = await env.login(env.alice.user_id, "my_new_password")
    assert (status, answer["user_id"]) == (200, env.alice.user_id)
    assert await env.works(env.alice)
    assert not await env.works(other)
    kept = await env.session("my_new_password")
    await _change_password(env, "my_new_password", "third", logout_devices=False)
    assert await env.works(kept)


# --- the pushers of a session --------------------------------------------------

_PUSHER = {
    "kind": "http",
    "app_id": "org.example.app",
    "app_display_name": "App",
    "device_display_name": "Device",
    "profile_tag": "tag",
    "pushkey": "a_push_key",
    "lang": "en",
    "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
}


async def _pushers(env: Env) -> list[Any]:
    answer = await env.client.ok(env.alice, "GET", "/pushers")
    pushers: list[Any] = answer["pushers"]
    return pushers


async def _pushkeys(env: Env) -> list[str]:
    return sorted(pusher["pushkey"] for pusher in await _pushers(env))


async def _set_pusher(env: Env, user: TestUser, pushkey: str) -> None:
    await env.client.ok(user, "POST", "/pushers/set", {**_PUSHER, "pushkey": pushkey})


async def test_a_password_change_deletes_other_sessions_pushers_only(env: Env) -> None:
    other = await env.session()
    await env.client.ok(other, "POST", "/pushers/set", _PUSHER)
    assert len(await _pushers(env)) == 1
    await _change_password(env, _PASSWORD, "second")
    assert await _pushers(env) == []
    await env.client.ok(env.alice, "POST", "/pushers/set", _PUSHER)
    await _change_password(env, "second", _PASSWORD)
    assert [pusher["pushkey"] for pusher in await _pushers(env)] == ["a_push_key"]


async def test_a_password_change_keeping_the_sessions_keeps_their_pushers(env: Env) -> None:
    other = await env.session()
    await _set_pusher(env, other, "other_key")
    await _change_password(env, _PASSWORD, "second", logout_devices=False)
    assert await _pushkeys(env) == ["other_key"]


async def test_logging_out_deletes_that_sessions_pushers_and_logout_all_every_ones(
    env: Env,
) -> None:
    one, two = await env.session(), await env.session()
    for user, pushkey in ((one, "one_key"), (two, "two_key"), (env.alice, "alice_key")):
        await _set_pusher(env, user, pushkey)
    await env.client.ok(one, "POST", "/logout", {})
    assert await _pushkeys(env) == ["alice_key", "two_key"]
    await env.client.ok(two, "POST", "/logout/all", {})
    assert await env.client.hs.server.storage.pushers.pushers_of(env.alice.user_id) == []


async def test_deleting_devices_deletes_their_pushers(env: Env) -> None:
    one, two, three = await env.session(), await env.session(), await env.session()
    for user, pushkey in ((one, "one_key"), (two, "two_key"), (three, "three_key")):
        await _set_pusher(env, user, pushkey)
    await env.client.ok(env.alice, "DELETE", f"/devices/{one.device_id}", {"auth": env.auth()})
    assert await _pushkeys(env) == ["three_key", "two_key"]
    await env.client.ok(
        env.alice, "POST", "/delete_devices", {"devices": [two.device_id], "auth": env.auth()}
    )
    assert await _pushkeys(env) == ["three_key"]


# --- deactivation --------------------------------------------------------------


async def test_deactivation_asks_for_the_password_then_ends_the_account(env: Env) -> None:
    status, asked = await env.client.call(env.alice, "POST", "/account/deactivate", {})
    assert status == 401
    assert any("m.login.password" in flow["stages"] for flow in asked["flows"])
    status, wrong = await env.client.call(
        env.alice, "POST", "/account/deactivate", {"auth": env.auth("wrong_password")}
    )
    assert (status, wrong["errcode"]) == (401, "M_FORBIDDEN")
    assert await env.works(env.alice)
    await env.client.ok(env.alice, "POST", "/account/deactivate", {"auth": env.auth()})
    status, answer = await env.login(env.alice.user_id)
    assert status == 403, answer
    assert not await env.works(env.alice)
