"""The routes a guest may call: every route of the running server's routers
that wants an access token refuses a guest's with 403
``M_GUEST_ACCESS_FORBIDDEN``, unless the table lists it, and none the table
lists does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from ranvier.api.guest_routes import GUEST_ROUTES, guest_may_call
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver

_PARAM = re.compile(r"\{[^}]+\}")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestHomeserver, str]]:
    """A server allowing guests, and a guest's access token."""
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(config.registration, allow_guest_access=True),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        answer = await http.post("/_matrix/client/v3/register?kind=guest", json={})
        assert answer.status_code == 200, answer.text
        yield hs, answer.json()["access_token"]


def _raw_routes(hs: TestHomeserver) -> list[tuple[str, str, bool]]:
    return [*hs.server.client_app.router.routes(), *hs.server.media_app.routes()]


def _routes(hs: TestHomeserver) -> list[tuple[str, str]]:
    """Every client route, each path parameter filled in with a value of its own."""
    return sorted({(method, _PARAM.sub("x1", pattern)) for method, pattern, _ in _raw_routes(hs)})


async def _call(
    http: httpx.AsyncClient, method: str, path: str, token: str | None
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    content = b"{}" if method in ("POST", "PUT") else None
    return await http.request(method, path, content=content, headers=headers)


async def test_every_route_outside_the_table_refuses_a_guest(
    served: tuple[TestHomeserver, str],
) -> None:
    hs, token = served
    checked: list[str] = []
    wrong: list[str] = []
    opened: list[str] = []
    async with hs.client() as http:
        for method, path in _routes(hs):
            if guest_may_call(method, path):
                continue
            anonymous = await _call(http, method, path, None)
            if anonymous.json().get("errcode") != "M_MISSING_TOKEN":
                # Open to anyone (logging in, registering, public reads):
                # nothing a token would add, whoever holds it.
                opened.append(f"{method} {path}")
                continue
            checked.append(f"{method} {path}")
            answer = await _call(http, method, path, token)
            body = answer.json()
            if (answer.status_code, body.get("errcode")) != (403, "M_GUEST_ACCESS_FORBIDDEN"):
                wrong.append(f"{method} {path}: {answer.status_code} {body}")
    assert wrong == []
    # What anyone may call, a guest may too.
    async with hs.client() as http:
        for route in opened:
            method, path = route.split(" ")
            answer = await _call(http, method, path, token)
            assert answer.json().get("errcode") != "M_GUEST_ACCESS_FORBIDDEN", route
    assert "POST /_matrix/client/v3/login" in opened
    # The walk reached the routes it is about, not a few.
    assert len(checked) > 150, checked
    assert "POST /_matrix/client/v3/createRoom" in checked


async def test_no_route_the_table_lists_refuses_a_guest_for_being_one(
    served: tuple[TestHomeserver, str],
) -> None:
    hs, token = served
    allowed = [(method, path) for method, path in _routes(hs) if guest_may_call(method, path)]
    async with hs.client() as http:
        for method, path in allowed:
            answer = await _call(http, method, path, token)
            assert answer.json().get("errcode") != "M_GUEST_ACCESS_FORBIDDEN", (method, path)
    # Every entry of the table is a route served here, under some prefix.
    served_routes = [(method, _regex(pattern)) for method, pattern, _ in _raw_routes(hs)]
    for method, path in GUEST_ROUTES:
        full = path if path.startswith("/_matrix/") else "/_matrix/client/{version}" + path
        filled = [_PARAM.sub("x1", full.replace("{version}", v)) for v in ("v3", "r0", "v1")]
        assert any(
            m == method and pattern.fullmatch(one) for m, pattern in served_routes for one in filled
        ), (method, path)


def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile("[^/]+".join(re.escape(piece) for piece in _PARAM.split(pattern)))
