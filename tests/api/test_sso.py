"""Single sign-on (``m.login.sso``) through an OpenID Connect provider,
end to end over loopback: the client's redirect, the provider, the
callback, the confirmation page, and ``m.login.token`` at ``/login``.
"""

from __future__ import annotations

import html
import re
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import msgspec
import pytest
import trio
from _e2e import cross_signing
from _oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider
from cryptography.hazmat.primitives.asymmetric import rsa

from ranvier.config import ListenerConfig, OidcProviderConfig
from ranvier.core.sso import MAX_RESPONSE_BYTES, SsoProviders
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki, free_port

V3 = "/_matrix/client/v3"
CLIENT_URL = "https://client.example/app/?from=sso"


@dataclass
class Setup:
    hs: TestHomeserver
    idp: FakeOidcProvider
    #: A browser: trusts the test CA, follows no redirects by itself.
    browser: httpx.AsyncClient

    @property
    def sso(self) -> SsoProviders:
        sso = self.hs.server.sso
        assert sso is not None
        return sso


async def _setup(
    tmp_path: Path,
    nursery: trio.Nursery,
    *,
    allow_existing_users: bool = False,
    user_profile_method: Literal["auto", "userinfo_endpoint"] = "auto",
) -> AsyncIterator[Setup]:
    pki = Pki.create(tmp_path)
    idp = FakeOidcProvider()
    issuer = await idp.start(nursery, pki)
    port = free_port()
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        listeners=(ListenerConfig(type="client", host="127.0.0.1", port=port),),
        well_known=msgspec.structs.replace(
            config.well_known, client_base_url=f"http://127.0.0.1:{port}"
        ),
        oidc_providers=(
            OidcProviderConfig(
                idp_id="test-idp",
                idp_name="Test IdP",
                issuer=issuer,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                allow_existing_users=allow_existing_users,
                user_profile_method=user_profile_method,
                ca_file=pki.ca_file,
            ),
        ),
    )
    async with (
        open_test_homeserver(tmp_path / "hs", config=config) as hs,
        httpx.AsyncClient(verify=pki.client_context(), timeout=60) as browser,
    ):
        yield Setup(hs, idp, browser)


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    async for made in _setup(tmp_path, nursery):
        yield made


async def _to_provider(s: Setup) -> str:
    """The client's redirect; answers the provider's authorization URL."""
    response = await s.browser.get(
        f"{s.hs.client_url}{V3}/login/sso/redirect/test-idp",
        params={"redirectUrl": CLIENT_URL},
    )
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(f"{s.idp.issuer}/authorize?")
    return location


async def _to_callback(s: Setup) -> str:
    """Through the provider; answers the callback URL it sends the browser to."""
    response = await s.browser.get(await _to_provider(s))
    assert response.status_code == 302, response.text
    callback = response.headers["location"]
    assert callback.startswith(f"{s.hs.client_url}/_ranvier/client/oidc/callback?")
    return callback


def _continue_link(page: httpx.Response) -> str:
    links = re.findall(r'<a href="([^"]*)">', page.text)
    assert len(links) == 1, page.text
    return html.unescape(links[0])


async def _login_token(s: Setup) -> str:
    page = await s.browser.get(await _to_callback(s))
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "client.example" in page.text
    link = _continue_link(page)
    parsed = urllib.parse.urlsplit(link)
    assert (parsed.scheme, parsed.netloc, parsed.path) == ("https", "client.example", "/app/")
    query = urllib.parse.parse_qs(parsed.query)
    assert query["from"] == ["sso"]
    (token,) = query["loginToken"]
    return token


async def _log_in(s: Setup, token: str) -> httpx.Response:
    return await s.browser.post(
        f"{s.hs.client_url}{V3}/login", json={"type": "m.login.token", "token": token}
    )


def _count(conn: sqlite3.Connection, table: str) -> int:
    count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


