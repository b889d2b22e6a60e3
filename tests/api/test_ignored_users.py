"""Ignoring users over real HTTP (the spec's "Ignoring Users"): once Alice
lists Bob in ``m.ignored_user_list``, his messages are kept from her in
``/sync``, ``/messages``, ``/context``, her notification counts and list,
and his invites are not shown to her; his state events still are."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser


@dataclass
class Env(SharedRoom):
    _txn: int = 0

    async def send(self, user: TestUser, body: str, *, mentions: TestUser | None = None) -> str:
        self._txn += 1
        path = f"/rooms/{q(self.room_id)}/send/m.room.message/i{self._txn}"
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if mentions is not None:
            content["m.mentions"] = {"user_ids": [mentions.user_id]}
        answer = await self.client.ok(user, "PUT", path, content)
        event_id: str = answer["event_id"]
        return event_id

    async def ignore(self, user: TestUser, *ignored: TestUser) -> None:
        path = f"/user/{q(user.user_id)}/account_data/m.ignored_user_list"
        content: dict[str, Any] = {"ignored_users": {other.user_id: {} for other in ignored}}
        await self.client.ok(user, "PUT", path, content)

    async def sync(self, user: TestUser, **params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.client.ok(user, "GET", "/sync", params=params)
        return answer

    async def timeline(self, user: TestUser, since: str) -> tuple[list[dict[str, Any]], str]:
        body = await self.sync(user, since=since)
        room = body["rooms"]["join"].get(self.room_id, {})
        events: list[dict[str, Any]] = room.get("timeline", {}).get("events", [])
        return events, body["next_batch"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as env:
        yield env


async def test_an_ignored_users_messages_leave_sync_but_not_their_state(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    since = (await env.sync(alice))["next_batch"]
    await env.ignore(alice, bob)
    await env.send(bob, "you will not see this")
    await c.ok(bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Robert"})
    kept = await env.send(alice, "talking to myself")
    events, since = await env.timeline(alice, since)
    assert [(e["type"], e["sender"]) for e in events] == [
        ("m.room.member", bob.user_id),
        ("m.room.message", alice.user_id),
    ]
    assert events[1]["event_id"] == kept
    # Bob himself, and others, see everything.
    bobs = await env.client.ok(bob, "GET", f"/rooms/{q(env.room_id)}/messages", params={"dir": "b"})
    assert "you will not see this" in [e["content"].get("body") for e in bobs["chunk"]]
    # Ignored no more: his next messages come through again.
    await env.ignore(alice)
    again = await env.send(bob, "back again")
    events, _ = await env.timeline(alice, since)
    assert [e["event_id"] for e in events] == [again]


async def test_a_long_poll_is_not_answered_for_an_ignored_users_message(env: Env) -> None:
    alice, bob = env.alice, env.bob
    await env.ignore(alice, bob)
    since = (await env.sync(alice))["next_batch"]
    await env.send(bob, "nothing for alice")
    body = await env.sync(alice, since=since, timeout="300")
    assert env.room_id not in body["rooms"]["join"]


async def test_messages_and_context_keep_an_ignored_users_messages_out(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    before = await env.send(alice, "before")
    hidden = await env.send(bob, "hidden")
    after = await env.send(alice, "after")
    await env.ignore(alice, bob)
    page = await c.ok(alice, "GET", f"/rooms/{q(env.room_id)}/messages", params={"dir": "b"})
    ids = [e["event_id"] for e in page["chunk"]]
    assert before in ids
    assert after in ids
    assert hidden not in ids
    context = await c.ok(alice, "GET", f"/rooms/{q(env.room_id)}/context/{q(after)}")
    assert hidden not in [e["event_id"] for e in context["events_before"]]
    assert before in [e["event_id"] for e in context["events_before"]]
    await c.refused(
        alice,
        "GET",
        f"/rooms/{q(env.room_id)}/context/{q(hidden)}",
        status=404,
        errcode="M_NOT_FOUND",
    )


async def test_notifications_leave_out_an_ignored_user(env: Env) -> None:
    alice, bob, carol, c = env.alice, env.bob, env.carol, env.client
    await c.ok(carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    await env.ignore(alice, bob)
    await env.send(bob, "alice!", mentions=alice)
    await env.send(carol, "hello alice", mentions=alice)
    room = (await env.sync(alice))["rooms"]["join"][env.room_id]
    assert room["unread_notifications"] == {"notification_count": 1, "highlight_count": 1}
    listed = await c.ok(alice, "GET", "/notifications")
    assert [n["event"]["sender"] for n in listed["notifications"]] == [carol.user_id]


async def test_invites_from_an_ignored_user_are_not_shown(env: Env) -> None:
    alice, bob, carol, c = env.alice, env.bob, env.carol, env.client
    await env.ignore(carol, bob)
    since = (await env.sync(carol))["next_batch"]
    from_bob = await c.create_room(bob, invite=[carol.user_id])
    from_alice = await c.create_room(alice, invite=[carol.user_id])
    body = await env.sync(carol, since=since)
    assert set(body["rooms"]["invite"]) == {from_alice}
    assert from_bob not in (await env.sync(carol))["rooms"]["invite"]


async def test_ignoring_hides_what_came_before_from_a_full_sync(env: Env) -> None:
    """What Bob sent and the invite he made before Alice ignored him are
    kept from her next syncs too, initial and incremental from before."""
    alice, bob, c = env.alice, env.bob, env.client
    since = (await env.sync(alice))["next_batch"]
    mine = await env.send(alice, "mine")
    await env.send(bob, "his")
    invited = await c.create_room(bob, invite=[alice.user_id])
    seen = await env.sync(alice)
    assert invited in seen["rooms"]["invite"]
    await env.ignore(alice, bob)
    messages = {"room": {"timeline": {"types": ["m.room.message"]}}}
    for params in ({}, {"since": since}):
        body = await env.sync(alice, filter=json.dumps(messages), **params)
        timeline = body["rooms"]["join"][env.room_id]["timeline"]["events"]
        assert [event["event_id"] for event in timeline] == [mine], params
        assert body["rooms"]["invite"] == {}, params
    # Bob's membership, state, is still shown.
    state = await c.state(alice, env.room_id)
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"


async def test_a_malformed_list_ignores_nobody(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    path = f"/user/{q(alice.user_id)}/account_data/m.ignored_user_list"
    await c.ok(alice, "PUT", path, {"ignored_users": [bob.user_id]})
    since = (await env.sync(alice))["next_batch"]
    sent = await env.send(bob, "still here")
    events, _ = await env.timeline(alice, since)
    assert [e["event_id"] for e in events] == [sent]
