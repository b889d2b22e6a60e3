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
        for base in ("register", "account/password")
        for medium in ("email", "msisdn")
    ],
)
async def test_no_validation_token_is_sent(env: Env, path: str) -> None:
    c, alice = env.client, env.alice
    body = {"client_secret": "secret", "email": "alice@example.org", "send_attempt": 1}
    await c.refused(alice, "POST", path, body, status=403, errcode="M_THREEPID_DENIED")
    # Nothing was taken: the user still has no identifiers.
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}


@pytest.mark.parametrize("medium", ["email", "msisdn"])
async def test_no_token_to_add_an_identifier_the_medium_is_not_supported(
    env: Env, medium: str
) -> None:
    """Spec v1.13 (MSC4178): a server that adds no identifiers of a medium
    says so with 400 M_THREEPID_MEDIUM_NOT_SUPPORTED."""
    c, alice = env.client, env.alice
    body = {"client_secret": "secret", "send_attempt": 1}
    body |= {"email": "alice@example.org"} if medium == "email" else {"phone_number": "555"}
    await c.refused(
        alice,
        "POST",
        f"/account/3pid/{medium}/requestToken",
        body,
        status=400,
        errcode="M_THREEPID_MEDIUM_NOT_SUPPORTED",
    )
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/account/3pid/add", {"client_secret": "s3cret", "sid": "1"}),
        (
            "/account/3pid/bind",
            {"client_secret": "s3cret", "sid": "1", "id_server": "id.org", "id_access_token": "t"},
        ),
    ],
)
async def test_no_identifier_is_added_or_bound(env: Env, path: str, body: dict[str, str]) -> None:
    c, alice = env.client, env.alice
    await c.refused(alice, "POST", path, body, status=403, errcode="M_THREEPID_DENIED")
    await c.refused(None, "POST", path, body, status=401, errcode="M_MISSING_TOKEN")
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}


@pytest.mark.parametrize("path", ["/account/3pid/delete", "/account/3pid/unbind"])
async def test_deleting_or_unbinding_an_identifier_has_no_identity_server_to_tell(
    env: Env, path: str
) -> None:
    c, alice = env.client, env.alice
    for body in (
        {"medium": "email", "address": "alice@example.org"},
        {"medium": "msisdn", "address": "447700900000", "id_server": "id.org"},
    ):
        assert await c.ok(alice, "POST", path, body) == {"id_server_unbind_result": "no-support"}
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}
    await c.refused(
        None,
        "POST",
        path,
        {"medium": "email", "address": "a@b"},
        status=401,
        errcode="M_MISSING_TOKEN",
    )
    for bad, errcode in (
        ({"address": "a@b"}, "M_MISSING_PARAM"),
        ({"medium": "email"}, "M_MISSING_PARAM"),
        ({"medium": "pigeon", "address": "a@b"}, "M_INVALID_PARAM"),
        ({"medium": "email", "address": 7}, "M_BAD_JSON"),
        ({"medium": "email", "address": "a@b", "id_server": 1}, "M_BAD_JSON"),
    ):
        await c.refused(alice, "POST", path, bad, status=400, errcode=errcode)
    await c.refused(alice, "POST", path, raw=b"[]", status=400, errcode="M_NOT_JSON")
