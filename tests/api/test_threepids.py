"""Third-party identifiers over real HTTP: none listed, none taken."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _client import Client, OneServer

from ranvier.testing.homeserver import open_test_homeserver

Env = OneServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        yield Env(hs, Client(hs, http), alice, bob)


async def test_a_user_has_no_third_party_identifiers(env: Env) -> None:
    c, alice = env.client, env.alice
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}
    await c.refused(None, "GET", "/account/3pid", status=401, errcode="M_MISSING_TOKEN")
    capabilities = (await c.ok(alice, "GET", "/capabilities"))["capabilities"]
    assert capabilities["m.3pid_changes"] == {"enabled": False}


@pytest.mark.parametrize(
    "path",
    [
        f"/{base}/{medium}/requestToken"
        for base in ("register", "account/3pid", "account/password")
        for medium in ("email", "msisdn")
    ],
)
async def test_no_validation_token_is_sent(env: Env, path: str) -> None:
    c, alice = env.client, env.alice
    body = {"client_secret": "secret", "email": "alice@example.org", "send_attempt": 1}
    await c.refused(alice, "POST", path, body, status=403, errcode="M_THREEPID_DENIED")
    # Nothing was taken: the user still has no identifiers.
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}
