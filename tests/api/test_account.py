"""Registration, login, logout and whoami: through the ASGI app over a real
database, and once through a started homeserver over real HTTP.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import argon2
import httpx
import pytest
import trio
from _accounts import app_client, client_only_config, start_accounts

from ranvier.api.account import add_account_routes
from ranvier.api.auth import Auth
from ranvier.core.accounts import Accounts
from ranvier.server import open_homeserver
from ranvier.web import Router

SERVER = "example.org"
V3 = "/_matrix/client/v3"
ALICE = "@alice:example.org"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ranvier.db"


@pytest.fixture
async def accounts(db_path: Path, nursery: trio.Nursery) -> Accounts:
    return await start_accounts(db_path, nursery)


def _client(accounts: Accounts, *, registration_enabled: bool = True) -> httpx.AsyncClient:
    router = Router()
    add_account_routes(
        router,
        accounts=accounts,
        auth=Auth(accounts),
        registration_enabled=registration_enabled,
    )
    return app_client(router)


def _tables(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db_path)
    try:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("users", "devices", "access_tokens")
        }
    finally:
        conn.close()


def _empty(db_path: Path) -> bool:
    return all(not rows for rows in _tables(db_path).values())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _register(
    client: httpx.AsyncClient, username: str = "alice", password: str = "pw", **extra: Any
) -> httpx.Response:
    body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}}
    body.update(extra)
    return await client.post(f"{V3}/register", json=body)


# Registration.


async def test_registration_asks_for_the_dummy_stage_then_registers(
    accounts: Accounts, db_path: Path
) -> None:
    async with _client(accounts) as client:
        first = await client.post(f"{V3}/register", json={"username": "alice", "password": "pw"})
        assert first.status_code == 401
        challenge = first.json()
        assert challenge["flows"] == [{"stages": ["m.login.dummy"]}]
        assert challenge["params"] == {}
        assert isinstance(challenge["session"], str)
        assert challenge["session"]
        assert _empty(db_path)

        # The session is kept while the client has not finished.
        status = await client.post(
            f"{V3}/register", json={"username": "alice", "auth": {"session": challenge["session"]}}
        )
        assert status.status_code == 401
        assert status.json()["session"] == challenge["session"]

        done = await client.post(
            f"{V3}/register",
            json={
                "username": "alice",
                "password": "pw",
                "device_id": "PHONE",
                "initial_device_display_name": "my phone",
                "auth": {"type": "m.login.dummy", "session": challenge["session"]},
            },
        )
        assert done.status_code == 200
        answer = done.json()
        assert answer["user_id"] == ALICE
        assert answer["device_id"] == "PHONE"
        assert answer["home_server"] == SERVER
        whoami = await client.get(f"{V3}/account/whoami", headers=_bearer(answer["access_token"]))
    assert whoami.status_code == 200
    assert whoami.json() == {"user_id": ALICE, "device_id": "PHONE", "is_guest": False}
    assert [row[:3] for row in _tables(db_path)["devices"]] == [(ALICE, "PHONE", "my phone")]


async def test_a_username_is_made_lower_case_and_one_is_generated_if_missing(
    accounts: Accounts,
) -> None:
    async with _client(accounts) as client:
        upper = await _register(client, "Alice")
        generated = await client.post(f"{V3}/register", json={"auth": {"type": "m.login.dummy"}})
    assert upper.json()["user_id"] == ALICE
    assert generated.status_code == 200
    user_id = generated.json()["user_id"]
    assert user_id.startswith("@")
    assert user_id.endswith(f":{SERVER}")
    assert user_id != ALICE


async def test_inhibit_login_makes_the_account_only(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts) as client:
        response = await _register(client, inhibit_login=True)
    assert response.status_code == 200
    assert response.json() == {"user_id": ALICE, "home_server": SERVER}
    tables = _tables(db_path)
    assert len(tables["users"]) == 1
    assert tables["devices"] == tables["access_tokens"] == []


async def test_closed_registration_is_forbidden(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts, registration_enabled=False) as client:
        register = await _register(client)
        without_auth = await client.post(f"{V3}/register", json={"username": "alice"})
        available = await client.get(f"{V3}/register/available", params={"username": "alice"})
    for response in (register, without_auth, available):
        assert response.status_code == 403
        assert response.json()["errcode"] == "M_FORBIDDEN"
    assert _empty(db_path)


async def test_guest_accounts_are_refused(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts) as client:
        guest = await client.post(f"{V3}/register", params={"kind": "guest"}, json={})
        other = await client.post(f"{V3}/register", params={"kind": "robot"}, json={})
    assert (guest.status_code, guest.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    assert (other.status_code, other.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert _empty(db_path)


async def test_a_taken_name_is_refused_before_authentication(
    accounts: Accounts, db_path: Path
) -> None:
    async with _client(accounts) as client:
        assert (await _register(client)).status_code == 200
        before = _tables(db_path)
        again = await _register(client, password="other")
        unauthenticated = await client.post(f"{V3}/register", json={"username": "ALICE"})
    for response in (again, unauthenticated):
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_USER_IN_USE"
    assert _tables(db_path) == before


@pytest.mark.parametrize("username", ["al ice", "al:ice", "\u00e9l\u00e8ve", "a" * 250, ""])
async def test_an_invalid_username_is_refused(
    accounts: Accounts, db_path: Path, username: str
) -> None:
    async with _client(accounts) as client:
        response = await _register(client, username)
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INVALID_USERNAME"
    assert _empty(db_path)


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"username": 1}, "M_BAD_JSON"),
        ({"username": "alice", "password": 1}, "M_BAD_JSON"),
        ({"username": "alice", "device_id": 5}, "M_BAD_JSON"),
        ({"username": "alice", "initial_device_display_name": ["x"]}, "M_BAD_JSON"),
        ({"username": "alice", "inhibit_login": "yes"}, "M_BAD_JSON"),
        ({"username": "alice", "auth": "m.login.dummy"}, "M_BAD_JSON"),
        ({"username": "alice", "auth": {"type": 1}}, "M_BAD_JSON"),
        ({"username": "alice", "auth": {"type": "m.login.password"}}, "M_UNRECOGNIZED"),
        (
            {"username": "alice", "password": "", "auth": {"type": "m.login.dummy"}},
            "M_WEAK_PASSWORD",
        ),
        ([], "M_NOT_JSON"),
        ("alice", "M_NOT_JSON"),
    ],
)
async def test_malformed_registrations_are_refused(
    accounts: Accounts, db_path: Path, body: Any, errcode: str
) -> None:
    async with _client(accounts) as client:
        response = await client.post(f"{V3}/register", json=body)
    assert response.status_code == 400
    assert response.json()["errcode"] == errcode
    assert _empty(db_path)


async def test_a_body_that_is_not_json_is_refused(accounts: Accounts, db_path: Path) -> None:
    async with _client(accounts) as client:
        broken = await client.post(f"{V3}/register", content=b"{username")
        missing = await client.post(f"{V3}/register")
    for response in (broken, missing):
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_NOT_JSON"
    assert _empty(db_path)


async def test_username_availability(accounts: Accounts) -> None:
    async with _client(accounts) as client:
        await _register(client)
        free = await client.get(f"{V3}/register/available", params={"username": "bob"})
        taken = await client.get(f"{V3}/register/available", params={"username": "Alice"})
        invalid = await client.get(f"{V3}/register/available", params={"username": "a b"})
        missing = await client.get(f"{V3}/register/available")
    assert (free.status_code, free.json()) == (200, {"available": True})
    assert (taken.status_code, taken.json()["errcode"]) == (400, "M_USER_IN_USE")
    assert (invalid.status_code, invalid.json()["errcode"]) == (400, "M_INVALID_USERNAME")
    assert (missing.status_code, missing.json()["errcode"]) == (400, "M_MISSING_PARAM")


# Login.


async def test_login_flows(accounts: Accounts) -> None:
    async with _client(accounts) as client:
        response = await client.get(f"{V3}/login")
    assert response.status_code == 200
    assert response.json() == {"flows": [{"type": "m.login.password"}]}


async def test_password_login_by_identifier_or_deprecated_user(
    accounts: Accounts, db_path: Path
) -> None:
    async with _client(accounts) as client:
        await _register(client, inhibit_login=True)
        bodies: list[dict[str, Any]] = [
            {"identifier": {"type": "m.id.user", "user": "alice"}},
            {"identifier": {"type": "m.id.user", "user": ALICE}},
            {"user": "ALICE"},
        ]
        tokens = []
        for body in bodies:
            response = await client.post(
                f"{V3}/login", json={"type": "m.login.password", "password": "pw", **body}
            )
            assert response.status_code == 200
            answer = response.json()
            assert answer["user_id"] == ALICE
            assert answer["home_server"] == SERVER
            whoami = await client.get(
                f"{V3}/account/whoami", headers=_bearer(answer["access_token"])
            )
            assert whoami.json()["device_id"] == answer["device_id"]
            tokens.append(answer["access_token"])
    assert len(set(tokens)) == 3
    assert len(_tables(db_path)["devices"]) == 3


async def test_logging_in_with_a_known_device_id_replaces_its_token(
    accounts: Accounts, db_path: Path
) -> None:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw",
        "device_id": "LAPTOP",
    }
    async with _client(accounts) as client:
        first = (await _register(client, device_id="LAPTOP")).json()
        second = (await client.post(f"{V3}/login", json=body)).json()
        old = await client.get(f"{V3}/account/whoami", headers=_bearer(first["access_token"]))
        new = await client.get(f"{V3}/account/whoami", headers=_bearer(second["access_token"]))
    assert second["device_id"] == "LAPTOP"
    assert old.json()["errcode"] == "M_UNKNOWN_TOKEN"
    assert new.json()["device_id"] == "LAPTOP"
    assert len(_tables(db_path)["access_tokens"]) == 1


async def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(
    accounts: Accounts, db_path: Path
) -> None:
    async with _client(accounts) as client:
        await _register(client, inhibit_login=True)
        before = _tables(db_path)
        answers = []
        for user, password in [("alice", "wrong"), ("bob", "pw"), ("@alice:other.org", "pw")]:
            response = await client.post(
                f"{V3}/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user},
                    "password": password,
                },
            )
            assert response.status_code == 403
            answers.append(response.json())
    assert answers[0]["errcode"] == "M_FORBIDDEN"
    assert answers[0] == answers[1] == answers[2]
    assert _tables(db_path) == before


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"type": "m.login.token", "token": "x"}, "M_UNKNOWN"),
        ({"identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}, "M_BAD_JSON"),
        ({"type": 1, "user": "alice", "password": "pw"}, "M_BAD_JSON"),
        ({"type": "m.login.password", "password": "pw"}, "M_BAD_JSON"),
        ({"type": "m.login.password", "user": "alice"}, "M_BAD_JSON"),
        ({"type": "m.login.password", "user": "alice", "password": 1}, "M_BAD_JSON"),
        ({"type": "m.login.password", "user": 1, "password": "pw"}, "M_BAD_JSON"),
        ({"type": "m.login.password", "identifier": "alice", "password": "pw"}, "M_BAD_JSON"),
        (
            {"type": "m.login.password", "identifier": {"type": "m.id.user"}, "password": "pw"},
            "M_BAD_JSON",
        ),
        (
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b"},
                "password": "pw",
            },
            "M_UNKNOWN",
        ),
        (
            {"type": "m.login.password", "user": "alice", "password": "pw", "device_id": 1},
            "M_BAD_JSON",
        ),
        ([], "M_NOT_JSON"),
    ],
)
async def test_malformed_logins_are_refused(
    accounts: Accounts, db_path: Path, body: Any, errcode: str
) -> None:
    async with _client(accounts) as client:
        await _register(client, inhibit_login=True)
        before = _tables(db_path)
        response = await client.post(f"{V3}/login", json=body)
    assert response.status_code == 400
    assert response.json()["errcode"] == errcode
    assert _tables(db_path) == before


# Logout.


async def test_logout_ends_the_session_and_removes_the_device(
    accounts: Accounts, db_path: Path
) -> None:
    async with _client(accounts) as client:
        token = (await _register(client, device_id="PHONE")).json()["access_token"]
        login = await client.post(
            f"{V3}/login", json={"type": "m.login.password", "user": "alice", "password": "pw"}
        )
        other = login.json()["access_token"]
        out = await client.post(f"{V3}/logout", headers=_bearer(token), json={})
        again = await client.post(f"{V3}/logout", headers=_bearer(token), json={})
        missing = await client.post(f"{V3}/logout", json={})
        still = await client.get(f"{V3}/account/whoami", headers=_bearer(other))
    assert (out.status_code, out.json()) == (200, {})
    assert (again.status_code, again.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert (missing.status_code, missing.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    assert still.status_code == 200
    assert [row[1] for row in _tables(db_path)["devices"]] == [login.json()["device_id"]]


async def test_logout_all_ends_every_session(accounts: Accounts, db_path: Path) -> None:
    login = {"type": "m.login.password", "user": "alice", "password": "pw"}
    async with _client(accounts) as client:
        tokens = [(await _register(client)).json()["access_token"]]
        for _ in range(2):
            tokens.append((await client.post(f"{V3}/login", json=login)).json()["access_token"])
        bob = (await _register(client, "bob")).json()["access_token"]
        out = await client.post(f"{V3}/logout/all", headers=_bearer(tokens[1]))
        after = [
            (await client.get(f"{V3}/account/whoami", headers=_bearer(token))).status_code
            for token in tokens
        ]
        bob_after = await client.get(f"{V3}/account/whoami", headers=_bearer(bob))
    assert (out.status_code, out.json()) == (200, {})
    assert after == [401, 401, 401]
    assert bob_after.status_code == 200
    assert [row[0] for row in _tables(db_path)["devices"]] == ["@bob:example.org"]


async def test_the_r0_paths_answer_too(accounts: Accounts) -> None:
    async with _client(accounts) as client:
        registered = await client.post(
            "/_matrix/client/r0/register",
            json={"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}},
        )
        token = registered.json()["access_token"]
        whoami = await client.get("/_matrix/client/r0/account/whoami", headers=_bearer(token))
    assert whoami.json()["user_id"] == ALICE


async def test_whoami_needs_a_valid_token(accounts: Accounts) -> None:
    async with _client(accounts) as client:
        missing = await client.get(f"{V3}/account/whoami")
        unknown = await client.get(f"{V3}/account/whoami", headers=_bearer("rvt_nobody"))
    assert (missing.status_code, missing.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    assert (unknown.status_code, unknown.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")


# Through a started homeserver.


async def test_register_login_whoami_logout_over_http(tmp_path: Path) -> None:
    config = client_only_config(tmp_path / "data", enabled=True)
    async with open_homeserver(config) as server:
        (listener,) = server.listeners
        async with httpx.AsyncClient(base_url=listener.url, timeout=30) as client:
            challenge = await client.post(f"{V3}/register", json={"username": "carol"})
            assert challenge.status_code == 401
            registered = await client.post(
                f"{V3}/register",
                json={
                    "username": "carol",
                    "password": "a long passphrase",
                    "inhibit_login": True,
                    "auth": {"type": "m.login.dummy", "session": challenge.json()["session"]},
                },
            )
            assert registered.json() == {"user_id": "@carol:hs.test", "home_server": "hs.test"}
            login = await client.post(
                f"{V3}/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "carol"},
                    "password": "a long passphrase",
                },
            )
            assert login.status_code == 200
            token = login.json()["access_token"]
            assert token.startswith("rvt_")
            whoami = await client.get(f"{V3}/account/whoami", headers=_bearer(token))
            assert whoami.json() == {
                "user_id": "@carol:hs.test",
                "device_id": login.json()["device_id"],
                "is_guest": False,
            }
            assert (await client.post(f"{V3}/logout", headers=_bearer(token))).status_code == 200
            after = await client.get(f"{V3}/account/whoami", headers=_bearer(token))
            assert after.json()["errcode"] == "M_UNKNOWN_TOKEN"
            assert server.accounts.server_name == "hs.test"
    # The password is stored with the server's real argon2id parameters.
    conn = sqlite3.connect(tmp_path / "data" / "homeserver.db")
    try:
        ((password_hash,),) = conn.execute("SELECT password_hash FROM users").fetchall()
    finally:
        conn.close()
    assert password_hash.startswith("$argon2id$")
    assert not argon2.PasswordHasher().check_needs_rehash(password_hash)


async def test_a_started_server_keeps_registration_closed_by_default(tmp_path: Path) -> None:
    async with open_homeserver(client_only_config(tmp_path / "data")) as server:
        (listener,) = server.listeners
        async with httpx.AsyncClient(base_url=listener.url, timeout=30) as client:
            response = await client.post(f"{V3}/register", json={"username": "carol"})
            admin = await client.get("/_synapse/admin/v1/register")
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert (admin.status_code, admin.json()["errcode"]) == (404, "M_UNRECOGNIZED")
