"""OpenID tokens over real HTTP: asked for through the client API, checked
through the federation API's userinfo endpoint over TLS, as a widget's
server checks them."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _client import Client, q

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki

USERINFO = "/_matrix/federation/v1/openid/userinfo"


@dataclass
class Env:
    hs: TestHomeserver
    client: Client
    federation: httpx.AsyncClient
    alice: TestUser
    bob: TestUser

    async def request_token(self, user: TestUser) -> dict[str, object]:
        answer: dict[str, object] = await self.client.ok(
            user, "POST", f"/user/{q(user.user_id)}/openid/request_token", {}
        )
        return answer

    async def userinfo(self, token: str | None) -> httpx.Response:
        params = {} if token is None else {"access_token": token}
        return await self.federation.get(USERINFO, params=params)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "hs", federation=pki) as hs,
        hs.client() as http,
        httpx.AsyncClient(base_url=hs.federation_url, verify=pki.client_context()) as federation,
    ):
        alice = await hs.register_user("alice", "alices password")
        bob = await hs.register_user("bob")
        yield Env(hs, Client(hs, http), federation, alice, bob)


async def test_a_token_tells_another_server_who_the_user_is(env: Env) -> None:
    answer = await env.request_token(env.alice)
    assert answer["token_type"] == "Bearer"
    assert answer["matrix_server_name"] == env.hs.server_name
    assert answer["expires_in"] == 3600
    token = answer["access_token"]
    assert isinstance(token, str)
    response = await env.userinfo(token)
    assert (response.status_code, response.json()) == (200, {"sub": env.alice.user_id})
    # Bob's token is Bob's; each request makes a new token.
    bobs = await env.request_token(env.bob)
    assert isinstance(bobs["access_token"], str)
    assert bobs["access_token"] != token
    response = await env.userinfo(bobs["access_token"])
    assert response.json() == {"sub": env.bob.user_id}
    # Kept only as its hash.
    conn = sqlite3.connect(env.hs.server.config.paths.database)
    try:
        stored = {row[0] for row in conn.execute("SELECT token_hash FROM openid_tokens")}
    finally:
        conn.close()
    assert hashlib.sha256(token.encode()).digest() in stored
    assert token.encode() not in stored


async def test_an_openid_token_is_no_access_token_and_no_access_token_an_openid_token(
    env: Env,
) -> None:
    answer = await env.request_token(env.alice)
    token = answer["access_token"]
    assert isinstance(token, str)
    await env.client.refused(
        None, "GET", "/account/whoami", token=token, status=401, errcode="M_UNKNOWN_TOKEN"
    )
    response = await env.userinfo(env.alice.access_token)
    assert (response.status_code, response.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_unknown_missing_and_others_tokens_are_refused(env: Env) -> None:
    response = await env.userinfo("not-a-token")
    assert (response.status_code, response.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    response = await env.userinfo(None)
    assert (response.status_code, response.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    c, alice = env.client, env.alice
    path = f"/user/{q(env.bob.user_id)}/openid/request_token"
    await c.refused(alice, "POST", path, {}, status=403, errcode="M_FORBIDDEN")
    await c.refused(None, "POST", path, {}, status=401, errcode="M_MISSING_TOKEN")
    own = f"/user/{q(alice.user_id)}/openid/request_token"
    await c.refused(alice, "POST", own, raw=b"[]", status=400, errcode="M_NOT_JSON")
