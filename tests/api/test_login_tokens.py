"""Login tokens over real HTTP: made at ``/login/get_token`` after the
password (asked again on every request), spent by one ``m.login.token``
login, refused used or expired (on the handler's clock, set by the test);
the flow and the capability shown only where they are enabled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)

V3 = "/_matrix/client/v3"
GET_TOKEN = "/_matrix/client/v1/login/get_token"
PASSWORD = "alices passphrase"
START_MS = 1_700_000_000_000
LIFETIME_MS = 120_000


class _Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


@dataclass
class Env:
    hs: TestHomeserver
    http: httpx.AsyncClient
    alice: TestUser
    clock: _Clock

    async def get_token(self, auth: dict[str, Any] | None) -> httpx.Response:
        body = {} if auth is None else {"auth": auth}
        return await self.http.post(
            GET_TOKEN, json=body, headers={"Authorization": f"Bearer {self.alice.access_token}"}
        )

    async def new_token(self) -> str:
        challenge = await self.get_token(None)
        assert challenge.status_code == 401
        made = await self.get_token(_password_auth(challenge.json()["session"], PASSWORD))
        assert made.status_code == 200, made.text
        token: str = made.json()["login_token"]
        return token

    async def login(self, token: str, **extra: Any) -> httpx.Response:
        return await self.http.post(
            f"{V3}/login", json={"type": "m.login.token", "token": token, **extra}
        )


def _password_auth(session: str, password: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": password,
        "session": session,
    }


def _enabled_config(data_dir: Path, **registration: Any) -> Any:
    config = config_for_tests(data_dir)
    return msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(
            config.registration, login_token_enabled=True, **registration
        ),
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = _Clock()
    config = _enabled_config(tmp_path)
    async with open_test_homeserver(tmp_path, config=config) as hs, hs.client() as http:
        assert hs.server.login_tokens is not None
        hs.server.login_tokens.clock_ms = clock
        alice = await hs.register_user("alice", PASSWORD)
        yield Env(hs, http, alice, clock)


async def test_a_token_made_with_the_password_logs_a_new_device_in_once(env: Env) -> None:
    challenge = await env.get_token(None)
    assert challenge.status_code == 401
    assert challenge.json()["flows"] == [{"stages": ["m.login.password"]}]
    made = await env.get_token(_password_auth(challenge.json()["session"], PASSWORD))
    assert made.status_code == 200, made.text
    assert made.json()["expires_in_ms"] == LIFETIME_MS
    token = made.json()["login_token"]
    assert token.startswith("rvl_")

    login = await env.login(token, initial_device_display_name="tablet")
    assert login.status_code == 200, login.text
    answer = login.json()
    assert answer["user_id"] == env.alice.user_id
    assert answer["device_id"] != env.alice.device_id
    assert "refresh_token" not in answer
    whoami = await env.http.get(
        f"{V3}/account/whoami", headers={"Authorization": f"Bearer {answer['access_token']}"}
    )
    assert (whoami.status_code, whoami.json()["device_id"]) == (200, answer["device_id"])

    again = await env.login(token)
    assert (again.status_code, again.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_every_token_asks_for_the_password_again(env: Env) -> None:
    first = await env.get_token(None)
    wrong = await env.get_token(_password_auth(first.json()["session"], "not it"))
    assert (wrong.status_code, wrong.json()["errcode"]) == (401, "M_FORBIDDEN")
    await env.new_token()
    # The session that passed does not make a second token without the password.
    assert (await env.get_token(None)).status_code == 401


async def test_an_expired_or_unknown_token_is_refused(env: Env) -> None:
    token = await env.new_token()
    env.clock.now = START_MS + LIFETIME_MS
    expired = await env.login(token)
    assert (expired.status_code, expired.json()["errcode"]) == (403, "M_FORBIDDEN")
    unknown = await env.login("rvl_nobodys")
    assert (unknown.status_code, unknown.json()["errcode"]) == (403, "M_FORBIDDEN")
    missing = await env.http.post(f"{V3}/login", json={"type": "m.login.token"})
    assert (missing.status_code, missing.json()["errcode"]) == (400, "M_BAD_JSON")


async def test_a_token_login_may_ask_for_a_refresh_token_and_name_the_device(env: Env) -> None:
    token = await env.new_token()
    login = await env.login(token, device_id="TABLET", refresh_token=True)
    assert login.status_code == 200, login.text
    assert login.json()["device_id"] == "TABLET"
    assert login.json()["refresh_token"].startswith("rvr_")


async def test_a_deactivated_users_token_logs_nobody_in(env: Env) -> None:
    token = await env.new_token()
    await env.hs.server.accounts.deactivate(env.alice.user_id)
    refused = await env.login(token)
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_the_flow_and_the_capability_are_advertised_when_enabled(env: Env) -> None:
    flows = await env.http.get(f"{V3}/login")
    assert {"type": "m.login.token", "get_login_token": True} in flows.json()["flows"]
    capabilities = await env.http.get(
        f"{V3}/capabilities", headers={"Authorization": f"Bearer {env.alice.access_token}"}
    )
    assert capabilities.json()["capabilities"]["m.get_login_token"] == {"enabled": True}


async def test_nothing_is_offered_by_default(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        alice = await hs.register_user("alice", PASSWORD)
        bearer = {"Authorization": f"Bearer {alice.access_token}"}
        flows = await http.get(f"{V3}/login")
        capabilities = await http.get(f"{V3}/capabilities", headers=bearer)
        get_token = await http.post(GET_TOKEN, json={}, headers=bearer)
        login = await http.post(f"{V3}/login", json={"type": "m.login.token", "token": "rvl_x"})
    assert [flow["type"] for flow in flows.json()["flows"]] == ["m.login.password"]
    assert capabilities.json()["capabilities"]["m.get_login_token"] == {"enabled": False}
    assert (get_token.status_code, get_token.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    assert (login.status_code, login.json()["errcode"]) == (400, "M_UNKNOWN")


async def test_the_lifetime_is_configured(tmp_path: Path) -> None:
    config = _enabled_config(tmp_path, login_token_lifetime_ms=30_000)
    async with open_test_homeserver(tmp_path, config=config) as hs, hs.client() as http:
        alice = await hs.register_user("alice", PASSWORD)
        bearer = {"Authorization": f"Bearer {alice.access_token}"}
        challenge = await http.post(GET_TOKEN, json={}, headers=bearer)
        made = await http.post(
            GET_TOKEN,
            json={"auth": _password_auth(challenge.json()["session"], PASSWORD)},
            headers=bearer,
        )
    assert made.json()["expires_in_ms"] == 30_000


async def test_asking_for_tokens_is_limited_as_logging_in_is(tmp_path: Path) -> None:
    config = msgspec.structs.replace(
        config_for_tests(tmp_path, rate_limits=True),
        registration=msgspec.structs.replace(
            config_for_tests(tmp_path).registration, login_token_enabled=True
        ),
    )
    async with open_test_homeserver(tmp_path, config=config) as hs, hs.client() as http:
        alice = await hs.register_user("alice", PASSWORD)
        env = Env(hs, http, alice, _Clock())
        statuses = [(await env.get_token(None)).status_code for _ in range(10)]
        # The login category's burst (5 by default), then 429.
        assert statuses[:5] == [401] * 5
        assert 429 in statuses
        refused = await env.get_token(None)
        assert refused.json()["errcode"] == "M_LIMIT_EXCEEDED"
