"""``GET /rooms/{roomId}/event/{eventId}`` hands an event's transaction ID
back to the device that sent it, and to no one else, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _second_device(env: SharedRoom, password: str) -> TestUser:
    return await env.client.log_in("dora", password)


async def test_the_sending_device_reads_its_transaction_id(env: SharedRoom) -> None:
    c, room = env.client, q(env.room_id)
    password = "a sufficiently long password"
    dora = await env.hs.register_user("dora", password=password)
    await c.ok(dora, "POST", f"/rooms/{room}/join", {})
    sent = await c.ok(
        dora,
        "PUT",
        f"/rooms/{room}/send/m.room.message/abc%2Fdefg",
        {"msgtype": "m.text", "body": "first"},
    )
    path = f"/rooms/{room}/event/{q(sent['event_id'])}"

    own = await c.ok(dora, "GET", path)
    assert own["unsigned"]["transaction_id"] == "abc/defg"
    assert own["content"]["body"] == "first"
    # Another device of the same user, and another user, read it without.
    other_device = await _second_device(env, password)
    assert other_device.device_id != dora.device_id
    for reader in (other_device, env.alice):
        event = await c.ok(reader, "GET", path)
        assert event["event_id"] == sent["event_id"]
        assert "transaction_id" not in event.get("unsigned", {})


async def test_a_redaction_carries_its_transaction_id_and_state_none(env: SharedRoom) -> None:
    c, alice, room = env.client, env.alice, q(env.room_id)
    said = await c.ok(alice, "PUT", f"/rooms/{room}/send/m.room.message/m1", {"body": "x"})
    redaction = await c.ok(alice, "PUT", f"/rooms/{room}/redact/{q(said['event_id'])}/r1", {})
    event = await c.ok(alice, "GET", f"/rooms/{room}/event/{q(redaction['event_id'])}")
    assert event["unsigned"]["transaction_id"] == "r1"
    # A state event sent with PUT /state has no transaction ID to give back.
    named = await c.ok(alice, "PUT", f"/rooms/{room}/state/m.room.name", {"name": "n"})
    state = await c.ok(alice, "GET", f"/rooms/{room}/event/{q(named['event_id'])}")
    assert "transaction_id" not in state["unsigned"]
    assert state["content"] == {"name": "n"}
