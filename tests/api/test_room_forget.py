"""Forgetting rooms over HTTP: who may forget, what a forgotten room no
longer shows (history, state, /sync's leave section, sliding sync), and
being in the room again undoing it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q
from _sliding_sync import all_rooms, slide

from ranvier.testing.homeserver import TestUser

_INCLUDE_LEAVE = json.dumps({"room": {"include_leave": True}})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _post(env: SharedRoom, user: TestUser, room_id: str, action: str, body: Any) -> Any:
    return await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/{action}", body)


async def _say(env: SharedRoom, user: TestUser, room_id: str, body: str, txn: str) -> str:
    path = f"/rooms/{q(room_id)}/send/m.room.message/{txn}"
    sent = await env.client.ok(user, "PUT", path, {"msgtype": "m.text", "body": body})
    event_id: str = sent["event_id"]
    return event_id


async def _message_ids(env: SharedRoom, user: TestUser, room_id: str) -> list[str]:
    page = await env.client.ok(
        user, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "100"}
    )
    return [event["event_id"] for event in page["chunk"] if event["type"] == "m.room.message"]


async def test_only_a_room_the_user_is_out_of_can_be_forgotten(env: SharedRoom) -> None:
    c = env.client
    # Joined, then invited: both refused, and nothing is kept.
    await c.refused(
        env.bob, "POST", f"/rooms/{q(env.room_id)}/forget", {}, status=400, errcode="M_UNKNOWN"
    )
    private = await c.create_room(env.alice, preset="private_chat")
    await _post(env, env.alice, private, "invite", {"user_id": env.carol.user_id})
    await c.refused(
        env.carol, "POST", f"/rooms/{q(private)}/forget", {}, status=400, errcode="M_UNKNOWN"
    )
    assert await env.hs.server.storage.forgotten_rooms.forgotten_rooms(env.carol.user_id) == (
        frozenset()
    )
    # An invite rejected is a room the user may forget, as is one they
    # never had anything to do with (nothing to hide there).
    await _post(env, env.carol, private, "leave", {})
    assert await _post(env, env.carol, private, "forget", {}) == {}
    assert await _post(env, env.carol, env.room_id, "forget", {}) == {}
    assert await env.hs.server.storage.forgotten_rooms.forgotten_rooms(env.carol.user_id) == {
        private
    }
    # The last member out forgets it too.
    await _post(env, env.alice, private, "leave", {})
    assert await _post(env, env.alice, private, "forget", {}) == {}


async def test_a_forgotten_room_is_no_longer_readable(env: SharedRoom) -> None:
    c, bob, room = env.client, env.bob, q(env.room_id)
    message = await _say(env, env.alice, env.room_id, "Hello world!", "hello")
    await _post(env, bob, env.room_id, "leave", {})
    # Left: the room as it was at the leave is still Bob's to read.
    assert message in await _message_ids(env, bob, env.room_id)
    await c.ok(bob, "GET", f"/rooms/{room}/context/{q(message)}")
    await c.ok(bob, "GET", f"/rooms/{room}/event/{q(message)}")
    await c.ok(bob, "GET", f"/rooms/{room}/state")
    await c.ok(bob, "GET", f"/rooms/{room}/members")

    await _post(env, bob, env.room_id, "forget", {})
    await c.refused(
        bob,
        "GET",
        f"/rooms/{room}/messages",
        params={"dir": "b"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(
        bob, "GET", f"/rooms/{room}/context/{q(message)}", status=403, errcode="M_FORBIDDEN"
    )
    for path in ("/state", "/state/m.room.create", "/members"):
        await c.refused(bob, "GET", f"/rooms/{room}{path}", status=403, errcode="M_FORBIDDEN")
    await c.refused(
        bob, "GET", f"/rooms/{room}/event/{q(message)}", status=404, errcode="M_NOT_FOUND"
    )
    # Alice, still in the room, reads it as before.
    assert message in await _message_ids(env, env.alice, env.room_id)


async def test_a_forgotten_world_readable_room_stays_readable_as_to_anyone(
    env: SharedRoom,
) -> None:
    c, bob, room = env.client, env.bob, q(env.room_id)
    await c.ok(
        env.alice,
        "PUT",
        f"/rooms/{room}/state/m.room.history_visibility",
        {"history_visibility": "world_readable"},
    )
    message = await _say(env, env.alice, env.room_id, "for all", "public")
    await _post(env, bob, env.room_id, "leave", {})
    await _post(env, bob, env.room_id, "forget", {})
    assert message in await _message_ids(env, bob, env.room_id)
    assert message in await _message_ids(env, env.carol, env.room_id)


async def test_a_forgotten_room_leaves_sync(env: SharedRoom) -> None:
    bob = env.bob
    await _say(env, env.alice, env.room_id, "Hello world!", "hello")
    before_leave = (await env.sync(bob))["next_batch"]
    await _post(env, bob, env.room_id, "leave", {})
    left = await env.sync(bob, filter=_INCLUDE_LEAVE)
    assert env.room_id in left["rooms"]["leave"]
    assert env.room_id in (await env.sync(bob, since=before_leave))["rooms"]["leave"]

    await _post(env, bob, env.room_id, "forget", {})
    for answer in (
        await env.sync(bob, filter=_INCLUDE_LEAVE),
        await env.sync(bob, since=before_leave),
        await env.sync(bob),
    ):
        for section in ("join", "invite", "leave", "knock"):
            assert env.room_id not in answer["rooms"][section], section


async def test_a_room_kicked_from_can_be_forgotten(env: SharedRoom) -> None:
    bob = env.bob
    await _say(env, env.alice, env.room_id, "Hello world!", "hello")
    await _post(env, env.alice, env.room_id, "kick", {"user_id": bob.user_id})
    assert env.room_id in (await env.sync(bob, filter=_INCLUDE_LEAVE))["rooms"]["leave"]
    assert await _post(env, bob, env.room_id, "forget", {}) == {}
    answer = await env.sync(bob, filter=_INCLUDE_LEAVE)
    assert env.room_id not in answer["rooms"]["leave"]
    assert env.room_id not in answer["rooms"]["join"]


async def test_sliding_sync_leaves_a_forgotten_room_out(env: SharedRoom) -> None:
    bob, http = env.bob, env.client.http
    quiet = await env.client.create_room(env.alice, preset="public_chat")
    await _post(env, bob, quiet, "join", {})
    await _post(env, env.alice, env.room_id, "kick", {"user_id": bob.user_id})
    body = {"lists": {"all": all_rooms(ranges=[[0, 10]])}}
    answer = await slide(http, bob, body)
    assert answer["lists"]["all"]["count"] == 2
    assert set(answer["rooms"]) == {env.room_id, quiet}

    await _post(env, bob, env.room_id, "forget", {})
    fresh = await slide(http, bob, {**body, "conn_id": "again"})
    assert fresh["lists"]["all"]["count"] == 1
    assert set(fresh["rooms"]) == {quiet}
    subscribed = await slide(
        http, bob, {"conn_id": "by_id", "room_subscriptions": {env.room_id: all_rooms()}}
    )
    assert env.room_id not in subscribed.get("rooms", {})


async def test_an_invite_and_join_undo_the_forgetting(env: SharedRoom) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="private_chat")
    await _post(env, alice, room_id, "invite", {"user_id": bob.user_id})
    await _post(env, bob, room_id, "join", {})
    before = await _say(env, bob, room_id, "Before leave", "before")
    await _post(env, bob, room_id, "leave", {})
    await _post(env, bob, room_id, "forget", {})
    await c.refused(bob, "POST", f"/join/{q(room_id)}", {}, status=403, errcode="M_FORBIDDEN")
    await c.refused(
        bob,
        "GET",
        f"/rooms/{q(room_id)}/messages",
        params={"dir": "b"},
        status=403,
        errcode="M_FORBIDDEN",
    )

    # The invite alone clears it; the join lets Bob read the history again.
    await _post(env, alice, room_id, "invite", {"user_id": bob.user_id})
    forgotten = env.hs.server.storage.forgotten_rooms
    assert not await forgotten.has_forgotten(bob.user_id, room_id)
    await _post(env, bob, room_id, "join", {})
    assert before in await _message_ids(env, bob, room_id)
    after = await _say(env, bob, room_id, "After rejoin", "after")
    assert (await _message_ids(env, bob, room_id))[0] == after

    # Left again without forgetting: the room is Bob's to read as he left it.
    await _post(env, bob, room_id, "leave", {})
    assert after in await _message_ids(env, bob, room_id)
    assert room_id in (await env.sync(bob, filter=_INCLUDE_LEAVE))["rooms"]["leave"]


async def test_a_knock_undoes_the_forgetting(env: SharedRoom) -> None:
    c, alice, carol = env.client, env.alice, env.carol
    room_id = await c.create_room(alice, preset="private_chat", room_version="10")
    await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.join_rules", {"join_rule": "knock"})
    await _post(env, alice, room_id, "invite", {"user_id": carol.user_id})
    await _post(env, carol, room_id, "leave", {})
    await _post(env, carol, room_id, "forget", {})
    forgotten = env.hs.server.storage.forgotten_rooms
    assert await forgotten.has_forgotten(carol.user_id, room_id)
    await c.ok(carol, "POST", f"/knock/{q(room_id)}", {})
    assert not await forgotten.has_forgotten(carol.user_id, room_id)
