"""Devices over real HTTP: listing, renaming, and deleting with the password."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import Client

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

PASSWORD = "correct horse battery"


@dataclass
class Env:
    hs: TestHomeserver
    client: Client
    alice: TestUser
    bob: TestUser

    async def login(self, device_id: str) -> TestUser:
        return await self.client.log_in(
            "alice", PASSWORD, device_id=device_id, initial_device_display_name=f"{device_id} phone"
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        alice = await hs.register_user("alice", PASSWORD)
        bob = await hs.register_user("bob", "bobs password")
        yield Env(hs, Client(hs, http), alice, bob)


def _password_auth(session: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": password,
        "session": session,
    }


async def _device_ids(c: Client, user: TestUser) -> list[str]:
    answer = await c.ok(user, "GET", "/devices")
    return sorted(device["device_id"] for device in answer["devices"])


async def test_devices_are_listed_read_and_renamed(env: Env) -> None:
    c, alice = env.client, env.alice
    phone = await env.login("PHONE")
    assert await _device_ids(c, alice) == sorted([alice.device_id, "PHONE"])
    device = await c.ok(alice, "GET", "/devices/PHONE")
    assert device["device_id"] == "PHONE"
    assert device["display_name"] == "PHONE phone"
    assert isinstance(device["last_seen_ts"], int)
    assert await c.ok(phone, "PUT", "/devices/PHONE", {"display_name": "Work"}) == {}
    assert (await c.ok(alice, "GET", "/devices/PHONE"))["display_name"] == "Work"
    # A body without display_name changes nothing, and is no error.
    assert await c.ok(alice, "PUT", "/devices/PHONE", {}) == {}
    assert (await c.ok(alice, "GET", "/devices/PHONE"))["display_name"] == "Work"


async def test_refusals_change_nothing(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await env.login("PHONE")
    await c.refused(None, "GET", "/devices", status=401, errcode="M_MISSING_TOKEN")
    await c.refused(None, "PUT", "/devices/PHONE", {}, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(alice, "GET", "/devices/NOPE", status=404, errcode="M_NOT_FOUND")
    # Bob sees his own devices only: Alice's are unknown to him.
    await c.refused(bob, "GET", "/devices/PHONE", status=404, errcode="M_NOT_FOUND")
    await c.refused(
        bob, "PUT", "/devices/PHONE", {"display_name": "mine"}, status=404, errcode="M_NOT_FOUND"
    )
    await c.refused(alice, "PUT", "/devices/PHONE", raw=b"[", status=400, errcode="M_NOT_JSON")
    await c.refused(
        alice, "PUT", "/devices/PHONE", {"display_name": 3}, status=400, errcode="M_BAD_JSON"
    )
    assert (await c.ok(alice, "GET", "/devices/PHONE"))["display_name"] == "PHONE phone"
    assert await _device_ids(c, bob) == [bob.device_id]


async def test_deleting_a_device_takes_the_password_and_logs_it_out(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    phone = await env.login("PHONE")
    status, challenge = await c.call(alice, "DELETE", "/devices/PHONE")
    assert status == 401
    assert challenge["flows"] == [{"stages": ["m.login.password"]}]
    session = challenge["session"]
    assert isinstance(session, str)
    assert session
    # A wrong password, or Bob's password, is refused and deletes nothing.
    status, wrong = await c.call(
        alice, "DELETE", "/devices/PHONE", {"auth": _password_auth(session, "wrong")}
    )
    assert (status, wrong["errcode"]) == (401, "M_FORBIDDEN")
    assert wrong["flows"] == [{"stages": ["m.login.password"]}]
    status, _ = await c.call(
        bob, "DELETE", "/devices/PHONE", {"auth": _password_auth(session, "bobs password")}
    )
    # Credentials naming Alice, sent by Bob, are refused outright.
    assert status == 403
    await c.refused(
        alice,
        "DELETE",
        "/devices/PHONE",
        {"auth": {"type": "m.login.dummy", "session": session}},
        status=400,
        errcode="M_UNRECOGNIZED",
    )
    assert await c.ok(phone, "GET", "/account/whoami") == {
        "user_id": alice.user_id,
        "device_id": "PHONE",
        "is_guest": False,
    }
    assert await c.ok(alice, "DELETE", "/devices/PHONE", {"auth": _password_auth(session)}) == {}
    assert await _device_ids(c, alice) == [alice.device_id]
    await c.refused(phone, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")
    await c.refused(alice, "GET", "/devices/PHONE", status=404, errcode="M_NOT_FOUND")
    await c.ok(alice, "GET", "/account/whoami")


async def test_delete_devices_deletes_several(env: Env) -> None:
    c, alice = env.client, env.alice
    phone, laptop = await env.login("PHONE"), await env.login("LAPTOP")
    body: dict[str, Any] = {"devices": ["PHONE", "LAPTOP", "NEVER"]}
    status, challenge = await c.call(alice, "POST", "/delete_devices", body)
    assert status == 401
    await c.refused(
        alice, "POST", "/delete_devices", {"devices": "PHONE"}, status=400, errcode="M_BAD_JSON"
    )
    assert sorted(await _device_ids(c, alice)) == sorted([alice.device_id, "LAPTOP", "PHONE"])
    body["auth"] = _password_auth(challenge["session"])
    assert await c.ok(alice, "POST", "/delete_devices", body) == {}
    assert await _device_ids(c, alice) == [alice.device_id]
    for gone in (phone, laptop):
        await c.refused(gone, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN")


async def test_a_deletion_retried_in_its_finished_session_answers_as_the_first(
    env: Env,
) -> None:
    c, alice = env.client, env.alice
    await env.login("PHONE")
    await env.login("TABLET")
    body: dict[str, Any] = {"devices": ["PHONE"]}
    status, challenge = await c.call(alice, "POST", "/delete_devices", body)
    assert status == 401, challenge
    session = challenge["session"]
    auth = _password_auth(session)
    assert await c.ok(alice, "POST", "/delete_devices", {**body, "auth": auth}) == {}
    assert await _device_ids(c, alice) == sorted([alice.device_id, "TABLET"])

    # PHONE logs in again. The first deletion's retry, late, answers as it
    # did, stage again or session alone, and deletes nothing anew.
    await env.login("PHONE")
    for retry in (auth, {"session": session}):
        assert await c.ok(alice, "POST", "/delete_devices", {**body, "auth": retry}) == {}
    assert await _device_ids(c, alice) == sorted([alice.device_id, "PHONE", "TABLET"])
    # Another request in the finished session is refused, with nothing done:
    # other devices, or another operation altogether.
    await c.refused(
        alice,
        "POST",
        "/delete_devices",
        {"devices": ["TABLET"], "auth": auth},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(
        alice,
        "POST",
        "/account/password",
        {"new_password": "another", "auth": auth},
        status=403,
        errcode="M_FORBIDDEN",
    )
    assert await _device_ids(c, alice) == sorted([alice.device_id, "PHONE", "TABLET"])
