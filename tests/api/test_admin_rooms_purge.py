"""Rooms purged through the room admin API over real HTTP: by default a
deleted room's stored rows go, the server answers as if it never had the
room, its block stays, and its former members carry on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q
from _sliding_sync import all_rooms, slide

from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _send(env: WithAdmin, user: TestUser, room_id: str, body: str, txn: str) -> str:
    answer = await env.client.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _room_ids(env: WithAdmin) -> list[str]:
    answer: dict[str, Any] = await admin_ok(env.client.http, env.admin, "GET", "/v1/rooms")
    return sorted(room["room_id"] for room in answer["rooms"])


async def test_a_purged_room_is_gone_but_its_block(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(
        alice, preset="public_chat", room_alias_name="doomed", visibility="public"
    )
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    message = await _send(env, bob, room_id, "abusive words", "t1")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(message)}", {})
    await c.ok(bob, "PUT", f"/user/{q(bob.user_id)}/rooms/{q(room_id)}/tags/u.work", {})
    other = await c.create_room(alice, preset="public_chat")
    since = (await env.sync(bob))["next_batch"]
    lists = {"lists": {"all": all_rooms(ranges=[[0, 9]])}}
    slid = await slide(http, bob, lists)
    assert room_id in slid["rooms"]

    answer = await admin_ok(http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {"block": True})
    status = await admin_ok(http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}")
    assert (status["status"], "error" in status) == ("complete", False)
    assert sorted(status["shutdown_room"]["kicked_users"]) == sorted([alice.user_id, bob.user_id])
    assert status["shutdown_room"]["local_aliases"] == [f"#doomed:{env.hs.server_name}"]

    # The admin API no longer knows the room; the other room is untouched.
    await admin_refused(
        http, admin, "GET", f"/v1/rooms/{q(room_id)}", status=404, errcode="M_NOT_FOUND"
    )
    assert await _room_ids(env) == [other]
    # The block survives the purge: nobody joins it again.
    block = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/block")
    assert block == {"block": True, "user_id": admin.user_id}
    await c.refused(bob, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN")
    # Its room account data is gone with it.
    tags = await c.ok(bob, "GET", f"/user/{q(bob.user_id)}/rooms/{q(room_id)}/tags")
    assert tags == {"tags": {}}

    # Bob's syncs, from before the purge and from nothing, answer without it.
    synced = await env.sync(bob, since=since, timeout=0)
    for section in ("join", "invite", "knock"):
        assert room_id not in synced["rooms"].get(section, {})
    initial = await env.sync(bob)
    for section in ("join", "invite", "knock", "leave"):
        assert room_id not in initial["rooms"].get(section, {})
    # So does his sliding sync, from its position before the purge.
    slid = await slide(http, bob, lists, pos=slid["pos"], timeout_ms=0)
    assert (slid["rooms"], slid["lists"]["all"]["count"]) == ({}, 0)
    # And he carries on: a room of his own, its message in his next sync.
    mine = await c.create_room(bob)
    hello = await _send(env, bob, mine, "hello again", "t2")
    later = await env.sync(bob, since=synced["next_batch"], timeout=0)
    timeline = later["rooms"]["join"][mine]["timeline"]["events"]
    assert hello in [event["event_id"] for event in timeline]
    # The status of the deletion is still there to read.
    by_room = await admin_ok(http, admin, "GET", f"/v2/rooms/{q(room_id)}/delete_status")
    assert by_room == {"results": [status]}


async def test_the_first_version_answers_what_the_shut_did(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    room_id = await c.create_room(alice, preset="public_chat")
    answer = await admin_ok(http, admin, "DELETE", f"/v1/rooms/{q(room_id)}", {})
    assert answer == {
        "kicked_users": [alice.user_id],
        "failed_to_kick_users": [],
        "local_aliases": [],
        "new_room_id": None,
    }
    await admin_refused(
        http, admin, "GET", f"/v1/rooms/{q(room_id)}", status=404, errcode="M_NOT_FOUND"
    )
    # Not blocked: a room of the same ID would be joinable, were it anywhere.
    block = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/block")
    assert block == {"block": False}
    # Purged once, it is unknown to a second delete.
    await admin_refused(
        http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {},
        status=400, errcode="M_INVALID_PARAM",
    )  # fmt: skip


async def test_purge_false_keeps_the_room_and_its_events(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await _send(env, bob, room_id, "kept words", "t1")
    await admin_ok(http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {"purge": False})
    details = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}")
    assert (details["room_id"], details["joined_members"]) == (room_id, 0)
    # Bob left, but the history he saw is still there to read.
    messages = await c.ok(bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b"})
    bodies = [event["content"].get("body") for event in messages["chunk"]]
    assert "kept words" in bodies


async def test_purge_flags_must_be_booleans(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    room_id = await c.create_room(alice, preset="public_chat")
    path = f"/v2/rooms/{q(room_id)}"
    for body in ({"purge": 1}, {"force_purge": "yes"}):
        await admin_refused(http, admin, "DELETE", path, body, status=400, errcode="M_BAD_JSON")
    assert await _room_ids(env) == [room_id]
