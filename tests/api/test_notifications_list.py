"""``GET /notifications`` over real HTTP: the events the user's push rules
notify them of, newest first, paged, filtered to highlights, with the read
flag following their receipts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.core import notification_list
from ranvier.testing.homeserver import TestUser


@dataclass
class Env(SharedRoom):
    _txn: int = 0

    async def send(self, user: TestUser, body: str, **content: Any) -> str:
        return await self.send_in(self.room_id, user, body, **content)

    async def send_in(self, room_id: str, user: TestUser, body: str, **content: Any) -> str:
        self._txn += 1
        path = f"/rooms/{q(room_id)}/send/m.room.message/t{self._txn}"
        answer = await self.client.ok(
            user, "PUT", path, {"msgtype": "m.text", "body": body, **content}
        )
        event_id: str = answer["event_id"]
        return event_id

    async def notifications(self, user: TestUser, **params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.client.ok(user, "GET", "/notifications", params=params)
        return answer

    async def bodies(self, user: TestUser, **params: Any) -> list[str]:
        answer = await self.notifications(user, **params)
        return [entry["event"]["content"]["body"] for entry in answer["notifications"]]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as env:
        yield env


async def test_others_messages_newest_first_with_their_actions(env: Env) -> None:
    alice, bob = env.alice, env.bob
    first = await env.send(bob, "good morning")
    await env.send(alice, "my own message never notifies me")
    mention = await env.send(bob, "ping", **{"m.mentions": {"user_ids": [alice.user_id]}})
    answer = await env.notifications(alice)
    assert "next_token" not in answer
    entries = answer["notifications"]
    assert [entry["event"]["event_id"] for entry in entries] == [mention, first]
    newest = entries[0]
    assert newest["room_id"] == env.room_id
    assert "room_id" not in newest["event"]
    assert newest["event"]["sender"] == bob.user_id
    assert newest["read"] is False
    assert newest["ts"] == newest["event"]["origin_server_ts"]
    assert "notify" in newest["actions"]
    assert {"set_tweak": "highlight"} in newest["actions"]
    assert not any(
        isinstance(action, dict)
        and action.get("set_tweak") == "highlight"
        and action.get("value", True)
        for action in entries[1]["actions"]
    )


async def test_only_highlight_keeps_the_highlights(env: Env) -> None:
    alice, bob = env.alice, env.bob
    await env.send(bob, "hello")
    await env.send(bob, "alice, look", **{"m.mentions": {"user_ids": [alice.user_id]}})
    await env.send(bob, "alice?")  # her name alone: no mention since spec v1.17
    await env.send(bob, "bye")
    assert await env.bodies(alice, only="highlight") == ["alice, look"]
    # The spec names one filter; anything else filters nothing.
    assert await env.bodies(alice, only="something") == ["bye", "alice?", "alice, look", "hello"]


async def test_pages_go_back_to_the_first_notification(env: Env) -> None:
    alice, bob = env.alice, env.bob
    sent = [await env.send(bob, f"message {n}") for n in range(5)]
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if token is not None:
            params["from"] = token
        answer = await env.notifications(alice, **params)
        pages += 1
        assert len(answer["notifications"]) <= 2
        seen += [entry["event"]["event_id"] for entry in answer["notifications"]]
        token = answer.get("next_token")
        if token is None:
            break
        assert pages < 10
    assert seen == list(reversed(sent))


async def test_read_follows_the_receipts(env: Env) -> None:
    alice, bob = env.alice, env.bob
    first = await env.send(bob, "one")
    second = await env.send(bob, "two")
    third = await env.send(bob, "three")
    await env.client.ok(alice, "POST", f"/rooms/{q(env.room_id)}/receipt/m.read/{q(second)}", {})
    answer = await env.notifications(alice)
    read = {entry["event"]["event_id"]: entry["read"] for entry in answer["notifications"]}
    assert read == {first: True, second: True, third: False}


async def test_a_muted_room_and_rooms_left_give_nothing(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    await env.send(bob, "before the mute")
    await c.ok(alice, "PUT", f"/pushrules/global/room/{q(env.room_id)}", {"actions": []})
    await env.send(bob, "after the mute")
    # Rules are applied as they are now: the whole room is muted.
    assert await env.bodies(alice) == []
    other = await c.create_room(bob, preset="public_chat")
    await c.ok(alice, "POST", f"/rooms/{q(other)}/join", {})
    await env.send_in(other, bob, "in the other room")
    assert await env.bodies(alice) == ["in the other room"]
    await c.ok(alice, "POST", f"/rooms/{q(other)}/leave", {})
    assert await env.bodies(alice) == []


async def test_what_came_before_joining_is_not_listed(env: Env) -> None:
    bob, carol, c = env.bob, env.carol, env.client
    await env.send(bob, "before carol")
    await c.ok(carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    await env.send(bob, "after carol")
    assert await env.bodies(carol) == ["after carol"]


async def test_a_redacted_message_is_listed_redacted(env: Env) -> None:
    alice, bob = env.alice, env.bob
    event_id = await env.send(bob, "oops, alice")
    await env.client.ok(
        bob, "PUT", f"/rooms/{q(env.room_id)}/redact/{q(event_id)}/r1", {"reason": "typo"}
    )
    answer = await env.notifications(alice)
    (entry,) = [e for e in answer["notifications"] if e["event"]["event_id"] == event_id]
    assert entry["event"]["content"] == {}
    assert entry["event"]["unsigned"]["redacted_because"]["type"] == "m.room.redaction"


async def test_a_notifying_state_event_says_what_it_replaced(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    rule = {
        "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.topic"}],
        "actions": ["notify"],
    }
    await c.ok(bob, "PUT", "/pushrules/global/override/topics", rule)
    path = f"/rooms/{q(env.room_id)}/state/m.room.topic/"
    first = (await c.ok(alice, "PUT", path, {"topic": "first"}))["event_id"]
    second = (await c.ok(alice, "PUT", path, {"topic": "second"}))["event_id"]
    answer = await env.notifications(bob)
    newest, oldest = answer["notifications"]
    assert newest["event"]["event_id"] == second
    assert newest["event"]["unsigned"] == {
        "replaces_state": first,
        "prev_content": {"topic": "first"},
    }
    # The room's first topic replaced nothing.
    assert oldest["event"]["event_id"] == first
    assert "unsigned" not in oldest["event"]


async def test_a_page_looks_at_so_many_events_and_hands_on_a_token(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, carol, c = env.alice, env.bob, env.carol, env.client
    monkeypatch.setattr(notification_list, "SCAN_LIMIT", 3)
    await c.ok(carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    await env.send(carol, "notifies")
    await c.ok(alice, "PUT", f"/pushrules/global/sender/{q(bob.user_id)}", {"actions": []})
    for n in range(4):
        await env.send(bob, f"quiet {n}")
    answer = await env.notifications(alice)
    # Three quiet messages looked at, none notifying: an empty page that goes on.
    assert answer["notifications"] == []
    assert "next_token" in answer
    answer = await env.notifications(alice, **{"from": answer["next_token"]})
    assert [e["event"]["content"]["body"] for e in answer["notifications"]] == ["notifies"]


async def test_bad_parameters_are_refused(env: Env) -> None:
    c, alice = env.client, env.alice
    await c.refused(
        alice,
        "GET",
        "/notifications",
        params={"from": "abc"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    # Digits enough for a token, but past any stream position SQLite holds.
    await c.refused(
        alice,
        "GET",
        "/notifications",
        params={"from": str(2**63)},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await c.refused(
        alice,
        "GET",
        "/notifications",
        params={"limit": "-1"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await c.refused(
        alice, "GET", "/notifications", params={"limit": "0"}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(None, "GET", "/notifications", status=401, errcode="M_MISSING_TOKEN")


async def test_rooms_are_merged_newest_first_across_pages(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    other = await c.create_room(bob, preset="public_chat")
    await c.ok(alice, "POST", f"/rooms/{q(other)}/join", {})
    sent = []
    for n in range(3):
        sent.append(await env.send(bob, f"here {n}"))
        sent.append(await env.send_in(other, bob, f"there {n}"))
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        answer = await env.notifications(alice, **params)
        seen += [entry["event"]["event_id"] for entry in answer["notifications"]]
        if "next_token" not in answer:
            break
        params["from"] = answer["next_token"]
        assert len(seen) <= len(sent)
    assert seen == list(reversed(sent))


async def test_a_thread_is_read_by_its_own_receipt(env: Env) -> None:
    alice, bob, c = env.alice, env.bob, env.client
    root = await env.send(bob, "root")
    reply = await env.send(
        bob, "in the thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    await c.ok(
        alice,
        "POST",
        f"/rooms/{q(env.room_id)}/receipt/m.read/{q(reply)}",
        {"thread_id": root},
    )
    answer = await env.notifications(alice)
    read = {entry["event"]["event_id"]: entry["read"] for entry in answer["notifications"]}
    assert read == {root: False, reply: True}
