"""Refresh tokens and login tokens through a client_reader worker: every
write made by the main process's storage actor, and a token retired on one
process refused at once by the other, whose cache held it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from _worker_configs import main_and_worker_configs

from ranvier.config import RegistrationConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

_V3 = "/_matrix/client/v3"
_GET_TOKEN = "/_matrix/client/v1/login/get_token"
PASSWORD = "alices passphrase"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _whoami(http: httpx.AsyncClient, token: str) -> tuple[int, Any]:
    answer = await http.get(f"{_V3}/account/whoami", headers=_bearer(token))
    return answer.status_code, answer.json()


async def _refresh(http: httpx.AsyncClient, refresh_token: str) -> tuple[int, Any]:
    answer = await http.post(f"{_V3}/refresh", json={"refresh_token": refresh_token})
    return answer.status_code, answer.json()


async def _login_token(http: httpx.AsyncClient, user: TestUser) -> str:
    challenge = await http.post(_GET_TOKEN, json={}, headers=_bearer(user.access_token))
    assert challenge.status_code == 401, challenge.text
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD,
        "session": challenge.json()["session"],
    }
    made = await http.post(_GET_TOKEN, json={"auth": auth}, headers=_bearer(user.access_token))
    assert made.status_code == 200, made.text
    token: str = made.json()["login_token"]
    return token


async def _token_login(http: httpx.AsyncClient, token: str) -> tuple[int, Any]:
    answer = await http.post(f"{_V3}/login", json={"type": "m.login.token", "token": token})
    return answer.status_code, answer.json()


async def test_refresh_and_login_tokens_through_a_worker(tmp_path: Path) -> None:
    registration = RegistrationConfig(
        enabled=True,
        login_token_enabled=True,
        password_hash_time_cost=1,
        password_hash_memory_kib=8,
        password_hash_parallelism=1,
    )
    main_config, worker_config = main_and_worker_configs(tmp_path, registration=registration)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice", PASSWORD)
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client() as on_worker,
            main.client() as on_main,
        ):
            # A login asking for refresh, through the worker.
            login = await on_worker.post(
                f"{_V3}/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": PASSWORD,
                    "refresh_token": True,
                },
            )
            assert login.status_code == 200, login.text
            first = login.json()
            assert first["expires_in_ms"] == 300_000
            assert (await _whoami(on_main, first["access_token"]))[0] == 200
            assert (await _whoami(on_worker, first["access_token"]))[0] == 200

            # Refreshed through the worker: the older token, cached by both,
            # works until the newer is used, then neither takes it.
            status, second = await _refresh(on_worker, first["refresh_token"])
            assert status == 200, second
            assert (await _whoami(on_main, first["access_token"]))[0] == 200
            status, who = await _whoami(on_worker, second["access_token"])
            assert (status, who["device_id"]) == (200, first["device_id"])
            assert (await _whoami(on_main, first["access_token"]))[0] == 401
            assert (await _whoami(on_worker, first["access_token"]))[0] == 401
            status, answer = await _refresh(on_main, first["refresh_token"])
            assert (status, answer["errcode"], answer["soft_logout"]) == (
                401,
                "M_UNKNOWN_TOKEN",
                False,
            )

            # Expired on the worker's clock: a soft logout.
            expired_at = worker.accounts.clock_ms() + 300_000
            worker.accounts.clock_ms = lambda: expired_at
            status, answer = await _whoami(on_worker, second["access_token"])
            assert (status, answer["errcode"], answer["soft_logout"]) == (
                401,
                "M_UNKNOWN_TOKEN",
                True,
            )

            # A login token made on the worker logs in once, on the main process.
            token = await _login_token(on_worker, alice)
            status, tablet = await _token_login(on_main, token)
            assert (status, tablet["user_id"]) == (200, alice.user_id)
            assert (await _whoami(on_worker, tablet["access_token"]))[0] == 200
            assert (await _token_login(on_worker, token))[0] == 403
            # One made on the main process, spent through the worker.
            token = await _login_token(on_main, alice)
            status, phone = await _token_login(on_worker, token)
            assert status == 200, phone
            assert (await _whoami(on_main, phone["access_token"]))[0] == 200
            assert (await _token_login(on_main, token))[0] == 403

            # Logging out (on the main process: only the worker's clock moved)
            # drops the refresh token too.
            logout = await on_main.post(f"{_V3}/logout", headers=_bearer(second["access_token"]))
            assert logout.status_code == 200
            assert (await _refresh(on_worker, second["refresh_token"]))[0] == 401
