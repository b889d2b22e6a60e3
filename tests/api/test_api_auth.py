"""Access tokens on client requests, over real accounts in a real database."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _accounts import app_client, start_accounts

from ranvier.api.auth import Auth
from ranvier.core.accounts import Accounts
from ranvier.web import Request, Router

PATH = "/_matrix/client/v3/me"


@pytest.fixture
async def accounts(tmp_path: Path, nursery: trio.Nursery) -> Accounts:
    return await start_accounts(tmp_path / "ranvier.db", nursery)


def _client(accounts: Accounts) -> httpx.AsyncClient:
    auth = Auth(accounts)
    router = Router()

    async def me(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return {
            "user_id": requester.user_id,
            "device_id": requester.device_id,
            "admin": requester.is_admin,
        }

    router.add("GET", PATH, me)
    return app_client(router)


async def _token(accounts: Accounts, *, admin: bool = False) -> str:
    registration = await accounts.register("alice", "pw", admin=admin, device_id="DEV")
    assert registration.access_token is not None
    return registration.access_token


async def test_a_bearer_token_names_the_user_and_device(accounts: Accounts) -> None:
    token = await _token(accounts, admin=True)
    async with _client(accounts) as client:
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = await client.get(PATH, headers={"Authorization": f"{scheme} {token}"})
            assert response.status_code == 200
            assert response.json() == {
                "user_id": "@alice:example.org",
                "device_id": "DEV",
                "admin": True,
            }


async def test_the_deprecated_query_parameter_is_accepted(accounts: Accounts) -> None:
    token = await _token(accounts)
    async with _client(accounts) as client:
        response = await client.get(PATH, params={"access_token": token})
    assert response.status_code == 200
    assert response.json()["user_id"] == "@alice:example.org"


async def test_the_header_wins_over_the_query_parameter(accounts: Accounts) -> None:
    token = await _token(accounts)
    async with _client(accounts) as client:
        response = await client.get(
            PATH, params={"access_token": token}, headers={"Authorization": "Bearer nope"}
        )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Basic YWxpY2U6cHc="}, {}),
        ({"Authorization": "Bearer "}, {}),
        ({}, {"access_token": ""}),
    ],
)
async def test_no_token_is_missing_token(
    accounts: Accounts, headers: dict[str, str], params: dict[str, str]
) -> None:
    await _token(accounts)
    async with _client(accounts) as client:
        response = await client.get(PATH, headers=headers, params=params)
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_MISSING_TOKEN"
    assert "soft_logout" not in response.json()


async def test_an_unknown_or_logged_out_token_is_unknown_token(accounts: Accounts) -> None:
    token = await _token(accounts)
    async with _client(accounts) as client:
        unknown = await client.get(PATH, headers={"Authorization": "Bearer rvt_madeup"})
        assert (await client.get(PATH, headers={"Authorization": f"Bearer {token}"})).is_success
        requester = await accounts.get_requester(token)
        assert requester is not None
        await accounts.logout(requester)
        logged_out = await client.get(PATH, headers={"Authorization": f"Bearer {token}"})
    for response in (unknown, logged_out):
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"
        assert response.json()["soft_logout"] is False
