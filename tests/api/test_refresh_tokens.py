"""Refresh tokens over real HTTP: access tokens that expire on the
accounts' clock (set by the test), ``/refresh``, the older pair's grace until
the newer is used, and logouts dropping both."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

V3 = "/_matrix/client/v3"
PASSWORD = "alices passphrase"
START_MS = 1_700_000_000_000
LIFETIME_MS = 300_000


class _Clock:
    """The wall clock the accounts read, moved by the test."""

    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    clock: _Clock

    async def login(self, **extra: Any) -> dict[str, Any]:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": PASSWORD,
            **extra,
        }
        answer = await self.http.post(f"{V3}/login", json=body)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def whoami(self, token: str) -> tuple[int, dict[str, Any]]:
        answer = await self.http.get(
            f"{V3}/account/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        return answer.status_code, answer.json()

    async def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        answer = await self.http.post(f"{V3}/refresh", json={"refresh_token": refresh_token})
        return answer.status_code, answer.json()

    async def refreshed(self, refresh_token: str) -> dict[str, Any]:
        status, answer = await self.refresh(refresh_token)
        assert status == 200, answer
        return answer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = _Clock()
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        hs.server.accounts.clock_ms = clock
        await hs.register_user("alice", PASSWORD)
        yield Env(hs, http, clock)


def _unknown(status: int, answer: dict[str, Any], *, soft_logout: bool) -> bool:
    return (status, answer.get("errcode"), answer.get("soft_logout")) == (
        401,
        "M_UNKNOWN_TOKEN",
        soft_logout,
    )


def _refresh_token_rows(hs: TestHomeserver) -> int:
    conn = sqlite3.connect(hs.server.config.paths.database)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM refresh_tokens").fetchone()
    finally:
        conn.close()
    return int(count)


async def test_a_login_asking_for_refresh_gets_an_expiring_token_and_a_refresh_token(
    env: Env,
) -> None:
    login = await env.login(refresh_token=True)
    assert login["expires_in_ms"] == LIFETIME_MS
    assert login["refresh_token"].startswith("rvr_")
    assert login["refresh_token"] != login["access_token"]
    assert await env.whoami(login["access_token"]) == (
        200,
        {"user_id": "@alice:localhost", "device_id": login["device_id"], "is_guest": False},
    )


async def test_a_token_without_refresh_never_expires(env: Env) -> None:
    login = await env.login()
    assert "refresh_token" not in login
    assert "expires_in_ms" not in login
    env.clock.now = START_MS + 365 * 24 * 3_600_000
    assert (await env.whoami(login["access_token"]))[0] == 200


async def test_an_expired_access_token_is_a_soft_logout_and_a_refresh_carries_on(
    env: Env,
) -> None:
    login = await env.login(refresh_token=True)
    env.clock.now = START_MS + LIFETIME_MS - 1
    assert (await env.whoami(login["access_token"]))[0] == 200  # now cached
    env.clock.now = START_MS + LIFETIME_MS
    status, answer = await env.whoami(login["access_token"])
    assert _unknown(status, answer, soft_logout=True)
    refreshed = await env.refreshed(login["refresh_token"])
    assert refreshed["expires_in_ms"] == LIFETIME_MS
    status, answer = await env.whoami(refreshed["access_token"])
    assert (status, answer["device_id"]) == (200, login["device_id"])
    # The new token expires a lifetime after the refresh.
    env.clock.now = START_MS + 2 * LIFETIME_MS
    assert _unknown(*await env.whoami(refreshed["access_token"]), soft_logout=True)


async def test_the_older_pair_lasts_until_the_newer_is_used(env: Env) -> None:
    login = await env.login(refresh_token=True)
    refreshed = await env.refreshed(login["refresh_token"])
    assert refreshed["access_token"] != login["access_token"]
    assert refreshed["refresh_token"] != login["refresh_token"]
    # The new pair unused: the old access token still works.
    assert (await env.whoami(login["access_token"]))[0] == 200
    # The new access token used: the old pair is gone.
    assert (await env.whoami(refreshed["access_token"]))[0] == 200
    assert _unknown(*await env.whoami(login["access_token"]), soft_logout=False)
    assert _unknown(*await env.refresh(login["refresh_token"]), soft_logout=False)
    # The current pair goes on being refreshed.
    again = await env.refreshed(refreshed["refresh_token"])
    assert (await env.whoami(again["access_token"]))[0] == 200
    assert _refresh_token_rows(env.hs) == 1


async def test_a_refresh_repeated_before_the_new_pair_is_used_replaces_it(env: Env) -> None:
    login = await env.login(refresh_token=True)
    lost = await env.refreshed(login["refresh_token"])
    kept = await env.refreshed(login["refresh_token"])
    assert kept["access_token"] != lost["access_token"]
    # The answer the client lost is replaced; the old pair still works.
    assert _unknown(*await env.whoami(lost["access_token"]), soft_logout=False)
    assert _unknown(*await env.refresh(lost["refresh_token"]), soft_logout=False)
    assert (await env.whoami(login["access_token"]))[0] == 200
    assert (await env.whoami(kept["access_token"]))[0] == 200
    assert _unknown(*await env.whoami(login["access_token"]), soft_logout=False)


async def test_using_the_new_refresh_token_retires_the_older_pair(env: Env) -> None:
    login = await env.login(refresh_token=True)
    assert (await env.whoami(login["access_token"]))[0] == 200  # cached
    second = await env.refreshed(login["refresh_token"])
    third = await env.refreshed(second["refresh_token"])
    assert _unknown(*await env.whoami(login["access_token"]), soft_logout=False)
    assert _unknown(*await env.refresh(login["refresh_token"]), soft_logout=False)
    assert (await env.whoami(third["access_token"]))[0] == 200
    assert _unknown(*await env.refresh(second["refresh_token"]), soft_logout=False)


async def test_logging_out_drops_the_refresh_token(env: Env) -> None:
    login = await env.login(refresh_token=True)
    refreshed = await env.refreshed(login["refresh_token"])
    logout = await env.http.post(
        f"{V3}/logout", headers={"Authorization": f"Bearer {refreshed['access_token']}"}
    )
    assert logout.status_code == 200
    assert _unknown(*await env.refresh(refreshed["refresh_token"]), soft_logout=False)
    assert _unknown(*await env.refresh(login["refresh_token"]), soft_logout=False)
    assert _unknown(*await env.whoami(login["access_token"]), soft_logout=False)
    assert _refresh_token_rows(env.hs) == 0


async def test_logging_the_device_in_again_drops_its_refresh_token(env: Env) -> None:
    login = await env.login(refresh_token=True, device_id="PHONE")
    await env.login(device_id="PHONE")
    assert _unknown(*await env.refresh(login["refresh_token"]), soft_logout=False)
    assert _refresh_token_rows(env.hs) == 0


async def test_registration_asking_for_refresh(env: Env) -> None:
    registered = await env.http.post(
        f"{V3}/register",
        json={
            "username": "bob",
            "password": "bobs passphrase",
            "refresh_token": True,
            "auth": {"type": "m.login.dummy"},
        },
    )
    assert registered.status_code == 200, registered.text
    answer = registered.json()
    assert answer["expires_in_ms"] == LIFETIME_MS
    refreshed = await env.refreshed(answer["refresh_token"])
    status, who = await env.whoami(refreshed["access_token"])
    assert (status, who["user_id"], who["device_id"]) == (
        200,
        "@bob:localhost",
        answer["device_id"],
    )


async def test_malformed_and_unknown_refreshes_are_refused(env: Env) -> None:
    missing = await env.http.post(f"{V3}/refresh", json={})
    assert (missing.status_code, missing.json()["errcode"]) == (400, "M_BAD_JSON")
    wrong_type = await env.http.post(f"{V3}/refresh", json={"refresh_token": 5})
    assert (wrong_type.status_code, wrong_type.json()["errcode"]) == (400, "M_BAD_JSON")
    assert _unknown(*await env.refresh("rvr_nobodys"), soft_logout=False)
    # An access token is not a refresh token.
    login = await env.login(refresh_token=True)
    assert _unknown(*await env.refresh(login["access_token"]), soft_logout=False)


async def test_a_deactivated_account_cannot_refresh(env: Env) -> None:
    login = await env.login(refresh_token=True)
    await env.hs.server.accounts.deactivate("@alice:localhost")
    assert _unknown(*await env.refresh(login["refresh_token"]), soft_logout=False)


async def test_a_refreshed_token_keeps_the_devices_transactions(env: Env) -> None:
    login = await env.login(refresh_token=True)

    async def call(method: str, path: str, token: str, body: Any = None) -> Any:
        answer = await env.http.request(
            method, V3 + path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    created = await call("POST", "/createRoom", login["access_token"], {})
    room_id = created["room_id"]
    send = f"/rooms/{room_id}/send/m.room.message/abcdef"
    message = {"msgtype": "m.text", "body": "first"}
    first = (await call("PUT", send, login["access_token"], message))["event_id"]
    refreshed = await env.refreshed(login["refresh_token"])
    token = refreshed["access_token"]
    assert token != login["access_token"]
    synced = await call("GET", "/sync", token)
    (echo,) = [
        event
        for event in synced["rooms"]["join"][room_id]["timeline"]["events"]
        if event["event_id"] == first
    ]
    assert echo["unsigned"]["transaction_id"] == "abcdef"
    # The same transaction again under the new token: the same event.
    assert (await call("PUT", send, token, message))["event_id"] == first
