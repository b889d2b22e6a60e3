"""Shared-secret registration: nonces, MACs, refusals, and Synapse's own
``register_new_matrix_user`` script against a started homeserver.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _accounts import app_client, start_accounts

from ranvier.api.admin import NONCE_LIFETIME_SECONDS, REGISTER_PATH, add_admin_routes
from ranvier.core.accounts import Accounts
from ranvier.web import Router

SECRET = "a shared secret"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ranvier.db"


@pytest.fixture
async def accounts(db_path: Path, nursery: trio.Nursery) -> Accounts:
    return await start_accounts(db_path, nursery)


def _client(accounts: Accounts, secret: str | None = SECRET) -> httpx.AsyncClient:
    router = Router()
    add_admin_routes(router, accounts=accounts, shared_secret=secret)
    return app_client(router)


def _mac(nonce: str, user: str, password: str, admin: bool, secret: str = SECRET) -> str:
    # Written from Synapse's documentation of the format, independently of
    # the server's code.
    parts = [nonce, user, password, "admin" if admin else "notadmin"]
    return hmac.new(secret.encode(), "\0".join(parts).encode(), hashlib.sha1).hexdigest()


async def _nonce(client: httpx.AsyncClient) -> str:
    response = await client.get(REGISTER_PATH)
    assert response.status_code == 200
    nonce = response.json()["nonce"]
    assert isinstance(nonce, str)
    return nonce


def _body(nonce: str, user: str = "alice", password: str = "pw", admin: bool = False) -> Any:
    return {
        "nonce": nonce,
        "username": user,
        "password": password,
        "admin": admin,
        "mac": _mac(nonce, user, password, admin),
    }


def _users(db_path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT user_id, admin FROM users ORDER BY user_id").fetchall()
    finally:
        conn.close()


async def test_an_admin_is_registered_with_the_right_mac(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts) as client:
        nonce = await _nonce(client)
        response = await client.post(REGISTER_PATH, json=_body(nonce, "Root", admin=True))
        second = await client.post(REGISTER_PATH, json=_body(await _nonce(client), "user"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["user_id"] == "@root:example.org"
    assert answer["home_server"] == "example.org"
    requester = await accounts.get_requester(answer["access_token"])
    assert requester is not None
    assert requester.is_admin
    assert requester.device_id == answer["device_id"]
    assert second.status_code == 200
    assert _users(db_path) == [("@root:example.org", 1), ("@user:example.org", 0)]
    login = await accounts.login_with_password("root", "pw")
    assert login.user_id == "@root:example.org"


async def test_a_nonce_is_good_for_one_attempt(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts) as client:
        nonce = await _nonce(client)
        wrong = dict(_body(nonce), mac=_mac(nonce, "alice", "pw", False, secret="guess"))
        first = await client.post(REGISTER_PATH, json=wrong)
        # Spent by the failed attempt, even with the right MAC now.
        second = await client.post(REGISTER_PATH, json=_body(nonce))
        made_up = await client.post(REGISTER_PATH, json=_body("0" * 64))
    assert (first.status_code, first.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert (second.status_code, second.json()) == (
        400,
        {"errcode": "M_UNKNOWN", "error": "unrecognised nonce"},
    )
    assert (made_up.status_code, made_up.json()["errcode"]) == (400, "M_UNKNOWN")
    assert _users(db_path) == []


async def test_a_nonce_expires_after_a_minute(
    accounts: Accounts, db_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with _client(accounts) as client:
        late, in_time = await _nonce(client), await _nonce(client)
        mock_clock.jump(NONCE_LIFETIME_SECONDS - 1)
        accepted = await client.post(REGISTER_PATH, json=_body(in_time))
        mock_clock.jump(2)
        expired = await client.post(REGISTER_PATH, json=_body(late, "bob"))
    assert accepted.status_code == 200
    assert (expired.status_code, expired.json()["errcode"]) == (400, "M_UNKNOWN")
    assert _users(db_path) == [("@alice:example.org", 0)]


@pytest.mark.parametrize(
    ("change", "status", "errcode"),
    [
        ({"nonce": None}, 400, "M_BAD_JSON"),
        ({"nonce": 5}, 400, "M_UNKNOWN"),
        ({"username": None}, 400, "M_BAD_JSON"),
        ({"username": 5}, 400, "M_BAD_JSON"),
        ({"password": None}, 400, "M_BAD_JSON"),
        ({"password": ["pw"]}, 400, "M_BAD_JSON"),
        ({"password": "p\0w"}, 400, "M_UNKNOWN"),
        ({"admin": "yes"}, 400, "M_BAD_JSON"),
        ({"mac": None}, 400, "M_BAD_JSON"),
        ({"mac": 12}, 400, "M_BAD_JSON"),
        ({"mac": "not hex \u00e9"}, 403, "M_FORBIDDEN"),
        ({"user_type": "bot"}, 400, "M_UNKNOWN"),
        ({"admin": True}, 403, "M_FORBIDDEN"),  # the MAC says notadmin
        ({"username": "bob"}, 403, "M_FORBIDDEN"),  # the MAC names alice
    ],
)
async def test_bad_requests_are_refused_and_make_nothing(
    accounts: Accounts, db_path: Path, change: dict[str, Any], status: int, errcode: str
) -> None:
    async with _client(accounts) as client:
        body = _body(await _nonce(client))
        for key, value in change.items():
            if value is None:
                del body[key]
            else:
                body[key] = value
        response = await client.post(REGISTER_PATH, json=body)
    assert response.status_code == status
    assert response.json()["errcode"] == errcode
    assert _users(db_path) == []


async def test_taken_and_invalid_names_are_refused(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts) as client:
        assert (await client.post(REGISTER_PATH, json=_body(await _nonce(client)))).is_success
        taken = await client.post(REGISTER_PATH, json=_body(await _nonce(client), "ALICE"))
        invalid = await client.post(REGISTER_PATH, json=_body(await _nonce(client), "a b"))
        not_json = await client.post(REGISTER_PATH, json=[])
    assert (taken.status_code, taken.json()["errcode"]) == (400, "M_USER_IN_USE")
    assert (invalid.status_code, invalid.json()["errcode"]) == (400, "M_INVALID_USERNAME")
    assert (not_json.status_code, not_json.json()["errcode"]) == (400, "M_NOT_JSON")
    assert _users(db_path) == [("@alice:example.org", 0)]


async def test_without_a_secret_the_endpoint_does_not_exist(accounts: Accounts) -> None:
    async with _client(accounts, secret=None) as client:
        get = await client.get(REGISTER_PATH)
        post = await client.post(REGISTER_PATH, json={})
    for response in (get, post):
        assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED")
