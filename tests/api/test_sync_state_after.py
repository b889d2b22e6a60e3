"""``/sync?use_state_after=true`` over real HTTP (spec v1.16, MSC4222): each
room carries ``state_after``, the state at the end of its timeline, and no
``state``; without the parameter, ``state`` as before and no ``state_after``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import WithAdmin, open_with_admin, q

from ranvier.server import HomeServer

ALICE = "@alice:localhost"
BOB = "@bob:localhost"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as opened:
        assert (opened.alice.user_id, opened.bob.user_id) == (ALICE, BOB)
        yield opened


def _state(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(event["type"], event["state_key"]): event["content"] for event in events}


async def _say(hs: HomeServer, user: str, room_id: str, *bodies: str) -> None:
    for body in bodies:
        await hs.send_event(user, room_id, "m.room.message", {"msgtype": "m.text", "body": body})


async def test_an_initial_sync_carries_the_whole_state_after_the_timeline(env: WithAdmin) -> None:
    room_id = await env.hs.server.create_room(ALICE, name="Lobby")
    await env.hs.server.send_event(ALICE, room_id, "m.room.topic", {"topic": "late"}, state_key="")
    room = (await env.sync(env.alice, use_state_after="true"))["rooms"]["join"][room_id]
    assert "state" not in room
    # The whole room fits in the timeline, and the state still holds it all.
    assert room["timeline"]["events"][0]["type"] == "m.room.create"
    state = _state(room["state_after"]["events"])
    assert state[("m.room.topic", "")] == {"topic": "late"}
    assert state[("m.room.name", "")] == {"name": "Lobby"}
    assert state[("m.room.member", ALICE)]["membership"] == "join"
    assert ("m.room.create", "") in state
    # Without the parameter (or with it false): state before the timeline.
    for params in ({}, {"use_state_after": "false"}):
        plain = (await env.sync(env.alice, **params))["rooms"]["join"][room_id]
        assert "state_after" not in plain
        assert plain["state"]["events"] == []


async def test_an_incremental_sync_carries_the_changes_up_to_the_timeline_end(
    env: WithAdmin,
) -> None:
    room_id = await env.hs.server.create_room(ALICE, name="Lobby")
    since = (await env.sync(env.alice))["next_batch"]
    await env.hs.server.send_event(ALICE, room_id, "m.room.topic", {"topic": "new"}, state_key="")
    await _say(env.hs.server, ALICE, room_id, "hello")
    room = (await env.sync(env.alice, since=since, use_state_after="true"))["rooms"]["join"][
        room_id
    ]
    assert room["timeline"]["limited"] is False
    assert "state" not in room
    # The topic is in the timeline and in state_after: only what changed.
    assert _state(room["state_after"]["events"]) == {("m.room.topic", ""): {"topic": "new"}}
    plain = (await env.sync(env.alice, since=since))["rooms"]["join"][room_id]
    assert plain["state"]["events"] == []
    assert "state_after" not in plain


async def test_a_limited_sync_carries_changes_before_and_inside_the_timeline(
    env: WithAdmin,
) -> None:
    room_id = await env.hs.server.create_room(ALICE, name="Lobby")
    since = (await env.sync(env.alice))["next_batch"]
    await env.hs.server.send_event(ALICE, room_id, "m.room.topic", {"topic": "early"}, state_key="")
    await _say(env.hs.server, ALICE, room_id, *(f"m{i}" for i in range(5)))
    await env.hs.server.send_event(ALICE, room_id, "m.room.name", {"name": "Hall"}, state_key="")
    limit = json.dumps({"room": {"timeline": {"limit": 3}}})
    body = await env.sync(env.alice, since=since, filter=limit, use_state_after="true")
    room = body["rooms"]["join"][room_id]
    assert room["timeline"]["limited"] is True
    assert room["timeline"]["events"][-1]["type"] == "m.room.name"
    assert _state(room["state_after"]["events"]) == {
        ("m.room.topic", ""): {"topic": "early"},
        ("m.room.name", ""): {"name": "Hall"},
    }
    plain = (await env.sync(env.alice, since=since, filter=limit))["rooms"]["join"][room_id]
    assert _state(plain["state"]["events"]) == {("m.room.topic", ""): {"topic": "early"}}


async def test_a_left_room_carries_the_leave_in_state_after(env: WithAdmin) -> None:
    room_id = await env.hs.server.create_room(ALICE)
    await env.hs.server.invite(ALICE, room_id, BOB)
    await env.hs.server.join_room(BOB, room_id)
    since = (await env.sync(env.bob))["next_batch"]
    await env.hs.server.leave_room(BOB, room_id)
    body = await env.sync(env.bob, since=since, use_state_after="true")
    room = body["rooms"]["leave"][room_id]
    assert "state" not in room
    state = _state(room["state_after"]["events"])
    assert state[("m.room.member", BOB)]["membership"] == "leave"


async def test_lazy_loading_sends_the_senders_membership_at_the_timeline_end(
    env: WithAdmin,
) -> None:
    room_id = await env.hs.server.create_room(ALICE)
    await env.hs.server.invite(ALICE, room_id, BOB)
    await env.hs.server.join_room(BOB, room_id)
    since = (await env.sync(env.alice))["next_batch"]
    await _say(env.hs.server, BOB, room_id, *(f"m{i}" for i in range(3)))
    await env.hs.server.send_event(
        BOB,
        room_id,
        "m.room.member",
        {"membership": "join", "displayname": "Robert"},
        state_key=BOB,
    )
    await _say(env.hs.server, ALICE, room_id, "a0")
    lazy = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 3}}})
    body = await env.sync(env.alice, since=since, filter=lazy, use_state_after="true")
    room = body["rooms"]["join"][room_id]
    assert [event.get("content", {}).get("body") for event in room["timeline"]["events"]] == [
        "m2",
        None,
        "a0",
    ]
    # Bob's membership as it stands after the timeline, with his new name,
    # not the one he sent m2 with.
    state = _state(room["state_after"]["events"])
    assert state[("m.room.member", BOB)]["displayname"] == "Robert"


@pytest.mark.parametrize("preset", ["public_chat", "private_chat"])
async def test_a_lazy_initial_sync_carries_every_timeline_senders_membership(
    env: WithAdmin, preset: str
) -> None:
    # A new chat where the other member joined and has not spoken yet: the
    # joins are in the timeline, and with use_state_after the client may
    # take state from nowhere else, so both memberships must be in it.
    client = env.client
    room_id = await client.create_room(env.alice, preset=preset)
    if preset == "private_chat":
        await client.ok(env.alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": BOB})
    await client.ok(env.bob, "POST", f"/rooms/{q(room_id)}/join", {})
    lazy = json.dumps({"room": {"timeline": {"limit": 20}, "state": {"lazy_load_members": True}}})
    room = (await env.sync(env.alice, filter=lazy, use_state_after="true"))["rooms"]["join"][
        room_id
    ]
    assert "state" not in room
    senders = {event["sender"] for event in room["timeline"]["events"]}
    assert senders == {ALICE, BOB}
    state = _state(room["state_after"]["events"])
    members = {key for (kind, key) in state if kind == "m.room.member"}
    assert members == senders
    assert state[("m.room.member", BOB)]["membership"] == "join"
    assert state[("m.room.member", ALICE)]["membership"] == "join"