async def _rows(s: Setup) -> tuple[int, int, int, int]:
    """How many users, profiles, subject links and login tokens are stored."""

    def read(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
        return (
            _count(conn, "users"),
            _count(conn, "profiles"),
            _count(conn, "sso_subjects"),
            _count(conn, "login_tokens"),
        )

    return await s.hs.server.storage.readers.read(read)


async def _refused(s: Setup, status: int, words: str) -> None:
    """The callback answers an error page, and nothing is made."""
    before = await _rows(s)
    page = await s.browser.get(await _to_callback(s))
    assert page.status_code == status, page.text
    assert words in html.unescape(page.text)
    assert "loginToken" not in page.text
    assert await s.hs.server.storage.sso.sso_user("test-idp", s.idp.subject) is None
    assert not await s.hs.server.accounts.user_exists("@alice:localhost")
    assert await _rows(s) == before


async def test_login_lists_the_provider(setup: Setup) -> None:
    response = await setup.browser.get(f"{setup.hs.client_url}{V3}/login")
    flows = {flow["type"]: flow for flow in response.json()["flows"]}
    assert flows["m.login.sso"]["identity_providers"] == [{"id": "test-idp", "name": "Test IdP"}]
    # Login tokens are taken, but made only by single sign-on here.
    assert flows["m.login.token"]["get_login_token"] is False


async def test_a_first_login_makes_the_user_and_a_second_finds_it(setup: Setup) -> None:
    logged_in = await _log_in(setup, await _login_token(setup))
    assert logged_in.status_code == 200, logged_in.text
    assert logged_in.json()["user_id"] == "@alice:localhost"
    whoami = await setup.browser.get(
        f"{setup.hs.client_url}{V3}/account/whoami",
        headers={"Authorization": f"Bearer {logged_in.json()['access_token']}"},
    )
    assert whoami.json()["user_id"] == "@alice:localhost"
    # The provider renames the user: the subject still maps to the same account.
    setup.idp.username = "alice-renamed"
    again = await _log_in(setup, await _login_token(setup))
    assert again.json()["user_id"] == "@alice:localhost"
    assert not await setup.hs.server.accounts.user_exists("@alice-renamed:localhost")
    assert setup.idp.tokens_issued == 2


async def test_a_login_token_logs_in_once(setup: Setup) -> None:
    token = await _login_token(setup)
    assert (await _log_in(setup, token)).status_code == 200
    second = await _log_in(setup, token)
    assert second.status_code == 403
    assert second.json()["errcode"] == "M_FORBIDDEN"


async def test_the_username_claim_is_made_a_valid_localpart(setup: Setup) -> None:
    setup.idp.username = "Zoë Smith"
    logged_in = await _log_in(setup, await _login_token(setup))
    assert logged_in.json()["user_id"] == "@zo=c3=ab=20smith:localhost"


async def test_an_unknown_state_is_refused(setup: Setup) -> None:
    callback = await _to_callback(setup)
    forged = re.sub(r"state=[^&]*", "state=forged", callback)
    page = await setup.browser.get(forged)
    assert page.status_code == 400
    assert "unknown or was already used" in page.text
    assert setup.idp.tokens_issued == 0
    assert not await setup.hs.server.accounts.user_exists("@alice:localhost")


async def test_a_callback_is_used_once(setup: Setup) -> None:
    callback = await _to_callback(setup)
    assert (await setup.browser.get(callback)).status_code == 200
    replayed = await setup.browser.get(callback)
    assert replayed.status_code == 400
    assert "loginToken" not in replayed.text


async def test_an_expired_session_is_refused(setup: Setup) -> None:
    setup.sso.session_lifetime_seconds = 0.0
    await _refused(setup, 400, "has expired")
    assert setup.idp.tokens_issued == 0


async def test_a_provider_error_is_shown(setup: Setup) -> None:
    setup.idp.deny = "access_denied"
    await _refused(setup, 403, "refused the login: access_denied")


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"nonce": "another-login"}, "nonce is not this login's"),
        ({"aud": "someone-else"}, "Audience doesn't match"),
        ({"iss": "https://elsewhere.example"}, "Invalid issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"sub": None}, 'Token is missing the "sub" claim'),
    ],
)
async def test_a_bad_id_token_is_refused(
    setup: Setup, claims: dict[str, object], words: str
) -> None:
    setup.idp.claims = claims
    await _refused(setup, 502, words)
    assert setup.idp.tokens_issued == 1


