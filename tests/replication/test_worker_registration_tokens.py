"""Registration with a token through a client_reader worker: tokens made
through the worker's admin API, a use taken on one process and the
registration completed on the other, each write made by the main process's
storage actor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from _worker_configs import main_and_worker_configs

from ranvier.config import RegistrationConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_V3 = "/_matrix/client/v3"
_TOKENS = "/_synapse/admin/v1/registration_tokens"
_VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
_TOKEN_STAGE = "m.login.registration_token"


async def _register(
    first: httpx.AsyncClient, second: httpx.AsyncClient, username: str, token: str
) -> tuple[int, Any]:
    """The token stage on ``first``, the dummy stage on ``second``."""
    challenge = await first.post(f"{_V3}/register", json={"username": username, "password": "pw"})
    assert challenge.status_code == 401
    session = challenge.json()["session"]
    taken = await first.post(
        f"{_V3}/register",
        json={"auth": {"type": _TOKEN_STAGE, "token": token, "session": session}},
    )
    if taken.status_code != 401 or taken.json().get("completed") != [_TOKEN_STAGE]:
        return taken.status_code, taken.json()
    done = await second.post(
        f"{_V3}/register",
        json={
            "username": username,
            "password": "pw",
            "auth": {"type": "m.login.dummy", "session": session},
        },
    )
    return done.status_code, done.json()


async def test_registration_tokens_through_a_worker(tmp_path: Path) -> None:
    registration = RegistrationConfig(
        enabled=True,
        requires_token=True,
        password_hash_time_cost=1,
        password_hash_memory_kib=8,
        password_hash_parallelism=1,
    )
    main_config, worker_config = main_and_worker_configs(tmp_path, registration=registration)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        admin = await main.register_user("admin", admin=True)
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(admin) as admin_on_worker,
            TestHomeserver(worker).client() as on_worker,
            main.client() as on_main,
        ):
            made = await admin_on_worker.post(
                f"{_TOKENS}/new", json={"token": "pair", "uses_allowed": 2}
            )
            assert made.status_code == 200, made.text
            validity = await on_worker.get(_VALIDITY, params={"token": "pair"})
            assert validity.json() == {"valid": True}

            status, answer = await _register(on_worker, on_main, "alice", "pair")
            assert (status, answer["user_id"]) == (200, "@alice:localhost")
            status, answer = await _register(on_main, on_worker, "bob", "pair")
            assert (status, answer["user_id"]) == (200, "@bob:localhost")
            status, answer = await _register(on_worker, on_worker, "carol", "pair")
            assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")

            shown = await admin_on_worker.get(f"{_TOKENS}/pair")
            assert shown.json() == {
                "token": "pair",
                "uses_allowed": 2,
                "pending": 0,
                "completed": 2,
                "expiry_time": None,
            }
            assert (await on_worker.get(_VALIDITY, params={"token": "pair"})).json() == {
                "valid": False
            }
            assert await main.server.accounts.user_exists("@alice:localhost")
            assert not await main.server.accounts.user_exists("@carol:localhost")
            deleted = await admin_on_worker.delete(f"{_TOKENS}/pair")
            assert deleted.status_code == 200
            assert (await main.server.registration_tokens.list()) == []
