"""Invite blocking over real HTTP (spec v1.18, MSC4380): a user whose
``m.invite_permission_config`` has ``default_action: block`` is invited by
nobody here, and their sync shows no invites while the block lasts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q
from _sliding_sync import all_rooms, slide

from ranvier.testing.homeserver import TestUser

Env = SharedRoom
_CONFIG = "m.invite_permission_config"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as env:
        yield env


async def _set(env: Env, user: TestUser, content: dict[str, Any]) -> None:
    path = f"/user/{q(user.user_id)}/account_data/{_CONFIG}"
    await env.client.ok(user, "PUT", path, content)


async def _membership(env: Env, room_id: str, user: TestUser) -> str | None:
    state = await env.client.state(env.alice, room_id)
    event = state.get(("m.room.member", user.user_id))
    return None if event is None else str(event["content"]["membership"])


async def test_every_way_to_invite_a_blocking_user_is_refused(env: Env) -> None:
    c, alice, carol = env.client, env.alice, env.carol
    room = f"/rooms/{q(env.room_id)}"
    await _set(env, carol, {"default_action": "block"})
    await c.refused(
        alice,
        "POST",
        f"{room}/invite",
        {"user_id": carol.user_id},
        status=403,
        errcode="M_INVITE_BLOCKED",
    )
    await c.refused(
        alice,
        "PUT",
        f"{room}/state/m.room.member/{q(carol.user_id)}",
        {"membership": "invite"},
        status=403,
        errcode="M_INVITE_BLOCKED",
    )
    assert await _membership(env, env.room_id, carol) is None
    # createRoom goes ahead without her invite, with Bob's.
    created = await c.create_room(alice, invite=[carol.user_id, env.bob.user_id])
    assert await _membership(env, created, carol) is None
    assert await _membership(env, created, env.bob) == "invite"
    # Another value, or none, blocks nothing.
    await _set(env, carol, {"default_action": "allow"})
    await c.ok(alice, "POST", f"{room}/invite", {"user_id": carol.user_id})
    assert await _membership(env, env.room_id, carol) == "invite"


async def test_held_invites_are_hidden_from_sync_while_blocked(env: Env) -> None:
    c, alice, carol = env.client, env.alice, env.carol
    await c.ok(alice, "POST", f"/rooms/{q(env.room_id)}/invite", {"user_id": carol.user_id})
    assert env.room_id in (await env.sync(carol))["rooms"]["invite"]
    since = (await env.sync(carol))["next_batch"]
    await _set(env, carol, {"default_action": "block"})
    assert (await env.sync(carol))["rooms"]["invite"] == {}
    assert (await env.sync(carol, since=since))["rooms"]["invite"] == {}
    answer = await slide(env.client.http, carol, {"lists": {"all": all_rooms(ranges=[[0, 9]])}})
    assert env.room_id not in answer.get("rooms", {})
    assert answer["lists"]["all"]["count"] == 0
    # The room's state still holds the invite.
    assert await _membership(env, env.room_id, carol) == "invite"
    # The block lifted (the setting without default_action): shown again.
    await _set(env, carol, {})
    assert env.room_id in (await env.sync(carol))["rooms"]["invite"]
    answer = await slide(env.client.http, carol, {"lists": {"all": all_rooms(ranges=[[0, 9]])}})
    assert env.room_id in answer["rooms"]
