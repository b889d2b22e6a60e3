"""``unsigned.replaces_state`` and ``unsigned.prev_content`` of state events
in every timeline, over real HTTP on a started homeserver: ``/sync``,
``/messages``, ``/context``, sliding sync, the room previews and ``/event``
agree, for a display-name change, a topic change, an invite turned into a
join and a topic whose predecessor was redacted, and give nothing to a
message or to the first event of a state key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q
from _sliding_sync import all_rooms, slide


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


@dataclass
class History:
    """The events sent, by what they are."""

    first_topic: str
    topic: str
    rename: str
    invite: str
    join: str
    message: str
    redacted_topic: str
    after_redacted: str
    #: What each state event of the history replaced, by event ID: the
    #: replaced event's ID and its content as ``/event`` serves it.
    expected: dict[str, tuple[str, dict[str, Any]]]


async def _state_put(env: SharedRoom, user: Any, kind: str, key: str, content: Any) -> str:
    answer = await env.client.ok(
        user, "PUT", f"/rooms/{q(env.room_id)}/state/{kind}/{q(key)}", content
    )
    event_id: str = answer["event_id"]
    return event_id


async def _event(env: SharedRoom, event_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = await env.client.ok(
        env.alice, "GET", f"/rooms/{q(env.room_id)}/event/{q(event_id)}"
    )
    return answer


async def _member_event_id(env: SharedRoom, user_id: str) -> str:
    state = await env.client.state(env.alice, env.room_id)
    event_id: str = state[("m.room.member", user_id)]["event_id"]
    return event_id


async def _history(env: SharedRoom) -> History:
    client, room = env.client, env.room_id
    alice = env.alice
    first_topic = await _state_put(env, alice, "m.room.topic", "", {"topic": "one"})
    topic = await _state_put(env, alice, "m.room.topic", "", {"topic": "two"})
    joined = await _member_event_id(env, alice.user_id)
    rename = await _state_put(
        env, alice, "m.room.member", alice.user_id, {"membership": "join", "displayname": "Ally"}
    )
    await client.ok(alice, "POST", f"/rooms/{q(room)}/invite", {"user_id": env.carol.user_id})
    invite = await _member_event_id(env, env.carol.user_id)
    await client.ok(env.carol, "POST", f"/rooms/{q(room)}/join", {})
    join = await _member_event_id(env, env.carol.user_id)
    sent = await client.ok(
        alice,
        "PUT",
        f"/rooms/{q(room)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "hi"},
    )
    redacted_topic = await _state_put(env, alice, "m.room.topic", "", {"topic": "secret"})
    after_redacted = await _state_put(env, alice, "m.room.topic", "", {"topic": "four"})
    await client.ok(alice, "PUT", f"/rooms/{q(room)}/redact/{q(redacted_topic)}/r1", {})
    expected = {}
    for event_id, replaced in (
        (topic, first_topic),
        (rename, joined),
        (join, invite),
        (redacted_topic, topic),
        (after_redacted, redacted_topic),
    ):
        expected[event_id] = (replaced, (await _event(env, replaced))["content"])
    # The redacted topic is served without what it said, in prev_content too.
    assert expected[after_redacted][1] == {}
    assert expected[join][1]["membership"] == "invite"
    assert expected[rename][1]["membership"] == "join"
    assert expected[rename][1].get("displayname") != "Ally"
    return History(
        first_topic,
        topic,
        rename,
        invite,
        join,
        sent["event_id"],
        redacted_topic,
        after_redacted,
        expected,
    )


def _check(history: History, events: list[dict[str, Any]]) -> None:
    """Each event carries what it replaced, and only those that did."""
    by_id = {event["event_id"]: event for event in events}
    # Every event of the history is in the timeline checked.
    assert {
        history.first_topic,
        history.topic,
        history.rename,
        history.invite,
        history.join,
        history.message,
        history.after_redacted,
    } <= set(by_id)
    for event_id, event in by_id.items():
        unsigned = event.get("unsigned", {})
        if event_id in history.expected:
            replaced, content = history.expected[event_id]
            assert unsigned["replaces_state"] == replaced, event
            assert unsigned["prev_content"] == content, event
        elif event_id in (history.first_topic, history.invite, history.message):
            assert "replaces_state" not in unsigned, event
            assert "prev_content" not in unsigned, event
    # The invite's own membership was Carol's first: nothing before it.
    assert by_id[history.join]["unsigned"]["prev_content"]["membership"] == "invite"
    assert by_id[history.rename]["content"]["displayname"] == "Ally"


async def test_sync_timelines_initial_and_incremental(env: SharedRoom) -> None:
    before = await env.sync(env.alice)
    history = await _history(env)
    wide = json.dumps({"room": {"timeline": {"limit": 50}}})
    answer = await env.sync(env.alice, filter=wide)
    _check(history, answer["rooms"]["join"][env.room_id]["timeline"]["events"])
    # An incremental sync, by another reader, with the same answers.
    later = await env.sync(env.bob, since=before["next_batch"], filter=wide)
    _check(history, later["rooms"]["join"][env.room_id]["timeline"]["events"])


async def test_messages_both_ways(env: SharedRoom) -> None:
    history = await _history(env)
    path = f"/rooms/{q(env.room_id)}/messages"
    back = await env.client.ok(env.bob, "GET", path, params={"dir": "b", "limit": 50})
    _check(history, back["chunk"])
    forward = await env.client.ok(env.bob, "GET", path, params={"dir": "f", "limit": 50})
    _check(history, forward["chunk"])


async def test_context_around_each_event(env: SharedRoom) -> None:
    history = await _history(env)
    for event_id in (history.rename, history.join, history.message, history.after_redacted):
        answer = await env.client.ok(
            env.bob,
            "GET",
            f"/rooms/{q(env.room_id)}/context/{q(event_id)}",
            params={"limit": 50},
        )
        assert answer["event"]["event_id"] == event_id
        _check(history, [*answer["events_before"], answer["event"], *answer["events_after"]])


async def test_sliding_sync_timeline(env: SharedRoom) -> None:
    history = await _history(env)
    answer = await slide(env.client.http, env.bob, {"lists": {"all": all_rooms(timeline_limit=50)}})
    _check(history, answer["rooms"][env.room_id]["timeline"])


async def test_room_preview_initial_sync(env: SharedRoom) -> None:
    history = await _history(env)
    answer = await env.client.ok(
        env.bob, "GET", f"/rooms/{q(env.room_id)}/initialSync", params={"limit": 50}
    )
    _check(history, answer["messages"]["chunk"])


async def test_event_endpoint_agrees(env: SharedRoom) -> None:
    history = await _history(env)
    ids = [*history.expected, history.first_topic, history.invite, history.message]
    _check(history, [await _event(env, event_id) for event_id in ids])


async def test_search_results(env: SharedRoom) -> None:
    history = await _history(env)
    body = {"search_categories": {"room_events": {"search_term": "two", "keys": ["content.topic"]}}}
    answer = await env.client.ok(env.bob, "POST", "/search", body)
    results = answer["search_categories"]["room_events"]["results"]
    (found,) = [result["result"] for result in results]
    assert found["event_id"] == history.topic
    assert found["unsigned"]["replaces_state"] == history.first_topic
    assert found["unsigned"]["prev_content"] == {"topic": "one"}
