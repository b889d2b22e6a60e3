"""Sliding sync's extensions over real HTTP: to_device, e2ee, account_data,
receipts, typing and presence, each answered from /sync's own streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _client import SharedRoom, open_shared_room, q
from _e2e import OTK, device_keys, one_time_keys
from _sliding_sync import all_rooms, slide


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom, name="Shared") as env:
        yield env


def _body(**extensions: dict[str, Any]) -> dict[str, Any]:
    return {
        "lists": {"all": all_rooms(timeline_limit=1)},
        "extensions": {name: {"enabled": True, **config} for name, config in extensions.items()},
    }


async def test_to_device_messages_come_and_are_acknowledged(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    message = {"messages": {bob.user_id: {bob.device_id: {"n": 1}}}}
    await client.ok(alice, "PUT", "/sendToDevice/m.test/t1", message)
    first = await slide(http, bob, _body(to_device={}))
    found = first["extensions"]["to_device"]
    assert [event["content"] for event in found["events"]] == [{"n": 1}]
    assert found["events"][0]["sender"] == alice.user_id
    since = found["next_batch"]
    # Not acknowledged yet: asked from the start again, it is still there.
    again = await slide(http, bob, _body(to_device={}), pos=first["pos"])
    assert len(again["extensions"]["to_device"]["events"]) == 1
    await client.ok(
        alice, "PUT", "/sendToDevice/m.test/t2", {"messages": {bob.user_id: {"*": {"n": 2}}}}
    )
    later = await slide(http, bob, _body(to_device={"since": since}), pos=first["pos"])
    found = later["extensions"]["to_device"]
    assert [event["content"] for event in found["events"]] == [{"n": 2}]
    # Naming a since acknowledged the first: nothing is left before it.
    stored = env.hs.server.storage.e2e_keys
    upto = await stored.to_device_position()
    waiting = await stored.to_device_messages(bob.user_id, bob.device_id, 0, upto, 10)
    assert len(waiting) == 1
    # A new connection goes on from the since it names.
    fresh = await slide(
        http, bob, {**_body(to_device={"since": found["next_batch"]}), "conn_id": "new"}
    )
    assert fresh["extensions"]["to_device"]["events"] == []


async def test_e2ee_device_lists_and_key_counts(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    keys = device_keys(alice)
    await client.ok(
        alice,
        "POST",
        "/keys/upload",
        {"device_keys": keys.body, "one_time_keys": one_time_keys(keys, alice, "a", "b")},
    )
    first = await slide(http, alice, _body(e2ee={}))
    e2ee = first["extensions"]["e2ee"]
    assert e2ee["device_one_time_keys_count"][OTK] == 2
    assert e2ee["device_unused_fallback_key_types"] == []
    assert e2ee["device_lists"] == {"changed": [], "left": []}
    # Bob's new keys: Alice, who shares a room with him, hears of it.
    bob_keys = device_keys(bob)
    await client.ok(bob, "POST", "/keys/upload", {"device_keys": bob_keys.body})
    changed = await slide(http, alice, _body(e2ee={}), pos=first["pos"])
    assert changed["extensions"]["e2ee"]["device_lists"]["changed"] == [bob.user_id]
    # Bob leaves: he is in no room with Alice any more.
    await client.ok(bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    left = await slide(http, alice, _body(e2ee={}), pos=changed["pos"])
    assert left["extensions"]["e2ee"]["device_lists"]["left"] == [bob.user_id]


async def test_account_data_global_and_per_room(env: SharedRoom) -> None:
    http, client, alice = env.client.http, env.client, env.alice
    user = q(alice.user_id)
    await client.ok(alice, "PUT", f"/user/{user}/account_data/m.test", {"one": 1})
    await client.ok(
        alice,
        "PUT",
        f"/user/{user}/rooms/{q(env.room_id)}/account_data/m.tag",
        {"tags": {"u.work": {}}},
    )
    first = await slide(http, alice, _body(account_data={}))
    found = first["extensions"]["account_data"]
    assert {"type": "m.test", "content": {"one": 1}} in found["global"]
    assert found["rooms"][env.room_id] == [{"type": "m.tag", "content": {"tags": {"u.work": {}}}}]
    quiet = await slide(http, alice, _body(account_data={}), pos=first["pos"])
    assert quiet["pos"] == first["pos"]
    assert quiet["extensions"]["account_data"] == {"global": [], "rooms": {}}
    await client.ok(alice, "PUT", f"/user/{user}/account_data/m.test", {"one": 2})
    later = await slide(http, alice, _body(account_data={}), pos=first["pos"])
    assert later["extensions"]["account_data"]["global"] == [
        {"type": "m.test", "content": {"one": 2}}
    ]
    # Only the rooms of the lists it names.
    other = await slide(
        http, alice, {**_body(account_data={"lists": ["none"]}), "conn_id": "other"}
    )
    assert other["extensions"]["account_data"]["rooms"] == {}


async def test_receipts_and_typing(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    sent = await client.ok(
        bob,
        "PUT",
        f"/rooms/{q(env.room_id)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "read me"},
    )
    event_id = sent["event_id"]
    first = await slide(http, alice, _body(receipts={}, typing={}))
    assert first["extensions"]["receipts"]["rooms"] == {}
    assert first["extensions"]["typing"]["rooms"] == {}
    await client.ok(alice, "POST", f"/rooms/{q(env.room_id)}/receipt/m.read/{q(event_id)}", {})
    await client.ok(
        bob,
        "PUT",
        f"/rooms/{q(env.room_id)}/typing/{q(bob.user_id)}",
        {"typing": True, "timeout": 30_000},
    )
    later = await slide(http, alice, _body(receipts={}, typing={}), pos=first["pos"])
    receipt = later["extensions"]["receipts"]["rooms"][env.room_id]
    assert receipt["type"] == "m.receipt"
    assert alice.user_id in receipt["content"][event_id]["m.read"]
    typing = later["extensions"]["typing"]["rooms"][env.room_id]
    assert typing == {"type": "m.typing", "content": {"user_ids": [bob.user_id]}}
    # Extensions not asked for are not answered.
    plain = await slide(http, alice, {"lists": {"all": all_rooms()}, "conn_id": "plain"})
    assert plain["extensions"] == {}


async def test_a_connection_of_extensions_alone_long_polls_for_messages(
    env: SharedRoom,
) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob

    def body(since: str | None = None) -> dict[str, Any]:
        to_device: dict[str, Any] = {"enabled": True}
        if since is not None:
            to_device["since"] = since
        return {
            "conn_id": "encryption",
            "extensions": {"to_device": to_device, "e2ee": {"enabled": True}},
        }

    first = await slide(http, bob, body())
    assert (first["lists"], first["rooms"]) == ({}, {})
    polled = body(first["extensions"]["to_device"]["next_batch"])
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await slide(http, bob, polled, pos=first["pos"], timeout_ms=60_000))

    notifier = env.hs.server.stream_notifier
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            # A message in a shared room is nothing to this connection.
            await env.hs.server.send_event(
                alice.user_id, env.room_id, "m.room.message", {"msgtype": "m.text", "body": "x"}
            )
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert answers == []
            message = {"messages": {bob.user_id: {bob.device_id: {"secret": 1}}}}
            await client.ok(alice, "PUT", "/sendToDevice/m.room.encrypted/t9", message)
    (answer,) = answers
    assert [event["content"] for event in answer["extensions"]["to_device"]["events"]] == [
        {"secret": 1}
    ]
    assert answer["rooms"] == {}


def _presence(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each sender's presence content in the presence extension; a sender
    twice fails."""
    events = answer["extensions"]["presence"]["events"]
    assert all(event["type"] == "m.presence" for event in events)
    found = {event["sender"]: event["content"] for event in events}
    assert len(found) == len(events)
    return found


