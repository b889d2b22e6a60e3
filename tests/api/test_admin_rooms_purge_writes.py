"""A former member's writes to a purged room over real HTTP: receipts,
typing and read markers are refused as in a room the server never had,
and room account data and tags are kept (the spec asks no membership for
them) without bringing the room itself back."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q

from ranvier.testing.homeserver import TestUser
from ranvier.testing.room_rows import RoomRows, read_tables


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _connect(env: WithAdmin) -> sqlite3.Connection:
    return sqlite3.connect(env.hs.server.config.paths.database)


def _tables_holding(env: WithAdmin, rows: RoomRows) -> dict[str, int]:
    """How many rows of each table name the room or one of its events."""
    conn = _connect(env)
    try:
        tables = read_tables(conn)
    finally:
        conn.close()
    held = {
        table: sum(1 for row in found if rows.holds(table, row)) for table, found in tables.items()
    }
    return {table: count for table, count in held.items() if count}


def _room_rows(env: WithAdmin, room_id: str) -> RoomRows:
    """The room's rows as they are now, to tell its rows from others' later."""
    conn = _connect(env)
    try:
        return RoomRows(conn, room_id)
    finally:
        conn.close()


async def _purge(env: WithAdmin, room_id: str) -> None:
    http, admin = env.client.http, env.admin
    answer = await admin_ok(http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {})
    status = await admin_ok(http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}")
    assert status["status"] == "complete"


async def _syncs_without(env: WithAdmin, user: TestUser, since: str, room_id: str) -> None:
    """The user's incremental and initial syncs answer, the room in no
    membership section."""
    for params in ({"since": since, "timeout": 0}, {}):
        synced = await env.sync(user, **params)
        for section in ("join", "invite", "knock", "leave"):
            assert room_id not in synced["rooms"].get(section, {})


async def _ephemeral_writes(
    env: WithAdmin, user: TestUser, room_id: str, event_id: str
) -> list[Any]:
    """The status and errcode of each of a member's ephemeral writes in ``room_id``."""
    c = env.client
    room = f"/rooms/{q(room_id)}"
    calls: list[tuple[str, str, Any]] = [
        ("POST", f"{room}/receipt/m.read/{q(event_id)}", {}),
        ("POST", f"{room}/receipt/m.read.private/{q(event_id)}", {}),
        ("POST", f"{room}/receipt/m.fully_read/{q(event_id)}", {}),
        ("PUT", f"{room}/typing/{q(user.user_id)}", {"typing": True, "timeout": 30_000}),
        ("POST", f"{room}/read_markers", {"m.fully_read": event_id, "m.read": event_id}),
    ]
    answers = []
    for method, path, body in calls:
        status, answer = await c.call(user, method, path, body)
        answers.append((status, answer.get("errcode")))
    return answers


async def test_a_purged_room_takes_no_receipt_typing_or_marker(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    sent = await c.ok(
        bob,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "to be purged"},
    )
    message = sent["event_id"]
    # Before the purge, every one of them is taken.
    assert await _ephemeral_writes(env, bob, room_id, message) == [(200, None)] * 5
    assert env.hs.server.typing_notices.typing_in(room_id) == [bob.user_id]
    typing = f"/rooms/{q(room_id)}/typing/{q(bob.user_id)}"
    await c.ok(bob, "PUT", typing, {"typing": False})
    rows = _room_rows(env, room_id)
    since = (await env.sync(bob))["next_batch"]

    await _purge(env, room_id)
    assert _tables_holding(env, rows) == {}

    # Refused as in a room never had: the answer a user not in a room gets.
    never = f"!never:{env.hs.server_name}"
    refused = await _ephemeral_writes(env, bob, room_id, message)
    assert refused == await _ephemeral_writes(env, bob, never, message)
    assert refused == [(403, "M_FORBIDDEN")] * 5
    assert _tables_holding(env, rows) == {}
    assert env.hs.server.typing_notices.typing_in(room_id) == []

    # Bob's syncs answer, without the room.
    await _syncs_without(env, bob, since, room_id)


async def test_room_account_data_of_a_purged_room_does_not_bring_it_back(
    env: WithAdmin,
) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    rows = _room_rows(env, room_id)
    since = (await env.sync(bob))["next_batch"]
    await _purge(env, room_id)

    user = f"/user/{q(bob.user_id)}/rooms/{q(room_id)}"
    await c.ok(bob, "PUT", f"{user}/account_data/org.example.note", {"text": "kept"})
    await c.ok(bob, "PUT", f"{user}/tags/u.work", {"order": 0.5})
    # Kept for the room's ID, as for any valid room ID, and read back.
    note = await c.ok(bob, "GET", f"{user}/account_data/org.example.note")
    assert note == {"text": "kept"}
    tags = await c.ok(bob, "GET", f"{user}/tags")
    assert tags == {"tags": {"u.work": {"order": 0.5}}}
    # Only account data names the room: no rooms row, state or membership.
    assert _tables_holding(env, rows) == {"account_data": 2}
    await admin_refused(
        http, admin, "GET", f"/v1/rooms/{q(room_id)}", status=404, errcode="M_NOT_FOUND"
    )
    await c.refused(bob, "GET", f"/rooms/{q(room_id)}/state", status=403, errcode="M_FORBIDDEN")

    # Bob's syncs answer, the room in no membership section.
    await _syncs_without(env, bob, since, room_id)
    # The user may still remove what he set.
    await c.ok(bob, "DELETE", f"{user}/tags/u.work")
    assert await c.ok(bob, "GET", f"{user}/tags") == {"tags": {}}
