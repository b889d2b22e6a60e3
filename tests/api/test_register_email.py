"""Registering with a validated e-mail address, over real HTTP with a
stand-in SMTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from _client import Client
from _email import mailing_homeserver, open_link, read_mail

from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.testing.smtp import FakeSmtpServer

ADDRESS = "carol@example.org"
PASSWORD = "correct horse"


@dataclass
class Env:
    hs: TestHomeserver
    smtp: FakeSmtpServer
    client: Client
    http: httpx.AsyncClient

    async def request(self, email: str = ADDRESS, secret: str = "s3cret") -> str:
        body = {"client_secret": secret, "email": email, "send_attempt": 1}
        answer = await self.client.ok(None, "POST", "/register/email/requestToken", body)
        return str(answer["sid"])

    async def register(
        self, sid: str, secret: str = "s3cret", username: str = "carol"
    ) -> tuple[int, Any]:
        body = {
            "username": username,
            "password": PASSWORD,
            "auth": {
                "type": "m.login.email.identity",
                "threepid_creds": {"sid": sid, "client_secret": secret},
            },
        }
        return await self.client.call(None, "POST", "/register", body)


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Env]:
    async with (
        mailing_homeserver(tmp_path, nursery) as (hs, smtp),
        hs.client(timeout=30) as http,
    ):
        yield Env(hs, smtp, Client(hs, http), http)


async def test_registering_with_an_address(env: Env) -> None:
    c = env.client
    status, answer = await c.call(None, "POST", "/register", {"username": "carol"})
    assert status == 401
    assert answer["flows"] == [
        {"stages": ["m.login.dummy"]},
        {"stages": ["m.login.email.identity"]},
    ]
    sid = await env.request("Carol@Example.org")
    mail = await env.smtp.next()
    assert mail.recipients == [ADDRESS]
    assert mail.message["Subject"] == "[Example Chat] Confirm your e-mail address"
    mailed = read_mail(mail)
    # Not before the link is opened: no account is made.
    status, answer = await env.register(sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    assert await c.ok(None, "GET", "/register/available", params={"username": "carol"}) == {
        "available": True
    }
    assert (await open_link(env.http, mailed)).status_code == 200
    status, registered = await env.register(sid)
    assert status == 200, registered
    assert registered["user_id"] == "@carol:localhost"
    token = registered["access_token"]
    listed = await c.ok(None, "GET", "/account/3pid", token=token)
    assert [(t["medium"], t["address"]) for t in listed["threepids"]] == [("email", ADDRESS)]
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": ADDRESS},
        "password": PASSWORD,
    }
    assert (await c.ok(None, "POST", "/login", login))["user_id"] == "@carol:localhost"
    # The session is used up, and the address taken.
    status, answer = await env.register(sid, username="carol2")
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    body = {"client_secret": "again", "email": ADDRESS, "send_attempt": 1}
    await c.refused(
        None,
        "POST",
        "/register/email/requestToken",
        body,
        status=400,
        errcode="M_THREEPID_IN_USE",
    )
    assert env.smtp.received == []


async def test_a_taken_username_keeps_the_session(env: Env) -> None:
    await env.hs.register_user("carol")
    sid = await env.request()
    await open_link(env.http, read_mail(await env.smtp.next()))
    status, answer = await env.register(sid)
    assert (status, answer["errcode"]) == (400, "M_USER_IN_USE")
    status, answer = await env.register(sid, username="carol.b")
    assert status == 200, answer
    assert answer["user_id"] == "@carol.b:localhost"


async def test_two_sessions_for_one_address_register_once(env: Env) -> None:
    sids = []
    for secret in ("one", "two"):
        sids.append(await env.request(secret=secret))
        await open_link(env.http, read_mail(await env.smtp.next()))
    assert (await env.register(sids[0], "one"))[0] == 200
    status, answer = await env.register(sids[1], "two", username="other")
    assert (status, answer["errcode"]) == (400, "M_THREEPID_IN_USE")
    assert await env.client.ok(
        None, "GET", "/register/available", params={"username": "other"}
    ) == {"available": True}


@pytest.mark.parametrize("requires_token", [False, True])
async def test_not_offered_when_registration_is_closed_or_takes_a_token(
    tmp_path: Path, nursery: trio.Nursery, requires_token: bool
) -> None:
    async with mailing_homeserver(tmp_path, nursery) as (open_hs, smtp):
        config = open_hs.server.config
    registration = msgspec.structs.replace(
        config.registration, enabled=requires_token, requires_token=requires_token
    )
    async with (
        open_test_homeserver(
            tmp_path / "hs",
            config=msgspec.structs.replace(config, registration=registration),
        ) as hs,
        hs.client(timeout=30) as http,
    ):
        c = Client(hs, http)
        body = {"client_secret": "s3cret", "email": ADDRESS, "send_attempt": 1}
        await c.refused(
            None,
            "POST",
            "/register/email/requestToken",
            body,
            status=403,
            errcode="M_THREEPID_DENIED",
        )
        # The other addresses are still served.
        body = {"client_secret": "s3cret", "email": ADDRESS, "send_attempt": 1}
        await c.refused(
            None,
            "POST",
            "/account/password/email/requestToken",
            body,
            status=400,
            errcode="M_THREEPID_NOT_FOUND",
        )
    assert smtp.received == []