async def test_a_username_in_neither_id_token_nor_userinfo_is_refused(setup: Setup) -> None:
    setup.idp.claims = {"preferred_username": None}
    setup.idp.userinfo_claims = {"preferred_username": None}
    await _refused(setup, 502, "gave no 'preferred_username'")
    assert setup.idp.userinfo_requests == 1


async def test_an_id_token_signed_with_another_key_is_refused(setup: Setup) -> None:
    setup.idp.sign_with = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await _refused(setup, 502, "Signature verification failed")


async def test_only_http_client_urls_are_taken(setup: Setup) -> None:
    for bad in ("javascript:alert(1)", "ftp://client.example/", "https:///no-host"):
        response = await setup.browser.get(
            f"{setup.hs.client_url}{V3}/login/sso/redirect/test-idp",
            params={"redirectUrl": bad},
        )
        assert response.status_code == 400, bad
        assert response.json()["errcode"] == "M_INVALID_PARAM"
    missing = await setup.browser.get(f"{setup.hs.client_url}{V3}/login/sso/redirect")
    assert missing.json()["errcode"] == "M_MISSING_PARAM"
    unknown = await setup.browser.get(
        f"{setup.hs.client_url}{V3}/login/sso/redirect/nobody", params={"redirectUrl": CLIENT_URL}
    )
    assert unknown.status_code == 404


async def test_the_only_provider_is_used_without_an_id(setup: Setup) -> None:
    response = await setup.browser.get(
        f"{setup.hs.client_url}{V3}/login/sso/redirect", params={"redirectUrl": CLIENT_URL}
    )
    assert response.status_code == 302
    assert response.headers["location"].startswith(f"{setup.idp.issuer}/authorize?")


async def test_an_existing_user_is_not_taken_over_by_default(setup: Setup) -> None:
    await setup.hs.register_user("alice", password="a password")
    page = await setup.browser.get(await _to_callback(setup))
    assert page.status_code == 403
    assert "exists already" in html.unescape(page.text)
    assert "loginToken" not in page.text
    assert await setup.hs.server.storage.sso.sso_user("test-idp", "subject-1") is None
    # The password login is untouched.
    password = await setup.browser.post(
        f"{setup.hs.client_url}{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "a password",
        },
    )
    assert password.status_code == 200


