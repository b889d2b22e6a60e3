"""Redacted events as clients get them, over real HTTP: /event, /sync
(initial and incremental), /messages and /state serve an event a
redaction applies to with its content stripped and the redaction under
``unsigned.redacted_because``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _client import Client, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver


def _by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["event_id"]: event for event in events}


def _check_redacted(event: dict[str, Any], redaction_id: str, reason: str) -> None:
    assert event["content"] == {}
    because = event["unsigned"]["redacted_because"]
    assert because["event_id"] == redaction_id
    assert because["type"] == "m.room.redaction"
    assert because["content"]["reason"] == reason


async def _sync(client: Client, user: TestUser, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(user, "GET", "/sync", params=params)
    return answer


@pytest.mark.parametrize("version", ["10", "11"])
async def test_a_redacted_message_is_served_redacted_everywhere(
    tmp_path: Path, version: str
) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        room_id = await client.create_room(alice, preset="public_chat", room_version=version)
        await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        before = (await _sync(client, alice))["next_batch"]
        room = q(room_id)
        sent = await client.ok(
            bob, "PUT", f"/rooms/{room}/send/m.room.message/1", {"body": "my password is x"}
        )
        kept = await client.ok(bob, "PUT", f"/rooms/{room}/send/m.room.message/2", {"body": "hi"})
        message_id, kept_id = sent["event_id"], kept["event_id"]
        redaction = await client.ok(
            bob, "PUT", f"/rooms/{room}/redact/{q(message_id)}/r1", {"reason": "oops"}
        )
        redaction_id = redaction["event_id"]

        # One event.
        event = await client.ok(alice, "GET", f"/rooms/{room}/event/{q(message_id)}")
        _check_redacted(event, redaction_id, "oops")
        assert (event["sender"], event["type"]) == (bob.user_id, "m.room.message")
        assert "age" in event["unsigned"]
        untouched = await client.ok(alice, "GET", f"/rooms/{room}/event/{q(kept_id)}")
        assert untouched["content"] == {"body": "hi"}
        assert "redacted_because" not in untouched["unsigned"]
        shown_redaction = await client.ok(alice, "GET", f"/rooms/{room}/event/{q(redaction_id)}")
        redacts = shown_redaction["content"] if version == "11" else shown_redaction
        assert redacts["redacts"] == message_id

        # Initial and incremental sync, for both users.
        for user in (alice, bob):
            initial = await _sync(client, user)
            timeline = _by_id(initial["rooms"]["join"][room_id]["timeline"]["events"])
            _check_redacted(timeline[message_id], redaction_id, "oops")
            assert timeline[kept_id]["content"] == {"body": "hi"}
            assert redaction_id in timeline
        incremental = await _sync(client, alice, since=before)
        timeline = _by_id(incremental["rooms"]["join"][room_id]["timeline"]["events"])
        _check_redacted(timeline[message_id], redaction_id, "oops")

        # A page of history.
        page = await client.ok(alice, "GET", f"/rooms/{room}/messages", params={"dir": "b"})
        chunk = _by_id(page["chunk"])
        _check_redacted(chunk[message_id], redaction_id, "oops")
        assert chunk[kept_id]["content"] == {"body": "hi"}


async def test_a_redacted_state_event_stays_in_state_stripped(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        room_id = await client.create_room(alice, name="Plans")
        room = q(room_id)
        topic = await client.ok(
            alice, "PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "secret plans"}
        )
        redaction = await client.ok(
            alice, "PUT", f"/rooms/{room}/redact/{q(topic['event_id'])}/r1", {"reason": "leak"}
        )

        # Still the room's topic, with nothing in it: not the topic before.
        assert await client.ok(alice, "GET", f"/rooms/{room}/state/m.room.topic") == {}
        state = await client.state(alice, room_id)
        _check_redacted(state[("m.room.topic", "")], redaction["event_id"], "leak")
        # Protected keys survive: the name was not redacted, the power
        # levels keep what the auth rules need.
        assert state[("m.room.name", "")]["content"] == {"name": "Plans"}
        initial = await _sync(client, alice)
        joined = initial["rooms"]["join"][room_id]
        events = joined["state"]["events"] + joined["timeline"]["events"]
        (synced,) = [event for event in events if event["type"] == "m.room.topic"]
        _check_redacted(synced, redaction["event_id"], "leak")


async def test_a_redaction_of_an_event_of_another_room_does_not_apply(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        first = await client.create_room(alice)
        second = await client.create_room(alice)
        sent = await client.ok(
            alice, "PUT", f"/rooms/{q(first)}/send/m.room.message/1", {"body": "stays"}
        )
        await client.ok(
            alice, "PUT", f"/rooms/{q(second)}/redact/{q(sent['event_id'])}/r1", {"reason": "x"}
        )

        event = await client.ok(alice, "GET", f"/rooms/{q(first)}/event/{q(sent['event_id'])}")
        assert event["content"] == {"body": "stays"}
        assert "redacted_because" not in event["unsigned"]


async def test_a_member_without_power_may_redact_only_their_own_events(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        room_id = await client.create_room(alice, preset="public_chat")
        room = q(room_id)
        await client.ok(bob, "POST", f"/rooms/{room}/join", {})
        alices = await client.ok(
            alice, "PUT", f"/rooms/{room}/send/m.room.message/1", {"body": "a"}
        )
        bobs = await client.ok(bob, "PUT", f"/rooms/{room}/send/m.room.message/1", {"body": "b"})
        before = await client.ok(alice, "GET", f"/rooms/{room}/messages", params={"dir": "b"})

        await client.refused(
            bob,
            "PUT",
            f"/rooms/{room}/redact/{q(alices['event_id'])}/r1",
            {},
            status=403,
            errcode="M_FORBIDDEN",
        )
        # Nothing was sent, and Alice's message is whole.
        after = await client.ok(alice, "GET", f"/rooms/{room}/messages", params={"dir": "b"})
        assert after["chunk"] == before["chunk"]
        # Bob may redact his own message, and Alice, who has the power, his.
        own = await client.ok(bob, "PUT", f"/rooms/{room}/redact/{q(bobs['event_id'])}/r2", {})
        event = await client.ok(alice, "GET", f"/rooms/{room}/event/{q(bobs['event_id'])}")
        assert event["unsigned"]["redacted_because"]["event_id"] == own["event_id"]
        await client.ok(alice, "PUT", f"/rooms/{room}/redact/{q(alices['event_id'])}/r1", {})


async def test_a_redaction_redacted_in_turn_loses_its_reason(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        room_id = await client.create_room(alice)
        room = q(room_id)
        sent = await client.ok(
            alice, "PUT", f"/rooms/{room}/send/m.room.message/1", {"body": "pun"}
        )
        first = await client.ok(
            alice, "PUT", f"/rooms/{room}/redact/{q(sent['event_id'])}/r1", {"reason": "bad pun"}
        )
        redaction_path = f"/rooms/{room}/event/{q(first['event_id'])}"
        before = await client.ok(alice, "GET", redaction_path)
        assert before["content"] == {"redacts": sent["event_id"], "reason": "bad pun"}
        second = await client.ok(
            alice, "PUT", f"/rooms/{room}/redact/{q(first['event_id'])}/r2", {}
        )

        after = await client.ok(alice, "GET", redaction_path)
        # Version 12 keeps what a redaction redacts, and nothing else.
        assert after["content"] == {"redacts": sent["event_id"]}
        assert after["unsigned"]["redacted_because"]["event_id"] == second["event_id"]
        # The message it redacted stays redacted.
        message = await client.ok(alice, "GET", f"/rooms/{room}/event/{q(sent['event_id'])}")
        assert message["content"] == {}
