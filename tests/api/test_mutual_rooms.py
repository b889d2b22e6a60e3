"""``GET /v1/mutual_rooms`` over real HTTP: the rooms both users are joined to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser

PATH = "/_matrix/client/v1/mutual_rooms"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as env:
        yield env


async def _mutual(
    env: SharedRoom, user: TestUser | None, params: Any
) -> tuple[int, dict[str, Any]]:
    headers = {} if user is None else {"Authorization": f"Bearer {user.access_token}"}
    response = await env.client.http.get(PATH, params=params, headers=headers)
    return response.status_code, response.json()


async def test_only_rooms_both_users_are_joined_to(env: SharedRoom) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    assert await _mutual(env, alice, {"user_id": bob.user_id}) == (
        200,
        {"joined": [env.room_id], "count": 1},
    )
    assert await _mutual(env, bob, {"user_id": alice.user_id}) == (
        200,
        {"joined": [env.room_id], "count": 1},
    )
    assert await _mutual(env, alice, {"user_id": carol.user_id}) == (
        200,
        {"joined": [], "count": 0},
    )
    # A second room they share, one Alice alone is in, and one Carol is only invited to.
    second = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(second)}/join", {})
    await c.create_room(alice)
    invited = await c.create_room(alice)
    await c.ok(alice, "POST", f"/rooms/{q(invited)}/invite", {"user_id": carol.user_id})
    status, answer = await _mutual(env, alice, {"user_id": bob.user_id})
    assert status == 200
    assert (sorted(answer["joined"]), answer["count"]) == (sorted([env.room_id, second]), 2)
    assert await _mutual(env, alice, {"user_id": carol.user_id}) == (
        200,
        {"joined": [], "count": 0},
    )
    # Bob leaves the first: it is no longer shared.
    await c.ok(bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    assert await _mutual(env, alice, {"user_id": bob.user_id}) == (
        200,
        {"joined": [second], "count": 1},
    )
    # A user no one knows shares nothing.
    assert await _mutual(env, alice, {"user_id": "@nobody:elsewhere.example"}) == (
        200,
        {"joined": [], "count": 0},
    )


async def test_bad_requests_are_refused(env: SharedRoom) -> None:
    alice, bob = env.alice, env.bob
    for params, errcode in (
        ({}, "M_MISSING_PARAM"),
        ({"user_id": "bob"}, "M_INVALID_PARAM"),
        ({"user_id": alice.user_id}, "M_INVALID_PARAM"),
        ({"user_id": bob.user_id, "from": "next"}, "M_INVALID_PARAM"),
    ):
        status, answer = await _mutual(env, alice, params)
        assert (status, answer["errcode"]) == (400, errcode), params
        assert isinstance(answer["error"], str)
    status, answer = await _mutual(env, None, {"user_id": bob.user_id})
    assert (status, answer["errcode"]) == (401, "M_MISSING_TOKEN")
