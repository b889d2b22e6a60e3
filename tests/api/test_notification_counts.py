"""``unread_notifications`` in /sync over real HTTP: counted by the user's
push rules since their read receipt, cleared by receipts and by their own
events, and following rule changes."""

from __future__ import annotations

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

    async def send(self, user: TestUser, body: str, **content: Any) -> str:
        self._txn += 1
        path = f"/rooms/{q(self.room_id)}/send/m.room.message/t{self._txn}"
        answer = await self.client.ok(
            user, "PUT", path, {"msgtype": "m.text", "body": body, **content}
        )
        event_id: str = answer["event_id"]
        return event_id

    async def read(self, user: TestUser, event_id: str, receipt_type: str = "m.read") -> None:
        path = f"/rooms/{q(self.room_id)}/receipt/{q(receipt_type)}/{q(event_id)}"
        await self.client.ok(user, "POST", path, {})

    async def counts(self, user: TestUser, **params: Any) -> tuple[dict[str, int], str]:
        body = await self.sync(user, **params)
        room = body["rooms"]["join"][self.room_id]
        unread: dict[str, int] = room["unread_notifications"]
        return unread, body["next_batch"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as env:
        yield env


def _mention(user: TestUser) -> dict[str, Any]:
    return {"m.mentions": {"user_ids": [user.user_id]}}


def _counts(notifications: int, highlights: int) -> dict[str, int]:
    return {"notification_count": notifications, "highlight_count": highlights}


async def test_messages_count_mentions_highlight_and_own_messages_do_not_count(env: Env) -> None:
    alice, bob = env.alice, env.bob
    await env.send(bob, "good morning")
    await env.send(bob, "lunch, alice?", **_mention(alice))
    await env.send(bob, "ping", **_mention(alice))
    # Her name in the body alone is no mention (spec v1.17, MSC4210).
    await env.send(bob, "alice, hello")
    await env.send(bob, "a bot speaks", msgtype="m.notice")
    assert (await env.counts(alice))[0] == _counts(4, 2)
    # Bob's own messages never count for him; Alice's room creation and
    # invites before his join are before his membership.
    assert (await env.counts(bob))[0] == _counts(0, 0)


async def test_a_read_receipt_clears_what_it_covers(env: Env) -> None:
    alice, bob = env.alice, env.bob
    await env.send(bob, "one")
    second = await env.send(bob, "two alice", **_mention(alice))
    await env.send(bob, "three")
    assert (await env.counts(alice))[0] == _counts(3, 1)
    await env.read(alice, second)
    assert (await env.counts(alice))[0] == _counts(1, 0)


async def test_the_later_of_the_public_and_private_receipts_counts(env: Env) -> None:
    alice, bob = env.alice, env.bob
    first = await env.send(bob, "one")
    await env.send(bob, "two")
    third = await env.send(bob, "three")
    await env.send(bob, "four")
    await env.read(alice, third, "m.read.private")
    await env.read(alice, first)
    assert (await env.counts(alice))[0] == _counts(1, 0)


async def test_sending_a_message_marks_the_room_read(env: Env) -> None:
    alice, bob = env.alice, env.bob
    await env.send(bob, "one")
    await env.send(bob, "two")
    await env.send(alice, "reply")
    await env.send(bob, "three")
    assert (await env.counts(alice))[0] == _counts(1, 0)


async def test_incremental_syncs_go_on_counting_and_a_receipt_brings_the_room_in(env: Env) -> None:
    alice, bob = env.alice, env.bob
    await env.send(bob, "one")
    counts, since = await env.counts(alice)
    assert counts == _counts(1, 0)
    await env.send(bob, "two")
    last = await env.send(bob, "three alice", **_mention(alice))
    counts, since = await env.counts(alice, since=since)
    assert counts == _counts(3, 1)
    # Nothing new but Alice's receipt: the room comes back with its counts at zero.
    await env.read(alice, last)
    counts, since = await env.counts(alice, since=since)
    assert counts == _counts(0, 0)
    await env.send(bob, "four")
    counts, _ = await env.counts(alice, since=since)
    assert counts == _counts(1, 0)


async def test_a_room_rule_silencing_the_room_applies_to_the_next_count(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    await env.send(bob, "one")
    counts, since = await env.counts(alice)
    assert counts == _counts(1, 0)
    await c.ok(alice, "PUT", f"/pushrules/global/room/{q(env.room_id)}", {"actions": []})
    await env.send(bob, "two")
    counts, _ = await env.counts(alice, since=since)
    assert counts == _counts(0, 0)


async def test_an_at_room_highlights_from_the_room_creator_only(env: Env) -> None:
    alice, bob = env.alice, env.bob
    room = {"m.mentions": {"room": True}}
    await env.send(alice, "@room lunch", **room)
    assert (await env.counts(bob))[0] == _counts(1, 1)
    await env.send(bob, "@room listen", **room)
    assert (await env.counts(alice))[0] == _counts(1, 0)


async def test_counts_split_by_thread_when_the_filter_asks(env: Env) -> None:
    alice, bob = env.alice, env.bob
    root = await env.send(bob, "root")
    in_thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    first_reply = await env.send(bob, "reply one", **in_thread)
    await env.send(bob, "reply two alice", **in_thread, **_mention(alice))
    last_main = await env.send(bob, "back in the room")
    threaded = '{"room": {"timeline": {"unread_thread_notifications": true}}}'

    body = await env.sync(alice, filter=threaded)
    room = body["rooms"]["join"][env.room_id]
    assert room["unread_notifications"] == _counts(2, 0)
    assert room["unread_thread_notifications"] == {root: _counts(2, 1)}
    # Without the filter's ask, one count for the whole room.
    unsplit, _ = await env.counts(alice)
    assert unsplit == _counts(4, 1)

    path = f"/rooms/{q(env.room_id)}/receipt/m.read/{q(first_reply)}"
    await env.client.ok(alice, "POST", path, {"thread_id": root})
    room = (await env.sync(alice, filter=threaded))["rooms"]["join"][env.room_id]
    assert room["unread_notifications"] == _counts(2, 0)
    assert room["unread_thread_notifications"] == {root: _counts(1, 1)}

    path = f"/rooms/{q(env.room_id)}/receipt/m.read/{q(last_main)}"
    await env.client.ok(alice, "POST", path, {"thread_id": "main"})
    room = (await env.sync(alice, filter=threaded))["rooms"]["join"][env.room_id]
    assert room["unread_notifications"] == _counts(0, 0)
    assert room["unread_thread_notifications"] == {root: _counts(1, 1)}

    # Alice's own reply marks the thread read; an unthreaded receipt reads all.
    await env.send(alice, "my reply", **in_thread)
    room = (await env.sync(alice, filter=threaded))["rooms"]["join"][env.room_id]
    assert "unread_thread_notifications" not in room
