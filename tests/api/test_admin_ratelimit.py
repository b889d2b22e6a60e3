"""Admins' message rate overrides over real HTTP: read, set and deleted at
Synapse's paths, and honoured by the client API's rate limiter at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path

import msgspec
import pytest
from _admin import admin_ok, admin_refused
from _client import Client, WithAdmin, q

from ranvier.config import RateConfig
from ranvier.testing import open_test_homeserver
from ranvier.testing.homeserver import TestUser, config_for_tests

_txn = count()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    # Two messages at once, and next to nothing after that.
    config = config_for_tests(tmp_path / "hs", rate_limits=True)
    config = msgspec.structs.replace(
        config,
        ratelimit=msgspec.structs.replace(
            config.ratelimit, message=RateConfig(per_second=0.0001, burst=2)
        ),
    )
    async with (
        open_test_homeserver(tmp_path / "hs", config=config) as hs,
        hs.client() as http,
    ):
        yield WithAdmin(
            hs,
            Client(hs, http),
            await hs.register_user("alice"),
            await hs.register_user("bob"),
            await hs.register_user("admin", admin=True),
        )


async def _send(c: Client, user: TestUser, room_id: str) -> tuple[int, str | None]:
    status, answer = await c.call(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t{next(_txn)}",
        {"msgtype": "m.text", "body": "hello"},
    )
    return status, answer.get("errcode")


async def test_an_override_lifts_the_limit_and_deleting_it_restores_it(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    room_id = await c.create_room(alice)
    path = f"/v1/users/{q(alice.user_id)}/override_ratelimit"
    assert await admin_ok(http, admin, "GET", path) == {}
    assert [await _send(c, alice, room_id) for _ in range(3)] == [
        (200, None),
        (200, None),
        (429, "M_LIMIT_EXCEEDED"),
    ]

    unlimited = {"messages_per_second": 0, "burst_count": 0}
    assert await admin_ok(http, admin, "POST", path, {}) == unlimited
    assert await admin_ok(http, admin, "GET", path) == unlimited
    assert [await _send(c, alice, room_id) for _ in range(5)] == [(200, None)] * 5

    # An own rate: counted afresh, with its own burst.
    own = {"messages_per_second": 1, "burst_count": 30}
    assert await admin_ok(http, admin, "POST", path, own) == own
    assert await admin_ok(http, admin, "GET", path) == own
    assert [await _send(c, alice, room_id) for _ in range(4)] == [(200, None)] * 4

    assert await admin_ok(http, admin, "DELETE", path) == {}
    assert await admin_ok(http, admin, "GET", path) == {}
    assert await _send(c, alice, room_id) == (429, "M_LIMIT_EXCEEDED")
    # Bob was never overridden, and is limited as before.
    bobs = await c.create_room(env.bob)
    assert [await _send(c, env.bob, bobs) for _ in range(3)] == [
        (200, None),
        (200, None),
        (429, "M_LIMIT_EXCEEDED"),
    ]


async def test_overrides_are_refused_to_non_admins_and_bad_input(env: WithAdmin) -> None:
    http, admin, bob = env.client.http, env.admin, env.bob
    path = f"/v1/users/{q(env.alice.user_id)}/override_ratelimit"
    for method in ("GET", "POST", "DELETE"):
        await admin_refused(http, bob, method, path, {}, status=403, errcode="M_FORBIDDEN")
        await admin_refused(
            http,
            admin,
            method,
            f"/v1/users/{q('@x:elsewhere.example')}/override_ratelimit",
            {},
            status=400,
            errcode="M_INVALID_PARAM",
        )
        await admin_refused(
            http,
            admin,
            method,
            f"/v1/users/{q('@nobody:' + env.hs.server_name)}/override_ratelimit",
            {},
            status=404,
            errcode="M_NOT_FOUND",
        )
    for body in (
        {"messages_per_second": -1},
        {"messages_per_second": "5"},
        {"burst_count": 1.5},
        {"burst_count": True},
        {"messages_per_second": 5, "burst_count": 0},
    ):
        await admin_refused(http, admin, "POST", path, body, status=400, errcode="M_INVALID_PARAM")
    # Nothing refused was kept.
    assert await admin_ok(http, admin, "GET", path) == {}
