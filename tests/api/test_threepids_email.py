"""E-mail addresses on accounts, over real HTTP, with the mail going to a
stand-in SMTP server over STARTTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _client import V3, Client
from _email import BASE_URL, SUBMIT_PATH, Mailed, mailing_homeserver, open_link, read_mail

from ranvier.testing.homeserver import TestHomeserver, TestUser
from ranvier.testing.smtp import FakeSmtpServer

PASSWORD = "correct horse"
ALICE_MAIL = "alice@example.org"


@dataclass
class Env:
    hs: TestHomeserver
    smtp: FakeSmtpServer
    client: Client
    http: httpx.AsyncClient
    alice: TestUser
    bob: TestUser

    async def request_add(
        self, email: str, secret: str = "s3cret", attempt: int = 1, **extra: Any
    ) -> str:
        body = {"client_secret": secret, "email": email, "send_attempt": attempt, **extra}
        answer = await self.client.ok(None, "POST", "/account/3pid/email/requestToken", body)
        assert answer["submit_url"] == BASE_URL + SUBMIT_PATH
        return str(answer["sid"])

    async def submit(self, mailed: Mailed) -> None:
        response = await self.http.post(
            SUBMIT_PATH,
            json={"sid": mailed.sid, "client_secret": mailed.client_secret, "token": mailed.token},
        )
        assert (response.status_code, response.json()) == (200, {"success": True})

    async def add(self, user: TestUser, sid: str, secret: str = "s3cret") -> Any:
        body = {
            "sid": sid,
            "client_secret": secret,
            "auth": {"type": "m.login.password", "password": PASSWORD, "user": user.user_id},
        }
        return await self.client.call(user, "POST", "/account/3pid/add", body)

    async def give_address(self, user: TestUser, email: str) -> None:
        sid = await self.request_add(email)
        mailed = read_mail(await self.smtp.next())
        assert mailed.sid == sid
        await self.submit(mailed)
        assert await self.add(user, sid) == (200, {})


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Env]:
    async with (
        mailing_homeserver(tmp_path, nursery) as (hs, smtp),
        hs.client(timeout=30) as http,
    ):
        alice = await hs.register_user("alice", PASSWORD)
        bob = await hs.register_user("bob", PASSWORD)
        yield Env(hs, smtp, Client(hs, http), http, alice, bob)


async def test_adding_an_address(env: Env) -> None:
    c, alice = env.client, env.alice
    capabilities = (await c.ok(alice, "GET", "/capabilities"))["capabilities"]
    assert capabilities["m.3pid_changes"] == {"enabled": True}
    sid = await env.request_add("Alice@Example.ORG")
    mail = await env.smtp.next()
    # Sent over STARTTLS, logged in, to the canonical address.
    assert mail.encrypted
    assert mail.user == "mailer"
    assert mail.recipients == [ALICE_MAIL]
    assert mail.sender == "noreply@example.org"
    assert mail.message["Subject"] == "[Example Chat] Confirm your e-mail address"
    mailed = read_mail(mail)
    assert mailed.sid == sid
    assert mailed.link.startswith(BASE_URL + SUBMIT_PATH + "?")
    # Before the token: the session proves nothing.
    status, answer = await env.add(alice, sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    await env.submit(mailed)
    # The password is asked for first.
    status, answer = await c.call(
        alice, "POST", "/account/3pid/add", {"sid": sid, "client_secret": "s3cret"}
    )
    assert status == 401
    assert answer["flows"] == [{"stages": ["m.login.password"]}]
    status, answer = await c.call(
        alice,
        "POST",
        "/account/3pid/add",
        {
            "sid": sid,
            "client_secret": "s3cret",
            "auth": {"type": "m.login.password", "password": "wrong", "user": alice.user_id},
        },
    )
    assert (status, answer["errcode"]) == (401, "M_FORBIDDEN")
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}
    assert await env.add(alice, sid) == (200, {})
    (listed,) = (await c.ok(alice, "GET", "/account/3pid"))["threepids"]
    assert (listed["medium"], listed["address"]) == ("email", ALICE_MAIL)
    assert listed["added_at"] >= listed["validated_at"] > 0
    assert await c.ok(env.bob, "GET", "/account/3pid") == {"threepids": []}
    # The session is used up.
    status, answer = await env.add(alice, sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")


async def test_the_link_in_the_mail_validates(env: Env) -> None:
    sid = await env.request_add(ALICE_MAIL, next_link="https://app.example.org/done")
    mailed = read_mail(await env.smtp.next())
    page = await open_link(env.http, mailed)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "Address confirmed" in page.text
    assert 'href="https://app.example.org/done"' in page.text
    assert await env.add(env.alice, sid) == (200, {})
    assert len((await env.client.ok(env.alice, "GET", "/account/3pid"))["threepids"]) == 1


async def test_an_address_in_use_is_refused(env: Env) -> None:
    await env.give_address(env.alice, ALICE_MAIL)
    body = {"client_secret": "other", "email": "ALICE@example.org", "send_attempt": 1}
    await env.client.refused(
        None,
        "POST",
        "/account/3pid/email/requestToken",
        body,
        status=400,
        errcode="M_THREEPID_IN_USE",
    )
    assert env.smtp.received == []


async def test_a_race_to_add_one_address_is_won_once(env: Env) -> None:
    sids = []
    for secret in ("one", "two"):
        sids.append(await env.request_add(ALICE_MAIL, secret))
        await env.submit(read_mail(await env.smtp.next()))
    assert await env.add(env.alice, sids[0], "one") == (200, {})
    status, answer = await env.add(env.bob, sids[1], "two")
    assert (status, answer["errcode"]) == (400, "M_THREEPID_IN_USE")
    assert await env.client.ok(env.bob, "GET", "/account/3pid") == {"threepids": []}


async def test_wrong_tokens_secrets_and_expired_sessions_add_nothing(env: Env) -> None:
    sid = await env.request_add(ALICE_MAIL)
    mailed = read_mail(await env.smtp.next())
    for body, errcode in (
        ({"sid": sid, "client_secret": "s3cret", "token": "nottheone"}, "M_TOKEN_INCORRECT"),
        ({"sid": sid, "client_secret": "wrong", "token": mailed.token}, "M_INVALID_PARAM"),
        ({"sid": "nosuch", "client_secret": "s3cret", "token": mailed.token}, "M_INVALID_PARAM"),
        ({"sid": sid, "client_secret": "s3cret"}, "M_MISSING_PARAM"),
    ):
        response = await env.http.post(SUBMIT_PATH, json=body)
        assert (response.status_code, response.json()["errcode"]) == (400, errcode)
    page = await env.http.get(SUBMIT_PATH, params={"sid": sid, "client_secret": "s3cret"})
    assert page.status_code == 400
    # The right token with the wrong secret validates nothing.
    status, answer = await env.add(env.alice, sid, "wrong")
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    status, answer = await env.add(env.alice, sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    # An hour later the token has expired.
    threepids = env.hs.server.threepids
    assert threepids is not None
    later = threepids.validation.clock_ms() + 3600 * 1000
    threepids.validation.clock_ms = lambda: later
    response = await env.http.post(
        SUBMIT_PATH, json={"sid": sid, "client_secret": "s3cret", "token": mailed.token}
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_SESSION_EXPIRED")
    page = await open_link(env.http, mailed)
    assert (page.status_code, "Not confirmed" in page.text) == (400, True)
    status, answer = await env.add(env.alice, sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    assert await env.client.ok(env.alice, "GET", "/account/3pid") == {"threepids": []}


async def test_a_validated_session_expires_too(env: Env) -> None:
    sid = await env.request_add(ALICE_MAIL)
    await env.submit(read_mail(await env.smtp.next()))
    threepids = env.hs.server.threepids
    assert threepids is not None
    later = threepids.validation.clock_ms() + 3600 * 1000
    threepids.validation.clock_ms = lambda: later
    status, answer = await env.add(env.alice, sid)
    assert (status, answer["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")


async def test_a_repeated_request_sends_no_second_mail(env: Env) -> None:
    sid = await env.request_add(ALICE_MAIL, attempt=1)
    first = read_mail(await env.smtp.next())
    assert await env.request_add(ALICE_MAIL, attempt=1) == sid
    assert await env.request_add(ALICE_MAIL, attempt=0) == sid
    assert env.smtp.received == []
    # A higher attempt mails a new token for the same session; the old one is dead.
    assert await env.request_add(ALICE_MAIL, attempt=2) == sid
    second = read_mail(await env.smtp.next())
    assert second.token != first.token
    response = await env.http.post(
        SUBMIT_PATH, json={"sid": sid, "client_secret": "s3cret", "token": first.token}
    )
    assert response.json()["errcode"] == "M_TOKEN_INCORRECT"
    await env.submit(second)
    # Another client secret is another session.
    assert await env.request_add(ALICE_MAIL, "other", attempt=1) != sid
    assert len([await env.smtp.next()]) == 1


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"client_secret": "s", "email": "not an address", "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "s", "email": "a@b@c", "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "s", "email": "<a@b.org>", "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "s p", "email": "a@b.org", "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "s", "email": "a@b.org"}, "M_MISSING_PARAM"),
        ({"email": "a@b.org", "send_attempt": 1}, "M_MISSING_PARAM"),
        ({"client_secret": "s", "send_attempt": 1}, "M_MISSING_PARAM"),
        ({"client_secret": "s", "email": "a@b.org", "send_attempt": "1"}, "M_BAD_JSON"),
        ({"client_secret": "s", "email": "a@b.org", "send_attempt": -1}, "M_INVALID_PARAM"),
        (
            {"client_secret": "s", "email": "a@b.org", "send_attempt": 1, "next_link": "x"},
            "M_INVALID_PARAM",
        ),
    ],
)
async def test_bad_requests_send_nothing(env: Env, body: dict[str, Any], errcode: str) -> None:
    for path in ("/account/3pid/email/requestToken", "/account/password/email/requestToken"):
        await env.client.refused(None, "POST", path, body, status=400, errcode=errcode)
    assert env.smtp.received == []


async def test_deleting_an_address(env: Env) -> None:
    c, alice = env.client, env.alice
    await env.give_address(alice, ALICE_MAIL)
    # Bob cannot delete Alice's address.
    body = {"medium": "email", "address": ALICE_MAIL}
    await c.ok(env.bob, "POST", "/account/3pid/delete", body)
    assert len((await c.ok(alice, "GET", "/account/3pid"))["threepids"]) == 1
    answer = await c.ok(
        alice, "POST", "/account/3pid/delete", {**body, "address": "ALICE@example.org"}
    )
    assert answer == {"id_server_unbind_result": "no-support"}
    assert await c.ok(alice, "GET", "/account/3pid") == {"threepids": []}
    # Free again.
    await env.request_add(ALICE_MAIL, "again")
    assert (await env.smtp.next()).recipients == [ALICE_MAIL]


async def test_deactivation_frees_the_address(env: Env) -> None:
    await env.give_address(env.alice, ALICE_MAIL)
    auth = {"type": "m.login.password", "password": PASSWORD, "user": env.alice.user_id}
    await env.client.ok(env.alice, "POST", "/account/deactivate", {"auth": auth})
    await env.request_add(ALICE_MAIL, "bobs")
    mailed = read_mail(await env.smtp.next())
    await env.submit(mailed)
    assert await env.add(env.bob, mailed.sid, "bobs") == (200, {})


async def test_a_mail_the_relay_refuses(tmp_path: Path, nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer(users={"mailer": "s3cret"}, refused_recipients={ALICE_MAIL})
    async with (
        mailing_homeserver(tmp_path, nursery, smtp=smtp) as (hs, smtp),
        hs.client(timeout=30) as http,
    ):
        c = Client(hs, http)
        body = {"client_secret": "s3cret", "email": ALICE_MAIL, "send_attempt": 1}
        status, answer = await c.call(None, "POST", "/account/3pid/email/requestToken", body)
        assert (status, answer["errcode"]) == (500, "M_UNKNOWN")
        assert "could not be sent" in answer["error"]
        # Nothing was kept: the same attempt is tried again, and mailed.
        smtp.refused_recipients.clear()
        sid = (await c.ok(None, "POST", "/account/3pid/email/requestToken", body))["sid"]
        assert read_mail(await smtp.next()).sid == sid


async def test_request_token_is_rate_limited(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with (
        mailing_homeserver(tmp_path, nursery, rate_limits=True) as (hs, smtp),
        hs.client(timeout=30) as http,
    ):

        async def request(email: str, ip: str, attempt: int) -> httpx.Response:
            body = {"client_secret": "s3cret", "email": email, "send_attempt": attempt}
            return await http.post(
                f"{V3}/account/3pid/email/requestToken",
                json=body,
                headers={"X-Forwarded-For": ip},
            )

        # Per e-mail address, whatever the client's address.
        for attempt in range(5):
            response = await request(ALICE_MAIL, f"10.0.0.{attempt}", attempt)
            assert response.status_code == 200
        limited = await request(ALICE_MAIL, "10.0.0.9", 9)
        assert (limited.status_code, limited.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        # Per client address, whatever the e-mail address.
        for index in range(5):
            assert (await request(f"u{index}@example.org", "10.1.1.1", 1)).status_code == 200
        limited = await request("u9@example.org", "10.1.1.1", 1)
        assert (limited.status_code, limited.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert len(smtp.received) == 10


async def test_an_addition_retried_in_its_session_answers_as_the_first(env: Env) -> None:
    c, alice = env.client, env.alice
    sid = await env.request_add(ALICE_MAIL)
    await env.submit(read_mail(await env.smtp.next()))
    body = {"sid": sid, "client_secret": "s3cret"}
    status, challenge = await c.call(alice, "POST", "/account/3pid/add", body)
    assert status == 401, challenge
    session = challenge["session"]
    auth = {"type": "m.login.password", "password": PASSWORD, "session": session}
    assert await c.ok(alice, "POST", "/account/3pid/add", {**body, "auth": auth}) == {}
    # The validation session is used up, yet the retry of the addition in
    # its own session answers as the first did: the address is on.
    for retry in (auth, {"session": session}):
        assert await c.ok(alice, "POST", "/account/3pid/add", {**body, "auth": retry}) == {}
    (listed,) = (await c.ok(alice, "GET", "/account/3pid"))["threepids"]
    assert listed["address"] == ALICE_MAIL
    # Bob cannot use Alice's session: for him it is no session at all.
    status, answer = await c.call(env.bob, "POST", "/account/3pid/add", {**body, "auth": retry})
    assert status == 401
    assert answer["session"] != session