async def test_allow_existing_users_links_the_subject_to_the_account(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async for s in _setup(tmp_path, nursery, allow_existing_users=True):
        await s.hs.register_user("alice", password="a password")
        logged_in = await _log_in(s, await _login_token(s))
        assert logged_in.json()["user_id"] == "@alice:localhost"
        assert await s.hs.server.storage.sso.sso_user("test-idp", "subject-1") == (
            "@alice:localhost"
        )


# The user's profile from the provider: the display name, and userinfo.


async def _profile(s: Setup, logged_in: httpx.Response) -> dict[str, object]:
    assert logged_in.status_code == 200, logged_in.text
    body = logged_in.json()
    response = await s.browser.get(
        f"{s.hs.client_url}{V3}/profile/{urllib.parse.quote(body['user_id'])}",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert response.status_code == 200, response.text
    profile: dict[str, object] = response.json()
    return profile


async def test_a_new_user_is_named_by_the_name_claim(setup: Setup) -> None:
    setup.idp.claims = {"name": "  Alice Liddell \n"}
    logged_in = await _log_in(setup, await _login_token(setup))
    assert logged_in.json()["user_id"] == "@alice:localhost"
    assert await _profile(setup, logged_in) == {"displayname": "Alice Liddell"}
    # The ID token had all it needed: userinfo was not asked.
    assert setup.idp.userinfo_requests == 0


@pytest.mark.parametrize("name", [42, "   ", "x" * 257, None])
async def test_a_name_claim_that_cannot_be_a_display_name_is_ignored(
    setup: Setup, name: object
) -> None:
    setup.idp.claims = {"name": name}
    logged_in = await _log_in(setup, await _login_token(setup))
    assert logged_in.json()["user_id"] == "@alice:localhost"
    assert await _profile(setup, logged_in) == {}


async def test_a_display_name_of_256_characters_is_taken(setup: Setup) -> None:
    setup.idp.claims = {"name": "é" * 256}
    logged_in = await _log_in(setup, await _login_token(setup))
    assert await _profile(setup, logged_in) == {"displayname": "é" * 256}


async def test_a_later_login_leaves_the_display_name_as_it_was(setup: Setup) -> None:
    setup.idp.claims = {"name": "Alice"}
    first = await _log_in(setup, await _login_token(setup))
    assert await _profile(setup, first) == {"displayname": "Alice"}
    setup.idp.claims = {"name": "Alice Renamed"}
    again = await _log_in(setup, await _login_token(setup))
    assert again.json()["user_id"] == "@alice:localhost"
    assert await _profile(setup, again) == {"displayname": "Alice"}


async def test_userinfo_endpoint_takes_the_claims_from_userinfo(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async for s in _setup(tmp_path, nursery, user_profile_method="userinfo_endpoint"):
        s.idp.claims = {"preferred_username": "mallory", "name": "Mallory"}
        s.idp.userinfo_claims = {"preferred_username": "bob", "name": "Bob"}
        logged_in = await _log_in(s, await _login_token(s))
        assert logged_in.json()["user_id"] == "@bob:localhost"
        assert await _profile(s, logged_in) == {"displayname": "Bob"}
        assert not await s.hs.server.accounts.user_exists("@mallory:localhost")
        assert s.idp.userinfo_requests == 1
        # Asked on every login, and still for the same subject only.
        again = await _log_in(s, await _login_token(s))
        assert again.json()["user_id"] == "@bob:localhost"
        assert s.idp.userinfo_requests == 2
        s.idp.userinfo_claims = {"sub": "subject-2"}
        page = await s.browser.get(await _to_callback(s))
        assert page.status_code == 502
        assert "another subject than its ID token" in html.unescape(page.text)
        assert "loginToken" not in page.text


async def test_userinfo_endpoint_fills_in_what_userinfo_lacks(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async for s in _setup(tmp_path, nursery, user_profile_method="userinfo_endpoint"):
        s.idp.claims = {"name": "From The ID Token"}
        logged_in = await _log_in(s, await _login_token(s))
        assert logged_in.json()["user_id"] == "@alice:localhost"
        assert await _profile(s, logged_in) == {"displayname": "From The ID Token"}
        assert s.idp.userinfo_requests == 1


async def test_auto_asks_userinfo_when_the_id_token_has_no_username(setup: Setup) -> None:
    setup.idp.claims = {"preferred_username": None}
    setup.idp.userinfo_claims = {"name": "Alice From Userinfo"}
    logged_in = await _log_in(setup, await _login_token(setup))
    assert logged_in.json()["user_id"] == "@alice:localhost"
    assert await _profile(setup, logged_in) == {"displayname": "Alice From Userinfo"}
    assert setup.idp.userinfo_requests == 1
    # A known subject needs no claims: userinfo is not asked again.
    again = await _log_in(setup, await _login_token(setup))
    assert again.json()["user_id"] == "@alice:localhost"
    assert setup.idp.userinfo_requests == 1


async def test_auto_without_an_id_token_takes_the_user_from_userinfo(setup: Setup) -> None:
    setup.idp.send_id_token = False
    setup.idp.userinfo_claims = {"name": "Alice"}
    logged_in = await _log_in(setup, await _login_token(setup))
    assert logged_in.json()["user_id"] == "@alice:localhost"
    assert await _profile(setup, logged_in) == {"displayname": "Alice"}
    assert await setup.hs.server.storage.sso.sso_user("test-idp", "subject-1") == (
        "@alice:localhost"
    )


async def test_auto_is_refused_when_userinfo_is_needed_and_missing(setup: Setup) -> None:
    setup.idp.claims = {"preferred_username": None}
    setup.idp.userinfo_enabled = False
    await _refused(setup, 502, "answered 404 for its userinfo")


async def test_userinfo_for_another_subject_is_refused(setup: Setup) -> None:
    setup.idp.claims = {"preferred_username": None}
    setup.idp.userinfo_claims = {"sub": "subject-2"}
    await _refused(setup, 502, "another subject than its ID token")
    assert setup.idp.userinfo_requests == 1


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ((500, "application/json", b"{}"), "answered 500 for its userinfo"),
        ((200, "application/json", b"not json"), "userinfo is not a JSON object"),
        ((200, "application/json", b"[1, 2]"), "userinfo is not a JSON object"),
        ((200, "application/json", b'{"name": "no subject"}'), "userinfo has no subject"),
        ((200, "application/jwt", b"a.b.c"), "userinfo as a JWT, which is not supported"),
        (
            (
                200,
                "application/json",
                b'{"sub": "subject-1", "pad": "' + b"x" * MAX_RESPONSE_BYTES + b'"}',
            ),
            f"userinfo is larger than {MAX_RESPONSE_BYTES} bytes",
        ),
    ],
)
async def test_a_bad_userinfo_answer_is_refused(
    setup: Setup, answer: tuple[int, str, bytes], words: str
) -> None:
    setup.idp.claims = {"preferred_username": None}
    setup.idp.userinfo = answer
    await _refused(setup, 502, words)
    assert setup.idp.userinfo_requests == 1


# User-interactive authentication's m.login.sso stage.

AUTH_DONE = 'window.opener.postMessage("authDone", "*");'


async def _sso_user(s: Setup, device_id: str) -> str:
    """A login of the provider's user, made by single sign-on; its access token."""
    token = await _login_token(s)
    logged_in = await s.browser.post(
        f"{s.hs.client_url}{V3}/login",
        json={"type": "m.login.token", "token": token, "device_id": device_id},
    )
    assert logged_in.status_code == 200, logged_in.text
    access_token: str = logged_in.json()["access_token"]
    return access_token


async def _api(s: Setup, token: str, method: str, path: str, body: object = None) -> httpx.Response:
    return await s.browser.request(
        method,
        f"{s.hs.client_url}{V3}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )


async def _sso_challenge(s: Setup, token: str, method: str, path: str, body: object) -> str:
    """The session of the 401 that offers an SSO-only user m.login.sso alone."""
    response = await _api(s, token, method, path, body)
    assert response.status_code == 401, response.text
    challenge = response.json()
    assert challenge["flows"] == [{"stages": ["m.login.sso"]}]
    assert challenge["completed"] == []
    session: str = challenge["session"]
    return session


async def _fallback_link(s: Setup, browser: httpx.AsyncClient, session: str) -> str:
    """The fallback page's link to the provider, after its warning."""
    page = await browser.get(
        f"{s.hs.client_url}{V3}/auth/m.login.sso/fallback/web", params={"session": session}
    )
    assert page.status_code == 200, page.text
    assert "may have access to your account" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    link = _continue_link(page)
    assert link.startswith(f"{s.idp.issuer}/authorize?")
    return link


async def _through_provider(s: Setup, browser: httpx.AsyncClient, link: str) -> httpx.Response:
    """The provider, then the callback's page."""
    approved = await browser.get(link)
    assert approved.status_code == 302, approved.text
    callback = approved.headers["location"]
    assert callback.startswith(f"{s.hs.client_url}/_ranvier/client/oidc/callback?")
    return await browser.get(callback)


async def _confirm(s: Setup, session: str) -> None:
    page = await _through_provider(s, s.browser, await _fallback_link(s, s.browser, session))
    assert page.status_code == 200, page.text
    assert AUTH_DONE in page.text
    # The page's one script is allowed by its hash, and nothing else is.
    assert "script-src 'sha256-" in page.headers["content-security-policy"]


async def test_an_sso_user_deletes_a_device_through_the_sso_stage(setup: Setup) -> None:
    token = await _sso_user(setup, "LAPTOP")
    await _sso_user(setup, "PHONE")
    body: dict[str, object] = {"devices": ["PHONE"]}
    session = await _sso_challenge(setup, token, "POST", "/delete_devices", body)
    # Before the provider, the session alone and the stage named are not enough.
    for auth in ({"session": session}, {"type": "m.login.sso", "session": session}):
        early = await _api(setup, token, "POST", "/delete_devices", {**body, "auth": auth})
        assert early.status_code == 401, early.text
        assert early.json()["completed"] == []

    await _confirm(setup, session)
    done = await _api(
        setup, token, "POST", "/delete_devices", {**body, "auth": {"session": session}}
    )
    assert (done.status_code, done.json()) == (200, {})
    listed = await _api(setup, token, "GET", "/devices")
    assert [device["device_id"] for device in listed.json()["devices"]] == ["LAPTOP"]

    # The finished session is spent: its retry answers as before, another
    # request in it is refused, and the confirmation cannot be used again.
    again = await _api(
        setup, token, "POST", "/delete_devices", {**body, "auth": {"session": session}}
    )
    assert (again.status_code, again.json()) == (200, {})
    other = {"devices": ["LAPTOP"], "auth": {"session": session}}
    refused = await _api(setup, token, "POST", "/delete_devices", other)
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
    stale = await setup.browser.get(
        f"{setup.hs.client_url}{V3}/auth/m.login.sso/fallback/web", params={"session": session}
    )
    assert stale.status_code == 400
    assert (await _api(setup, token, "GET", "/account/whoami")).status_code == 200


async def test_an_sso_user_deactivates_through_the_sso_stage(setup: Setup) -> None:
    token = await _sso_user(setup, "LAPTOP")
    # A session of another operation is not this one's.
    devices_session = await _sso_challenge(
        setup, token, "POST", "/delete_devices", {"devices": ["X"]}
    )
    await _confirm(setup, devices_session)
    borrowed = await _api(
        setup, token, "POST", "/account/deactivate", {"auth": {"session": devices_session}}
    )
    assert (borrowed.status_code, borrowed.json()["errcode"]) == (403, "M_FORBIDDEN")

    session = await _sso_challenge(setup, token, "POST", "/account/deactivate", {})
    await _confirm(setup, session)
    done = await _api(setup, token, "POST", "/account/deactivate", {"auth": {"session": session}})
    assert (done.status_code, done.json()) == (200, {"id_server_unbind_result": "no-support"})
    assert (await _api(setup, token, "GET", "/account/whoami")).status_code == 401
    # Its retry, with the token it logged out, gets the same answer.
    again = await _api(setup, token, "POST", "/account/deactivate", {"auth": {"session": session}})
    assert (again.status_code, again.json()) == (200, {"id_server_unbind_result": "no-support"})


async def test_an_sso_user_sets_a_password_through_the_sso_stage(setup: Setup) -> None:
    token = await _sso_user(setup, "LAPTOP")
    phone = await _sso_user(setup, "PHONE")
    body = {"new_password": "a long passphrase"}
    session = await _sso_challenge(setup, token, "POST", "/account/password", body)
    early = await _api(
        setup, token, "POST", "/account/password", {**body, "auth": {"session": session}}
    )
    assert early.status_code == 401, early.text
    assert early.json()["completed"] == []

    await _confirm(setup, session)
    done = await _api(
        setup, token, "POST", "/account/password", {**body, "auth": {"session": session}}
    )
    assert (done.status_code, done.json()) == (200, {})
    # The other devices are logged out, this one stays, and the password
    # now logs in.
    assert (await _api(setup, phone, "GET", "/account/whoami")).status_code == 401
    user_id = (await _api(setup, token, "GET", "/account/whoami")).json()["user_id"]
    login = await setup.browser.post(
        f"{setup.hs.client_url}{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": "a long passphrase",
        },
    )
    assert login.status_code == 200, login.text

    # Its retry answers as before; another request in it is refused, and
    # the password is not changed by it.
    again = await _api(
        setup, token, "POST", "/account/password", {**body, "auth": {"session": session}}
    )
    assert (again.status_code, again.json()) == (200, {})
    other = {"new_password": "another passphrase", "logout_devices": False}
    refused = await _api(
        setup, token, "POST", "/account/password", {**other, "auth": {"session": session}}
    )
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
    # With a password, the user is offered it beside single sign-on.
    challenge = await _api(setup, token, "POST", "/account/password", other)
    assert challenge.status_code == 401
    assert challenge.json()["flows"] == [
        {"stages": ["m.login.password"]},
        {"stages": ["m.login.sso"]},
    ]


async def test_an_sso_user_replaces_cross_signing_keys_through_the_sso_stage(
    setup: Setup,
) -> None:
    token = await _sso_user(setup, "LAPTOP")
    user_id = (await _api(setup, token, "GET", "/account/whoami")).json()["user_id"]
    user = TestUser(user_id, token, "LAPTOP")
    path = "/keys/device_signing/upload"
    # The first keys need no authentication.
    first = cross_signing(user).body
    assert (await _api(setup, token, "POST", path, first)).status_code == 200
    replacement = cross_signing(user).body
    session = await _sso_challenge(setup, token, "POST", path, replacement)
    early = await _api(setup, token, "POST", path, {**replacement, "auth": {"session": session}})
    assert early.status_code == 401, early.text

    async def master_key() -> object:
        query = {"device_keys": {user_id: []}}
        answer = await _api(setup, token, "POST", "/keys/query", query)
        assert answer.status_code == 200, answer.text
        return answer.json()["master_keys"][user_id]

    assert await master_key() == first["master_key"]
    await _confirm(setup, session)
    done = await _api(setup, token, "POST", path, {**replacement, "auth": {"session": session}})
    assert (done.status_code, done.json()) == (200, {})
    assert await master_key() == replacement["master_key"]

    # Its retry answers as before; other keys need a session of their own.
    again = await _api(setup, token, "POST", path, {**replacement, "auth": {"session": session}})
    assert (again.status_code, again.json()) == (200, {})
    third = cross_signing(user).body
    refused = await _api(setup, token, "POST", path, {**third, "auth": {"session": session}})
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert await master_key() == replacement["master_key"]
    # A session confirmed for another operation does not do either.
    devices_session = await _sso_challenge(
        setup, token, "POST", "/delete_devices", {"devices": ["X"]}
    )
    await _confirm(setup, devices_session)
    borrowed = await _api(
        setup, token, "POST", path, {**third, "auth": {"session": devices_session}}
    )
    assert (borrowed.status_code, borrowed.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert await master_key() == replacement["master_key"]


async def test_a_provider_answering_for_another_user_completes_nothing(setup: Setup) -> None:
    token = await _sso_user(setup, "LAPTOP")
    # Mallory has an account of her own through the same provider.
    setup.idp.subject, setup.idp.username = "subject-2", "mallory"
    await _sso_user(setup, "M")
    session = await _sso_challenge(setup, token, "POST", "/account/deactivate", {})
    link = await _fallback_link(setup, setup.browser, session)
    page = await _through_provider(setup, setup.browser, link)
    assert page.status_code == 403, page.text
    assert "another user than @alice:localhost" in html.unescape(page.text)
    assert AUTH_DONE not in page.text
    refused = await _api(
        setup, token, "POST", "/account/deactivate", {"auth": {"session": session}}
    )
    assert refused.status_code == 401
    assert refused.json()["completed"] == []
    assert (await _api(setup, token, "GET", "/account/whoami")).status_code == 200
    # A subject linked to nobody proves nothing either, and makes no user.
    setup.idp.subject, setup.idp.username = "subject-3", "nobody"
    link = await _fallback_link(setup, setup.browser, session)
    page = await _through_provider(setup, setup.browser, link)
    assert page.status_code == 403, page.text
    assert not await setup.hs.server.accounts.user_exists("@nobody:localhost")


async def test_a_confirmation_is_finished_only_in_the_browser_that_started_it(
    setup: Setup,
) -> None:
    token = await _sso_user(setup, "LAPTOP")
    session = await _sso_challenge(setup, token, "POST", "/account/deactivate", {})
    # Whoever opened the fallback sends its provider link to the user, whose
    # browser never saw the page, nor got its cookie.
    link = await _fallback_link(setup, setup.browser, session)
    setup.browser.cookies.clear()
    page = await _through_provider(setup, setup.browser, link)
    assert page.status_code == 403, page.text
    assert "another browser" in page.text
    assert AUTH_DONE not in page.text
    refused = await _api(
        setup, token, "POST", "/account/deactivate", {"auth": {"session": session}}
    )
    assert refused.status_code == 401
    assert refused.json()["completed"] == []