async def test_presence_of_those_sharing_a_room_and_a_long_poll_it_wakes(
    env: SharedRoom,
) -> None:
    http, client, alice, bob, carol = (
        env.client.http,
        env.client,
        env.alice,
        env.bob,
        env.carol,
    )
    status = "/presence/{}/status"
    await client.ok(bob, "PUT", status.format(q(bob.user_id)), {"presence": "unavailable"})
    await client.ok(carol, "PUT", status.format(q(carol.user_id)), {"presence": "online"})
    first = await slide(http, alice, _body(presence={}))
    seen = _presence(first)
    # The request itself marked Alice online; Carol shares no room with her.
    assert seen[alice.user_id]["presence"] == "online"
    assert seen[bob.user_id]["presence"] == "unavailable"
    assert carol.user_id not in seen
    # Nothing changed since: nothing again, and the same pos.
    quiet = await slide(http, alice, _body(presence={}), pos=first["pos"])
    assert quiet["pos"] == first["pos"]
    assert _presence(quiet) == {}
    # Not asked for, not answered.
    plain = await slide(http, alice, {**_body(), "conn_id": "plain"})
    assert "presence" not in plain["extensions"]

    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(
            await slide(http, alice, _body(presence={}), pos=first["pos"], timeout_ms=60_000)
        )

    notifier = env.hs.server.stream_notifier
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            # Carol shares no room with Alice: her change leaves the poll asleep.
            await client.ok(
                carol, "PUT", status.format(q(carol.user_id)), {"presence": "unavailable"}
            )
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert answers == []
            await client.ok(
                bob,
                "PUT",
                status.format(q(bob.user_id)),
                {"presence": "online", "status_msg": "lunch"},
            )
    (woken,) = answers
    assert woken["pos"] != first["pos"]
    bob_now = _presence(woken)
    assert set(bob_now) == {bob.user_id}
    assert bob_now[bob.user_id]["presence"] == "online"
    assert bob_now[bob.user_id]["status_msg"] == "lunch"
    assert woken["rooms"] == {}
    # The next request goes on from there: nothing new.
    after = await slide(http, alice, _body(presence={}), pos=woken["pos"])
    assert _presence(after) == {}
