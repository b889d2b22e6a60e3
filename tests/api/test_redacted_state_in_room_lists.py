"""What the public room list, room summaries and space hierarchies show of
a room's state once a state event was redacted: its redacted form, as
``/state`` shows it, and not the content a moderator removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import WithAdmin, open_with_admin, q

from ranvier.testing.homeserver import TestUser

_V1 = "/_matrix/client/v1"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _redact(env: WithAdmin, user: TestUser, room_id: str, event_id: str) -> None:
    await env.client.ok(
        user, "PUT", f"/rooms/{q(room_id)}/redact/{q(event_id)}/r{event_id[1:9]}", {}
    )


async def _get(env: WithAdmin, user: TestUser, path: str) -> dict[str, Any]:
    response = await env.client.http.get(
        path, headers={"Authorization": f"Bearer {user.access_token}"}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_redacted_name_and_topic_leave_the_public_room_list(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat", visibility="public")
    name = await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "Kept"})
    topic = await c.ok(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "a private address"}
    )
    listed = (await c.ok(bob, "GET", "/publicRooms"))["chunk"]
    assert [(room["name"], room["topic"]) for room in listed] == [("Kept", "a private address")]

    await _redact(env, alice, room_id, topic["event_id"])
    (room,) = (await c.ok(bob, "GET", "/publicRooms"))["chunk"]
    assert room["name"] == "Kept"
    assert "topic" not in room
    await _redact(env, alice, room_id, name["event_id"])
    (room,) = (await c.ok(bob, "GET", "/publicRooms"))["chunk"]
    assert "name" not in room
    assert "topic" not in room

    summary = await _get(env, bob, f"{_V1}/room_summary/{q(room_id)}")
    assert summary["room_id"] == room_id
    assert "name" not in summary
    assert "topic" not in summary


async def test_a_redacted_space_child_is_no_child_any_more(env: WithAdmin) -> None:
    c, alice = env.client, env.alice
    space = await c.create_room(alice, preset="public_chat", creation_content={"type": "m.space"})
    child = await c.create_room(alice, preset="public_chat")
    link = await c.ok(
        alice,
        "PUT",
        f"/rooms/{q(space)}/state/m.space.child/{q(child)}",
        {"via": [env.hs.server_name]},
    )
    walked = await _get(env, alice, f"{_V1}/rooms/{q(space)}/hierarchy")
    assert [room["room_id"] for room in walked["rooms"]] == [space, child]

    await _redact(env, alice, space, link["event_id"])
    walked = await _get(env, alice, f"{_V1}/rooms/{q(space)}/hierarchy")
    assert [room["room_id"] for room in walked["rooms"]] == [space]
    assert walked["rooms"][0]["children_state"] == []
