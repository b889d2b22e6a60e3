"""Sliding sync over real HTTP when a room's timeline_limit grows: the room
comes at once with the longer timeline and ``expanded_timeline``, not
``initial``, and without the state the client holds; the connection
remembers the longer timeline, across a restart too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import Client, SharedRoom, open_shared_room, q
from _sliding_sync import all_rooms, bodies, say, slide

from ranvier.testing.homeserver import open_test_homeserver

_STATE = [["m.room.name", ""], ["m.room.member", "$LAZY"]]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom, name="Shared") as env:
        yield env


def _state(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(event["type"], event["state_key"]) for event in room.get("required_state", ())}


def _bodies(listed_limit: int, subscribed: dict[str, int]) -> dict[str, Any]:
    return {
        "lists": {"all": all_rooms(timeline_limit=listed_limit, required_state=_STATE)},
        "room_subscriptions": {
            room_id: {"timeline_limit": limit, "required_state": _STATE}
            for room_id, limit in subscribed.items()
        },
    }


async def test_a_longer_timeline_limit_expands_the_timeline(env: SharedRoom) -> None:
    http, client, alice, bob, room_id = (
        env.client.http,
        env.client,
        env.alice,
        env.bob,
        env.room_id,
    )
    other = await client.create_room(alice, name="Other")
    await say(env, alice, other, "elsewhere")
    await say(env, bob, room_id, "one")
    await say(env, alice, room_id, "two", "three", "four", "five")
    listed = _bodies(1, {})
    opened = _bodies(1, {room_id: 4})
    first = await slide(http, alice, listed)
    assert bodies(first["rooms"][room_id]) == ["five"]
    assert _state(first["rooms"][room_id]) == {
        ("m.room.name", ""),
        ("m.room.member", alice.user_id),
    }

    larger = await slide(http, alice, opened, pos=first["pos"])
    # Sent at once, though nothing happened in the room; the other room,
    # whose limit did not grow, is not.
    assert set(larger["rooms"]) == {room_id}
    room = larger["rooms"][room_id]
    assert "initial" not in room
    assert room["expanded_timeline"] is True
    assert bodies(room) == ["two", "three", "four", "five"]
    assert room["num_live"] == 0
    # More history before it: limited, and prev_batch leads to it.
    assert room["limited"] is True
    older = await client.ok(
        alice,
        "GET",
        f"/rooms/{q(room_id)}/messages",
        params={"from": room["prev_batch"], "dir": "b", "limit": "1"},
    )
    assert [event["content"]["body"] for event in older["chunk"]] == ["one"]
    # The name is not sent again, nor the heroes; the timeline's senders'
    # memberships are (a gap drops the members a client holds).
    assert ("m.room.name", "") not in _state(room)
    assert "name" not in room
    assert "heroes" not in room
    assert _state(room) == {("m.room.member", alice.user_id)}

    # The longer timeline is remembered: nothing again, then only news.
    again = await slide(http, alice, opened, pos=larger["pos"])
    assert again["rooms"] == {}
    assert again["pos"] == larger["pos"]
    await say(env, bob, room_id, "six")
    news = await slide(http, alice, opened, pos=larger["pos"])
    room = news["rooms"][room_id]
    assert bodies(room) == ["six"]
    assert "expanded_timeline" not in room
    assert "initial" not in room
    assert room["limited"] is False
    assert _state(room) == {("m.room.member", bob.user_id)}


async def test_a_smaller_limit_without_a_gap_keeps_the_longer_timeline(env: SharedRoom) -> None:
    http, alice, room_id = env.client.http, env.alice, env.room_id
    await say(env, alice, room_id, "one", "two", "three")
    listed = _bodies(1, {})
    opened = _bodies(1, {room_id: 3})
    first = await slide(http, alice, opened)
    assert bodies(first["rooms"][room_id]) == ["one", "two", "three"]
    # Closed: one event each time, with no gap, so the client still holds
    # the last three and opening again sends nothing.
    await say(env, alice, room_id, "four")
    closed = await slide(http, alice, listed, pos=first["pos"])
    assert bodies(closed["rooms"][room_id]) == ["four"]
    assert closed["rooms"][room_id]["limited"] is False
    reopened = await slide(http, alice, opened, pos=closed["pos"])
    assert reopened["rooms"] == {}
    # Closed again, and two events with one sent: a gap. Opening again
    # sends the latest three, those before the gap among them.
    await say(env, alice, room_id, "five", "six")
    gap = await slide(http, alice, listed, pos=reopened["pos"])
    assert bodies(gap["rooms"][room_id]) == ["six"]
    assert gap["rooms"][room_id]["limited"] is True
    expanded = await slide(http, alice, opened, pos=gap["pos"])
    room = expanded["rooms"][room_id]
    assert room["expanded_timeline"] is True
    assert bodies(room) == ["four", "five", "six"]
    assert "initial" not in room


async def test_a_longer_limit_with_more_news_than_it_holds_is_not_expanded(
    env: SharedRoom,
) -> None:
    http, alice, room_id = env.client.http, env.alice, env.room_id
    listed = _bodies(1, {})
    first = await slide(http, alice, listed)
    await say(env, alice, room_id, "one", "two", "three")
    # All two events of the longer timeline are new: nothing predates the
    # position the room was sent up to, so nothing is expanded.
    answer = await slide(http, alice, _bodies(1, {room_id: 2}), pos=first["pos"])
    room = answer["rooms"][room_id]
    assert bodies(room) == ["two", "three"]
    assert room["num_live"] == 2
    assert "expanded_timeline" not in room
    assert "initial" not in room


async def test_an_invite_is_not_sent_again_for_a_longer_limit(env: SharedRoom) -> None:
    http, client, alice, carol = env.client.http, env.client, env.alice, env.carol
    invited = await client.create_room(alice, name="Invited", invite=[carol.user_id])
    first = await slide(http, carol, _bodies(1, {}))
    assert "invite_state" in first["rooms"][invited]
    again = await slide(http, carol, _bodies(1, {invited: 10}), pos=first["pos"])
    assert again["rooms"] == {}


async def test_an_expansion_after_a_restart(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        room_id = await Client(hs, http).create_room(alice, name="Kept")
        for text in ("one", "two", "three"):
            await hs.server.send_event(
                alice.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": text}
            )
        first = await slide(http, alice, _bodies(1, {}))
        assert bodies(first["rooms"][room_id]) == ["three"]
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        opened = _bodies(1, {room_id: 3})
        larger = await slide(http, alice, opened, pos=first["pos"])
        room = larger["rooms"][room_id]
        assert "initial" not in room
        assert room["expanded_timeline"] is True
        assert bodies(room) == ["one", "two", "three"]
        assert ("m.room.name", "") not in _state(room)
        quiet = await slide(http, alice, opened, pos=larger["pos"])
        assert quiet["rooms"] == {}
