"""Registration with a token over real HTTP: the two-stage flow, the last
use taken by one of two sessions racing for it, tokens expired or used up,
a pending use freed when its session expires (on the handler's clock), and
the validity endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.core.registration_tokens import SESSION_LIFETIME_MS
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver

V3 = "/_matrix/client/v3"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
TOKEN_STAGE = "m.login.registration_token"
FLOWS = [{"stages": [TOKEN_STAGE, "m.login.dummy"]}]
START_MS = 1_800_000_000_000


class _Clock:
    """The wall clock the registration tokens read, moved by the test."""

    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


@asynccontextmanager
async def _open(
    tmp_path: Path, *, enabled: bool = True, requires_token: bool = True
) -> AsyncIterator[tuple[TestHomeserver, httpx.AsyncClient, _Clock]]:
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(
            config.registration, enabled=enabled, requires_token=requires_token
        ),
    )
    clock = _Clock()
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        hs.server.registration_tokens.clock_ms = clock
        yield hs, http, clock


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestHomeserver, httpx.AsyncClient, _Clock]]:
    async with _open(tmp_path) as opened:
        yield opened


async def _post(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, Any]:
    response = await http.post(f"{V3}/register", json=body)
    return response.status_code, response.json()


async def _session(http: httpx.AsyncClient, username: str) -> str:
    status, challenge = await _post(http, {"username": username, "password": "pw"})
    assert status == 401
    assert challenge["flows"] == FLOWS
    assert challenge["completed"] == []
    session = challenge["session"]
    assert isinstance(session, str)
    return session


async def _token_stage(http: httpx.AsyncClient, session: str, token: str) -> tuple[int, Any]:
    return await _post(http, {"auth": {"type": TOKEN_STAGE, "token": token, "session": session}})


async def _dummy_stage(
    http: httpx.AsyncClient, session: str | None, username: str
) -> tuple[int, Any]:
    auth: dict[str, Any] = {"type": "m.login.dummy"}
    if session is not None:
        auth["session"] = session
    return await _post(http, {"username": username, "password": "pw", "auth": auth})


async def _exists(hs: TestHomeserver, localpart: str) -> bool:
    return await hs.server.accounts.user_exists(f"@{localpart}:localhost")


async def _counts(hs: TestHomeserver, token: str) -> tuple[int, int]:
    record = await hs.server.registration_tokens.get(token)
    return record.pending, record.completed


async def test_registering_takes_a_token_then_the_dummy_stage(
    env: tuple[TestHomeserver, httpx.AsyncClient, _Clock],
) -> None:
    hs, http, _ = env
    await hs.server.registration_tokens.create("invite", uses_allowed=3)
    session = await _session(http, "alice")

    # Without the token stage the dummy stage is not enough.
    status, answer = await _dummy_stage(http, session, "alice")
    assert (status, answer["errcode"], answer["flows"]) == (401, "M_UNAUTHORIZED", FLOWS)
    status, answer = await _dummy_stage(http, None, "alice")
    assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")
    assert not await _exists(hs, "alice")

    status, answer = await _token_stage(http, session, "invite")
    assert status == 401
    assert answer == {"flows": FLOWS, "params": {}, "session": session, "completed": [TOKEN_STAGE]}
    assert await _counts(hs, "invite") == (1, 0)
    # Asking again shows the stage done.
    status, answer = await _post(http, {"username": "alice", "auth": {"session": session}})
    assert (status, answer["completed"]) == (401, [TOKEN_STAGE])

    status, made = await _dummy_stage(http, session, "alice")
    assert status == 200, made
    assert made["user_id"] == "@alice:localhost"
    assert await _counts(hs, "invite") == (0, 1)
    whoami = await http.get(
        f"{V3}/account/whoami", headers={"Authorization": f"Bearer {made['access_token']}"}
    )
    assert whoami.json()["user_id"] == "@alice:localhost"
    # The session made its account: it makes no other, and its retry
    # answers the same user, logged in anew.
    status, answer = await _dummy_stage(http, session, "bob")
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert not await _exists(hs, "bob")
    status, again = await _dummy_stage(http, session, "alice")
    assert status == 200, again
    assert again["user_id"] == "@alice:localhost"
    assert again["access_token"] != made["access_token"]
    status, again = await _token_stage(http, session, "invite")
    assert (status, again["user_id"]) == (200, "@alice:localhost")
    assert await _counts(hs, "invite") == (0, 1)


async def test_bad_token_stages_are_refused(
    env: tuple[TestHomeserver, httpx.AsyncClient, _Clock],
) -> None:
    hs, http, _ = env
    await hs.server.registration_tokens.create("first")
    await hs.server.registration_tokens.create("second")
    session = await _session(http, "alice")
    for token in ("unknown", "not a token!", "x" * 65):
        status, answer = await _token_stage(http, session, token)
        assert (status, answer["errcode"], answer["completed"]) == (401, "M_UNAUTHORIZED", [])
    status, answer = await _post(http, {"auth": {"type": TOKEN_STAGE, "session": session}})
    assert (status, answer["errcode"]) == (400, "M_MISSING_PARAM")
    status, answer = await _post(http, {"auth": {"type": TOKEN_STAGE, "token": "first"}})
    assert (status, answer["errcode"]) == (400, "M_MISSING_PARAM")
    status, answer = await _post(
        http, {"auth": {"type": TOKEN_STAGE, "token": 7, "session": session}}
    )
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert (await _token_stage(http, session, "first"))[0] == 401
    status, answer = await _token_stage(http, session, "second")
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert await _counts(hs, "second") == (0, 0)
    status, answer = await _post(http, {"auth": {"type": "m.login.password", "session": session}})
    assert (status, answer["errcode"]) == (400, "M_UNRECOGNIZED")


async def test_the_last_use_goes_to_one_of_two_racing_sessions(
    env: tuple[TestHomeserver, httpx.AsyncClient, _Clock],
) -> None:
    hs, http, _ = env
    await hs.server.registration_tokens.create("last", uses_allowed=1)
    sessions = [await _session(http, "alice"), await _session(http, "bob")]
    answers: dict[str, tuple[int, Any]] = {}

    async def take(session: str) -> None:
        answers[session] = await _token_stage(http, session, "last")

    async with trio.open_nursery() as nursery:
        for session in sessions:
            nursery.start_soon(take, session)
    won = [s for s in sessions if answers[s][1].get("completed") == [TOKEN_STAGE]]
    lost = [s for s in sessions if answers[s][1].get("errcode") == "M_UNAUTHORIZED"]
    assert (len(won), len(lost)) == (1, 1)
    assert await _counts(hs, "last") == (1, 0)
    status, _ = await _dummy_stage(http, lost[0], "loser")
    assert status == 401
    status, _ = await _dummy_stage(http, won[0], "winner")
    assert status == 200
    assert (await _exists(hs, "winner"), await _exists(hs, "loser")) == (True, False)
    # Used up now, for anyone.
    status, answer = await _token_stage(http, await _session(http, "carol"), "last")
    assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_an_expired_token_is_refused(
    env: tuple[TestHomeserver, httpx.AsyncClient, _Clock],
) -> None:
    hs, http, clock = env
    await hs.server.registration_tokens.create("soon", expiry_time=START_MS + 1000)
    session = await _session(http, "alice")
    clock.now = START_MS + 1000
    status, answer = await _token_stage(http, session, "soon")
    assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")
    assert await _counts(hs, "soon") == (0, 0)


async def test_a_pending_use_is_freed_when_its_session_expires(
    env: tuple[TestHomeserver, httpx.AsyncClient, _Clock],
) -> None:
    hs, http, clock = env
    await hs.server.registration_tokens.create("one", uses_allowed=1)
    abandoned = await _session(http, "alice")
    assert (await _token_stage(http, abandoned, "one"))[0] == 401
    later = await _session(http, "bob")
    status, answer = await _token_stage(http, later, "one")
    assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")

    clock.now = START_MS + SESSION_LIFETIME_MS
    assert await _counts(hs, "one") == (0, 0)
    status, answer = await _token_stage(http, later, "one")
    assert (status, answer["completed"]) == (401, [TOKEN_STAGE])
    # The abandoned session holds nothing any more.
    status, answer = await _dummy_stage(http, abandoned, "alice")
    assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")
    assert (await _dummy_stage(http, later, "bob"))[0] == 200
    assert await _counts(hs, "one") == (0, 1)


async def test_the_validity_endpoint(
    env: tuple[TestHomeserver, httpx.AsyncClient, _Clock],
) -> None:
    hs, http, clock = env
    tokens = hs.server.registration_tokens
    await tokens.create("good")
    await tokens.create("used", uses_allowed=0)
    await tokens.create("soon", expiry_time=START_MS + 10)

    async def valid(token: str) -> Any:
        response = await http.get(VALIDITY, params={"token": token})
        assert response.status_code == 200
        return response.json()

    assert await valid("good") == {"valid": True}
    assert await valid("soon") == {"valid": True}
    assert await valid("used") == {"valid": False}
    assert await valid("unknown") == {"valid": False}
    assert await valid("not a token!") == {"valid": False}
    clock.now = START_MS + 10
    assert await valid("soon") == {"valid": False}
    missing = await http.get(VALIDITY)
    assert (missing.status_code, missing.json()["errcode"]) == (400, "M_MISSING_PARAM")


@pytest.mark.parametrize(("enabled", "requires_token"), [(True, False), (False, True)])
async def test_without_token_registration_the_validity_endpoint_is_forbidden(
    tmp_path: Path, enabled: bool, requires_token: bool
) -> None:
    async with _open(tmp_path, enabled=enabled, requires_token=requires_token) as (hs, http, _):
        await hs.server.registration_tokens.create("good")
        response = await http.get(VALIDITY, params={"token": "good"})
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
        status, answer = await _post(http, {"username": "alice", "password": "pw"})
        if enabled:
            # Open registration: the dummy flow, no token asked.
            assert (status, answer["flows"]) == (401, [{"stages": ["m.login.dummy"]}])
        else:
            # Closed whatever tokens exist.
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
            status, answer = await _token_stage(http, "s", "good")
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")


async def test_the_validity_endpoint_is_rate_limited(tmp_path: Path) -> None:
    config = config_for_tests(tmp_path / "hs", rate_limits=True)
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(config.registration, requires_token=True),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        statuses = [
            (await http.get(VALIDITY, params={"token": f"t{n}"})).status_code for n in range(10)
        ]
    assert statuses[0] == 200
    assert 429 in statuses
