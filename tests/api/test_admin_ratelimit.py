"""Admins' rate overrides over real HTTP: read, set and deleted at
Synapse's paths, and honoured by the client API's rate limiters at once:
a rate of 0 by every per-user limit, a positive rate by the message limit
alone, and the admin's own override by what they do through a puppet
token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path

import msgspec
import pytest
from _admin import admin_ok, admin_refused
from _client import Client, WithAdmin, q

from ranvier.api.ratelimit import USER_CATEGORIES
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


# --- Every per-user limit -------------------------------------------------------------

# Next to nothing after the first action.
_ONE: RateConfig = RateConfig(per_second=0.0001, burst=1)


@asynccontextmanager
async def _limited_to_one(tmp_path: Path, *categories: str) -> AsyncIterator[WithAdmin]:
    """A server on which each of ``categories`` allows one action at once
    (the other categories their defaults, plenty for the set-up), with
    users to invite."""
    config = config_for_tests(tmp_path / "hs", rate_limits=True)
    config = msgspec.structs.replace(
        config,
        ratelimit=msgspec.structs.replace(config.ratelimit, **dict.fromkeys(categories, _ONE)),
    )
    async with (
        open_test_homeserver(tmp_path / "hs", config=config) as hs,
        hs.client() as http,
    ):
        env = WithAdmin(
            hs,
            Client(hs, http),
            await hs.register_user("alice"),
            await hs.register_user("bob"),
            await hs.register_user("admin", admin=True),
        )
        for n in range(4):
            await hs.register_user(f"invitee{n}")
        yield env


def _member(room_id: str, user_id: str) -> str:
    return f"/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}"


async def _public_room(env: WithAdmin) -> str:
    # The admin's: no limit of theirs is in the way of the set-up.
    return await env.client.create_room(env.admin, preset="public_chat")


# One action of a category by a user, (status, errcode): the user's n-th.
_Act = Callable[[WithAdmin, TestUser, int], Awaitable[tuple[int, str | None]]]


async def _call(
    env: WithAdmin, user: TestUser, method: str, path: str, body: object
) -> tuple[int, str | None]:
    status, answer = await env.client.call(user, method, path, body)
    assert status in (200, 429), (method, path, answer)
    return status, answer.get("errcode")


async def _create_room(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    return await _call(env, user, "POST", "/createRoom", {})


async def _join(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    return await _call(env, user, "POST", f"/rooms/{q(await _public_room(env))}/join", {})


async def _join_through_state(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    room_id = await _public_room(env)
    return await _call(env, user, "PUT", _member(room_id, user.user_id), {"membership": "join"})


def _invitee(env: WithAdmin, n: int) -> str:
    return f"@invitee{n}:{env.hs.server_name}"


async def _own_room(env: WithAdmin, user: TestUser) -> str:
    rooms = await env.client.ok(user, "GET", "/joined_rooms")
    if rooms["joined_rooms"]:
        return str(rooms["joined_rooms"][0])
    return await env.client.create_room(user)


async def _invite(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    room_id = await _own_room(env, user)
    return await _call(
        env, user, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": _invitee(env, n)}
    )


async def _invite_through_state(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    room_id = await _own_room(env, user)
    path = _member(room_id, _invitee(env, n))
    return await _call(env, user, "PUT", path, {"membership": "invite"})


async def _report(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    room_id = await _own_room(env, user)
    return await _call(env, user, "POST", f"/rooms/{q(room_id)}/report", {"reason": f"r{n}"})


async def _create_media(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    response = await env.client.http.post(
        "/_matrix/media/v1/create", headers={"Authorization": f"Bearer {user.access_token}"}
    )
    assert response.status_code in (200, 429), response.text
    return response.status_code, response.json().get("errcode")


async def _message(env: WithAdmin, user: TestUser, n: int) -> tuple[int, str | None]:
    room_id = await _own_room(env, user)
    path = f"/rooms/{q(room_id)}/send/m.room.message/t{next(_txn)}"
    return await _call(env, user, "PUT", path, {"msgtype": "m.text", "body": "hello"})


_ACTIONS: dict[str, tuple[str, _Act]] = {
    "createRoom": ("room_creation", _create_room),
    "join": ("join", _join),
    "join through /state": ("join", _join_through_state),
    "invite": ("invite", _invite),
    "invite through /state": ("invite", _invite_through_state),
    "report": ("report", _report),
    "media create": ("media_create", _create_media),
    "message": ("message", _message),
}


def test_every_per_user_category_is_covered_here() -> None:
    assert {category for category, _ in _ACTIONS.values()} == USER_CATEGORIES


_REFUSED = (429, "M_LIMIT_EXCEEDED")
_TAKEN = (200, None)


@pytest.mark.parametrize("action", sorted(_ACTIONS))
async def test_an_override_of_rate_0_lifts_each_per_user_limit(tmp_path: Path, action: str) -> None:
    """Alice, overridden with a rate of 0, does twice what stops Bob the
    second time; taking the override away limits her again."""
    category, act = _ACTIONS[action]
    async with _limited_to_one(tmp_path, category) as env:
        http, admin, alice, bob = env.client.http, env.admin, env.alice, env.bob
        path = f"/v1/users/{q(alice.user_id)}/override_ratelimit"
        await admin_ok(http, admin, "POST", path, {"messages_per_second": 0, "burst_count": 0})
        # The set-up's room (Alice's and Bob's own) comes before the counting.
        for user in (alice, bob):
            if category in ("invite", "report", "message"):
                await _own_room(env, user)
        assert [await act(env, alice, n) for n in range(2)] == [_TAKEN, _TAKEN]
        assert [await act(env, bob, n) for n in range(2)] == [_TAKEN, _REFUSED]
        # Nothing she did was counted.
        await admin_ok(http, admin, "DELETE", path)
        assert [await act(env, alice, n) for n in (2, 3)] == [_TAKEN, _REFUSED]


async def test_an_own_rate_is_the_message_limits_alone(tmp_path: Path) -> None:
    """A positive rate and burst raise Alice's message limit, not her joins:
    its numbers are messages per second (Synapse's other limiters only
    look at whether the rate is 0)."""
    async with _limited_to_one(tmp_path, "join", "message") as env:
        path = f"/v1/users/{q(env.alice.user_id)}/override_ratelimit"
        own = {"messages_per_second": 100, "burst_count": 100}
        await admin_ok(env.client.http, env.admin, "POST", path, own)
        await _own_room(env, env.alice)
        assert [await _message(env, env.alice, n) for n in range(3)] == [_TAKEN] * 3
        assert [await _join(env, env.alice, n) for n in range(2)] == [_TAKEN, _REFUSED]


async def test_a_puppet_token_goes_by_the_admins_override(tmp_path: Path) -> None:
    """The admin behind a puppet token holds it: their override of rate 0
    lifts Bob's join limit for what they do as Bob, not for Bob's own
    token, whose joins count as before."""
    async with _limited_to_one(tmp_path, "join") as env:
        http, admin, bob = env.client.http, env.admin, env.bob
        answer = await admin_ok(http, admin, "POST", f"/v1/users/{q(bob.user_id)}/login", {})
        puppet = TestUser(bob.user_id, answer["access_token"], "")
        # Without an override of the admin's, the puppet counts as Bob.
        assert [await _join(env, puppet, n) for n in range(2)] == [_TAKEN, _REFUSED]

        path = f"/v1/users/{q(admin.user_id)}/override_ratelimit"
        await admin_ok(http, admin, "POST", path, {"messages_per_second": 0, "burst_count": 0})
        assert [await _join(env, puppet, n) for n in range(2)] == [_TAKEN, _TAKEN]
        assert await _join(env, bob, 0) == _REFUSED
