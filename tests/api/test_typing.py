"""Typing over real HTTP: set, refused, in /sync, waking long-polls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _client import Client, SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver


@dataclass
class Env(SharedRoom):
    def typing(self, user: TestUser, room_id: str | None = None) -> str:
        return f"/rooms/{q(room_id or self.room_id)}/typing/{q(user.user_id)}"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as env:
        yield env


def _typing(body: dict[str, Any], room_id: str) -> list[str] | None:
    room = body["rooms"]["join"].get(room_id)
    if room is None:
        return None
    for event in room["ephemeral"]["events"]:
        if event["type"] == "m.typing":
            users: list[str] = event["content"]["user_ids"]
            return users
    return None


async def test_typing_starts_and_stops_in_sync(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    assert _typing(await env.sync(alice), env.room_id) is None
    since = (await env.sync(alice))["next_batch"]
    assert await c.ok(bob, "PUT", env.typing(bob), {"typing": True, "timeout": 30_000}) == {}
    started = await env.sync(alice, since=since)
    assert _typing(started, env.room_id) == [bob.user_id]
    # An initial sync lists who is typing now.
    assert _typing(await env.sync(alice), env.room_id) == [bob.user_id]
    await c.ok(alice, "PUT", env.typing(alice), {"typing": True})
    both = await env.sync(alice, since=started["next_batch"])
    assert _typing(both, env.room_id) == sorted([alice.user_id, bob.user_id])
    # Nothing changed since: nothing for the room.
    assert _typing(await env.sync(alice, since=both["next_batch"]), env.room_id) is None
    await c.ok(bob, "PUT", env.typing(bob), {"typing": False})
    stopped = await env.sync(alice, since=both["next_batch"])
    assert _typing(stopped, env.room_id) == [alice.user_id]
    # Stopping when not typing changes nothing.
    await c.ok(bob, "PUT", env.typing(bob), {"typing": False})
    assert _typing(await env.sync(alice, since=stopped["next_batch"]), env.room_id) is None


async def test_bad_typing_requests_are_refused(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    refusals: list[tuple[TestUser, str, Any, int, str]] = [
        (alice, env.typing(bob), {"typing": True}, 403, "M_FORBIDDEN"),
        (carol, env.typing(carol), {"typing": True}, 403, "M_FORBIDDEN"),
        (alice, env.typing(alice), {}, 400, "M_BAD_JSON"),
        (alice, env.typing(alice), {"typing": "yes"}, 400, "M_BAD_JSON"),
        (alice, env.typing(alice), {"typing": True, "timeout": "soon"}, 400, "M_BAD_JSON"),
        (alice, env.typing(alice), {"typing": True, "timeout": -1}, 400, "M_INVALID_PARAM"),
    ]
    for user, path, body, status, errcode in refusals:
        await c.refused(user, "PUT", path, body, status=status, errcode=errcode)
    await c.refused(alice, "PUT", env.typing(alice), raw=b"[]", status=400, errcode="M_NOT_JSON")
    assert env.hs.server.typing_notices.typing_in(env.room_id) == []


async def test_a_long_poll_is_woken_by_typing_and_by_its_end(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    elsewhere = await c.create_room(carol)
    since = (await env.sync(alice))["next_batch"]
    started = await env.woken_sync(
        alice,
        since,
        # Typing in a room Alice is not in leaves her poll asleep.
        quiet=lambda: c.ok(carol, "PUT", env.typing(carol, elsewhere), {"typing": True}),
        # Long enough to be seen typing in the answer however slow the
        # machine, short enough for the test to wait for its end.
        wake=lambda: c.ok(bob, "PUT", env.typing(bob), {"typing": True, "timeout": 2_000}),
    )
    assert _typing(started, env.room_id) == [bob.user_id]
    # The timeout ends Bob's typing by itself, and that wakes a poll too.
    with trio.fail_after(30):
        ended = await env.sync(alice, since=started["next_batch"], timeout=60_000)
    assert _typing(ended, env.room_id) == []


async def test_a_token_from_before_a_restart_gets_each_rooms_typing_once(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        c = Client(hs, http)
        alice = await hs.register_user("alice")
        room_id = await c.create_room(alice)
        path = f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}"
        await c.ok(alice, "PUT", path, {"typing": True})
        before = await c.ok(alice, "GET", "/sync")
        assert _typing(before, room_id) == [alice.user_id]
    # Nobody is typing after the restart; the client must hear so.
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        c = Client(hs, http)
        after = await c.ok(alice, "GET", "/sync", params={"since": before["next_batch"]})
        assert _typing(after, room_id) == []
        again = await c.ok(alice, "GET", "/sync", params={"since": after["next_batch"]})
        assert _typing(again, room_id) is None
