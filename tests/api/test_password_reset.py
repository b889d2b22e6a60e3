"""Resetting a forgotten password by mail, and logging in with an e-mail
address, over real HTTP with a stand-in SMTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _client import Client
from _email import mailing_homeserver, open_link, read_mail

from ranvier.testing.homeserver import TestHomeserver, TestUser
from ranvier.testing.smtp import FakeSmtpServer

PASSWORD = "correct horse"
NEW_PASSWORD = "battery staple"
ALICE_MAIL = "alice@example.org"


@dataclass
class Env:
    hs: TestHomeserver
    smtp: FakeSmtpServer
    client: Client
    http: httpx.AsyncClient
    alice: TestUser

    async def login(self, identifier: dict[str, str], password: str) -> tuple[int, Any]:
        body = {"type": "m.login.password", "identifier": identifier, "password": password}
        return await self.client.call(None, "POST", "/login", body)

    async def request_reset(self, email: str = ALICE_MAIL, secret: str = "s3cret") -> str:
        body = {"client_secret": secret, "email": email, "send_attempt": 1}
        answer = await self.client.ok(None, "POST", "/account/password/email/requestToken", body)
        return str(answer["sid"])

    async def reset(self, sid: str, secret: str = "s3cret", **extra: Any) -> tuple[int, Any]:
        body = {
            "new_password": NEW_PASSWORD,
            "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": {"sid": sid, "client_secret": secret},
            },
            **extra,
        }
        return await self.client.call(None, "POST", "/account/password", body)


def _user(name: str) -> dict[str, str]:
    return {"type": "m.id.user", "user": name}


def _email(address: str) -> dict[str, str]:
    return {"type": "m.id.thirdparty", "medium": "email", "address": address}


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Env]:
    async with (
        mailing_homeserver(tmp_path, nursery) as (hs, smtp),
        hs.client(timeout=30) as http,
    ):
        alice = await hs.register_user("alice", PASSWORD)
        c = Client(hs, http)
        body = {"client_secret": "adding", "email": ALICE_MAIL, "send_attempt": 1}
        sid = (await c.ok(None, "POST", "/account/3pid/email/requestToken", body))["sid"]
        page = await open_link(http, read_mail(await smtp.next()))
        assert page.status_code == 200
        auth = {"type": "m.login.password", "password": PASSWORD, "user": "alice"}
        body = {"sid": sid, "client_secret": "adding", "auth": auth}
        await c.ok(alice, "POST", "/account/3pid/add", body)
        yield Env(hs, smtp, c, http, alice)


async def test_a_password_reset_end_to_end(env: Env) -> None:
    c = env.client
    status, other_device = await env.login(_user("alice"), PASSWORD)
    assert status == 200
    sid = await env.request_reset("Alice@EXAMPLE.org")
    mail = await env.smtp.next()
    assert mail.recipients == [ALICE_MAIL]
    assert mail.message["Subject"] == "[Example Chat] Reset your password"
    mailed = read_mail(mail)
    assert mailed.sid == sid
    # Without auth the client learns the flow.
    status, answer = await c.call(None, "POST", "/account/password", {"new_password": "x"})
    assert status == 401
    assert answer["flows"] == [{"stages": ["m.login.email.identity"]}]
    assert isinstance(answer["session"], str)
    # Not before the mail's link is opened.
    status, answer = await env.reset(sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    assert (await env.login(_user("alice"), PASSWORD))[0] == 200
    page = await open_link(env.http, mailed)
    assert page.status_code == 200
    # The wrong secret is no proof.
    status, answer = await env.reset(sid, "wrong")
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    assert await env.reset(sid) == (200, {})
    # The old password is gone, the new one works; every device was logged out.
    status, answer = await env.login(_user("alice"), PASSWORD)
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    assert (await env.login(_user("alice"), NEW_PASSWORD))[0] == 200
    for token in (env.alice.access_token, other_device["access_token"]):
        await c.refused(
            None, "GET", "/account/whoami", token=token, status=401, errcode="M_UNKNOWN_TOKEN"
        )
    # The session is used up.
    status, answer = await env.reset(sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")


async def test_a_reset_may_keep_the_devices(env: Env) -> None:
    sid = await env.request_reset()
    await open_link(env.http, read_mail(await env.smtp.next()))
    assert await env.reset(sid, logout_devices=False) == (200, {})
    whoami = await env.client.ok(env.alice, "GET", "/account/whoami")
    assert whoami["user_id"] == env.alice.user_id
    assert (await env.login(_user("alice"), NEW_PASSWORD))[0] == 200


async def test_an_unknown_address_is_refused(env: Env) -> None:
    body = {"client_secret": "s3cret", "email": "nobody@example.org", "send_attempt": 1}
    await env.client.refused(
        None,
        "POST",
        "/account/password/email/requestToken",
        body,
        status=400,
        errcode="M_THREEPID_NOT_FOUND",
    )
    assert env.smtp.received == []


async def test_a_session_for_adding_resets_nothing_once_used(env: Env) -> None:
    """The session that added the address was used up by the add."""
    status, answer = await env.reset("no-such-sid", "adding")
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    assert (await env.login(_user("alice"), PASSWORD))[0] == 200


@pytest.mark.parametrize(
    ("auth", "errcode"),
    [
        ({"type": "m.login.password", "password": PASSWORD}, "M_UNRECOGNIZED"),
        ({"type": "m.login.email.identity"}, "M_BAD_JSON"),
        ({"type": "m.login.email.identity", "threepid_creds": {"sid": "x"}}, "M_MISSING_PARAM"),
        ({"type": "m.login.email.identity", "threepid_creds": {"sid": 1}}, "M_BAD_JSON"),
    ],
)
async def test_bad_reset_requests(env: Env, auth: dict[str, Any], errcode: str) -> None:
    body = {"new_password": NEW_PASSWORD, "auth": auth}
    await env.client.refused(None, "POST", "/account/password", body, status=400, errcode=errcode)
    await env.client.refused(
        None,
        "POST",
        "/account/password",
        {"auth": auth},
        status=400,
        errcode="M_MISSING_PARAM",
    )


async def test_a_weak_password_uses_nothing_up(env: Env) -> None:
    sid = await env.request_reset()
    await open_link(env.http, read_mail(await env.smtp.next()))
    status, answer = await env.client.call(
        None,
        "POST",
        "/account/password",
        {
            "new_password": "",
            "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": {"sid": sid, "client_secret": "s3cret"},
            },
        },
    )
    assert (status, answer["errcode"]) == (400, "M_WEAK_PASSWORD")
    assert await env.reset(sid) == (200, {})


async def test_logged_in_password_change_is_unchanged(env: Env) -> None:
    body = {"new_password": NEW_PASSWORD}
    status, answer = await env.client.call(env.alice, "POST", "/account/password", body)
    assert status == 401
    assert answer["flows"] == [{"stages": ["m.login.password"]}]


async def test_login_with_an_email_address(env: Env) -> None:
    status, answer = await env.login(_email("ALICE@example.org"), PASSWORD)
    assert status == 200
    assert answer["user_id"] == env.alice.user_id
    whoami = await env.client.ok(None, "GET", "/account/whoami", token=answer["access_token"])
    assert whoami["user_id"] == env.alice.user_id
    for identifier, password in (
        (_email(ALICE_MAIL), "wrong"),
        (_email("nobody@example.org"), PASSWORD),
    ):
        status, answer = await env.login(identifier, password)
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    bad = {"type": "m.id.thirdparty", "medium": "msisdn", "address": "447700900000"}
    status, answer = await env.login(bad, PASSWORD)
    assert (status, answer["errcode"]) == (400, "M_UNKNOWN")
    status, answer = await env.login({"type": "m.id.thirdparty", "medium": "email"}, PASSWORD)
    assert (status, answer["errcode"]) == (400, "M_BAD_JSON")


async def test_login_with_the_deprecated_medium_and_address(env: Env) -> None:
    """The spec still lists top-level ``medium`` and ``address`` beside
    ``identifier`` for logging in by address, as it lists ``user``."""
    body = {"type": "m.login.password", "password": PASSWORD, "medium": "email"}
    status, answer = await env.client.call(
        None, "POST", "/login", {**body, "address": "Alice@Example.org"}
    )
    assert status == 200, answer
    assert answer["user_id"] == env.alice.user_id
    for extra, errcode in (
        ({"address": ALICE_MAIL, "password": "wrong"}, "M_FORBIDDEN"),
        ({"address": "nobody@example.org"}, "M_FORBIDDEN"),
        ({"medium": "msisdn", "address": "447700900000"}, "M_UNKNOWN"),
        ({"address": 5}, "M_BAD_JSON"),
        ({}, "M_BAD_JSON"),
    ):
        status, answer = await env.client.call(None, "POST", "/login", {**body, **extra})
        assert (status, answer["errcode"]) == (
            403 if errcode == "M_FORBIDDEN" else 400,
            errcode,
        ), extra
    # After deactivation the address names no account any more.
    auth = {"type": "m.login.password", "password": PASSWORD, "user": "alice"}
    await env.client.ok(env.alice, "POST", "/account/deactivate", {"auth": auth})
    for login in (
        {**body, "address": ALICE_MAIL},
        {"type": "m.login.password", "password": PASSWORD, "identifier": _email(ALICE_MAIL)},
    ):
        status, answer = await env.client.call(None, "POST", "/login", login)
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")


async def test_no_login_with_a_deleted_address(env: Env) -> None:
    body = {"medium": "email", "address": ALICE_MAIL}
    await env.client.ok(env.alice, "POST", "/account/3pid/delete", body)
    status, answer = await env.login(_email(ALICE_MAIL), PASSWORD)
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
