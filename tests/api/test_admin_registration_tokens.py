"""The registration token admin API over real HTTP: each endpoint with
Synapse's shapes, and its refusals."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_call, admin_ok, admin_refused
from _client import WithAdmin, open_with_admin

TOKENS = "/v1/registration_tokens"
START_MS = 1_800_000_000_000


def _token(
    token: str,
    *,
    uses_allowed: int | None = None,
    pending: int = 0,
    completed: int = 0,
    expiry_time: int | None = None,
) -> dict[str, Any]:
    return {
        "token": token,
        "uses_allowed": uses_allowed,
        "pending": pending,
        "completed": completed,
        "expiry_time": expiry_time,
    }


class _Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[WithAdmin, _Clock]]:
    async with open_with_admin(tmp_path) as env:
        clock = _Clock()
        env.hs.server.registration_tokens.clock_ms = clock
        yield env, clock


async def test_tokens_are_created_read_listed_updated_and_deleted(
    env: tuple[WithAdmin, _Clock],
) -> None:
    e, clock = env
    http, admin = e.client.http, e.admin
    made = await admin_ok(http, admin, "POST", f"{TOKENS}/new", {})
    assert re.fullmatch(r"[A-Za-z0-9._~-]{16}", made["token"])
    assert made == _token(made["token"])
    short = await admin_ok(http, admin, "POST", f"{TOKENS}/new", {"length": 3})
    assert len(short["token"]) == 3
    given = await admin_ok(
        http,
        admin,
        "POST",
        f"{TOKENS}/new",
        {"token": "a.b_c~d-E9", "uses_allowed": 1, "expiry_time": START_MS + 100},
    )
    assert given == _token("a.b_c~d-E9", uses_allowed=1, expiry_time=START_MS + 100)
    used_up = await admin_ok(http, admin, "POST", f"{TOKENS}/new", {"uses_allowed": 0})

    assert await admin_ok(http, admin, "GET", f"{TOKENS}/a.b_c~d-E9") == given
    listed = await admin_ok(http, admin, "GET", TOKENS)
    assert sorted(t["token"] for t in listed["registration_tokens"]) == sorted(
        [made["token"], short["token"], "a.b_c~d-E9", used_up["token"]]
    )
    valid = await admin_ok(http, admin, "GET", TOKENS, params={"valid": "true"})
    assert used_up["token"] not in [t["token"] for t in valid["registration_tokens"]]
    assert len(valid["registration_tokens"]) == 3
    invalid = await admin_ok(http, admin, "GET", TOKENS, params={"valid": "false"})
    assert invalid["registration_tokens"] == [used_up]
    clock.now = START_MS + 100
    invalid = await admin_ok(http, admin, "GET", TOKENS, params={"valid": "false"})
    assert sorted(t["token"] for t in invalid["registration_tokens"]) == sorted(
        ["a.b_c~d-E9", used_up["token"]]
    )

    changed = await admin_ok(
        http, admin, "PUT", f"{TOKENS}/a.b_c~d-E9", {"expiry_time": None, "uses_allowed": 5}
    )
    assert changed == _token("a.b_c~d-E9", uses_allowed=5)
    changed = await admin_ok(http, admin, "PUT", f"{TOKENS}/a.b_c~d-E9", {"uses_allowed": None})
    assert changed == _token("a.b_c~d-E9")
    assert await admin_ok(http, admin, "PUT", f"{TOKENS}/a.b_c~d-E9", {}) == changed

    assert await admin_ok(http, admin, "DELETE", f"{TOKENS}/a.b_c~d-E9") == {}
    for method in ("GET", "PUT", "DELETE"):
        message = await admin_refused(
            http,
            admin,
            method,
            f"{TOKENS}/a.b_c~d-E9",
            {"uses_allowed": 1} if method == "PUT" else None,
            status=404,
            errcode="M_NOT_FOUND",
        )
        assert message == "No such registration token: a.b_c~d-E9"


@pytest.mark.parametrize(
    "body",
    [
        {"token": ""},
        {"token": "x" * 65},
        {"token": "has space"},
        {"token": 5},
        {"length": 0},
        {"length": 65},
        {"length": "8"},
        {"length": True},
        {"uses_allowed": -1},
        {"uses_allowed": 1.5},
        {"uses_allowed": "1"},
        {"expiry_time": START_MS - 1},
        {"expiry_time": "soon"},
        # Past canonical JSON's integers: no SQLite integer holds them.
        {"expiry_time": 2**63},
        {"uses_allowed": 2**64},
    ],
)
async def test_bad_new_tokens_are_refused(env: tuple[WithAdmin, _Clock], body: Any) -> None:
    e, _ = env
    await admin_refused(
        e.client.http, e.admin, "POST", f"{TOKENS}/new", body, status=400, errcode="M_INVALID_PARAM"
    )
    assert await admin_ok(e.client.http, e.admin, "GET", TOKENS) == {"registration_tokens": []}


async def test_bad_changes_and_duplicates_are_refused(env: tuple[WithAdmin, _Clock]) -> None:
    e, _ = env
    http, admin = e.client.http, e.admin
    await admin_ok(http, admin, "POST", f"{TOKENS}/new", {"token": "abc", "uses_allowed": 2})
    message = await admin_refused(
        http,
        admin,
        "POST",
        f"{TOKENS}/new",
        {"token": "abc"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    assert message == "Token already exists: abc"
    for body in (
        {"uses_allowed": -1},
        {"uses_allowed": "2"},
        {"uses_allowed": 2**63},
        {"expiry_time": START_MS - 1},
        {"expiry_time": 2**63},
    ):
        await admin_refused(
            http, admin, "PUT", f"{TOKENS}/abc", body, status=400, errcode="M_INVALID_PARAM"
        )
    assert await admin_ok(http, admin, "GET", f"{TOKENS}/abc") == _token("abc", uses_allowed=2)
    await admin_refused(
        http, admin, "GET", TOKENS, params={"valid": "maybe"}, status=400, errcode="M_INVALID_PARAM"
    )
    status, _ = await admin_call(http, admin, "POST", f"{TOKENS}/new", [1])
    assert status == 400


async def test_only_admins_may_manage_tokens(env: tuple[WithAdmin, _Clock]) -> None:
    e, _ = env
    http = e.client.http
    await admin_ok(http, e.admin, "POST", f"{TOKENS}/new", {"token": "abc"})
    calls: list[tuple[str, str, Any]] = [
        ("GET", TOKENS, None),
        ("POST", f"{TOKENS}/new", {}),
        ("GET", f"{TOKENS}/abc", None),
        ("PUT", f"{TOKENS}/abc", {"uses_allowed": 0}),
        ("DELETE", f"{TOKENS}/abc", None),
    ]
    for method, path, body in calls:
        await admin_refused(http, e.alice, method, path, body, status=403, errcode="M_FORBIDDEN")
        await admin_refused(http, None, method, path, body, status=401, errcode="M_MISSING_TOKEN")
    assert await admin_ok(http, e.admin, "GET", TOKENS) == {"registration_tokens": [_token("abc")]}
