"""Receipts and read markers over real HTTP: set, refused, in /sync, waking long-polls."""

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
    async def send(self, user: TestUser, body: str, txn: str) -> str:
        path = f"/rooms/{q(self.room_id)}/send/m.room.message/{txn}"
        answer = await self.client.ok(user, "PUT", path, {"msgtype": "m.text", "body": body})
        event_id: str = answer["event_id"]
        return event_id

    def receipt(self, receipt_type: str, event_id: str) -> str:
        return f"/rooms/{q(self.room_id)}/receipt/{q(receipt_type)}/{q(event_id)}"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as env:
        yield env


def _ephemeral(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    room = body["rooms"]["join"].get(room_id)
    if room is None:
        return []
    events: list[dict[str, Any]] = room["ephemeral"]["events"]
    return events


def _receipts(body: dict[str, Any], room_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for event in _ephemeral(body, room_id):
        if event["type"] == "m.receipt":
            found.update(event["content"])
    return found


async def test_a_read_receipt_reaches_every_member_a_private_one_its_owner_only(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    first = await env.send(alice, "one", "1")
    second = await env.send(alice, "two", "2")
    assert await c.ok(bob, "POST", env.receipt("m.read", first), {}) == {}
    assert await c.ok(bob, "POST", env.receipt("m.read.private", second), {}) == {}

    seen_by_alice = _receipts(await env.sync(alice), env.room_id)
    assert set(seen_by_alice) == {first}
    (read,) = seen_by_alice[first]["m.read"].items()
    assert read[0] == bob.user_id
    assert isinstance(read[1]["ts"], int)
    seen_by_bob = _receipts(await env.sync(bob), env.room_id)
    assert set(seen_by_bob[first]) == {"m.read"}
    assert set(seen_by_bob[second]["m.read.private"]) == {bob.user_id}


async def test_a_threaded_receipt_is_kept_beside_the_unthreaded_one(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    root = await env.send(alice, "root", "1")
    in_thread = await c.ok(
        alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/send/m.room.message/2",
        {"body": "reply", "m.relates_to": {"rel_type": "m.thread", "event_id": root}},
    )
    reply = in_thread["event_id"]
    await c.ok(bob, "POST", env.receipt("m.read", reply), {"thread_id": root})
    await c.ok(bob, "POST", env.receipt("m.read", root), {"thread_id": "main"})
    await c.ok(bob, "POST", env.receipt("m.read", root), {})
    receipts = _receipts(await env.sync(alice), env.room_id)
    assert receipts[reply]["m.read"][bob.user_id]["thread_id"] == root
    assert receipts[root]["m.read"][bob.user_id].get("thread_id") is None
    # A thread's event read as the main timeline's, or as another thread's.
    for thread in ("main", "$another"):
        await c.refused(
            bob,
            "POST",
            env.receipt("m.read", reply),
            {"thread_id": thread},
            status=400,
            errcode="M_INVALID_PARAM",
        )


async def test_bad_receipts_are_refused(env: Env) -> None:
    c, alice, carol = env.client, env.alice, env.carol
    event_id = await env.send(alice, "hi", "1")
    refusals: list[tuple[TestUser, str, Any, int, str]] = [
        (alice, env.receipt("m.unknown", event_id), {}, 400, "M_INVALID_PARAM"),
        (alice, env.receipt("m.read", event_id), {"thread_id": ""}, 400, "M_INVALID_PARAM"),
        (alice, env.receipt("m.read", event_id), {"thread_id": 5}, 400, "M_INVALID_PARAM"),
        (
            alice,
            env.receipt("m.fully_read", event_id),
            {"thread_id": "main"},
            400,
            "M_INVALID_PARAM",
        ),
        (alice, env.receipt("m.read", "not-an-event"), {}, 400, "M_INVALID_PARAM"),
        (alice, env.receipt("m.read", "$nowhere:localhost"), {}, 404, "M_NOT_FOUND"),
        (carol, env.receipt("m.read", event_id), {}, 403, "M_FORBIDDEN"),
        (alice, f"/rooms/{q(env.room_id)}/read_markers", {"m.read": 5}, 400, "M_BAD_JSON"),
        (carol, f"/rooms/{q(env.room_id)}/read_markers", {"m.read": event_id}, 403, "M_FORBIDDEN"),
    ]
    for user, path, body, status, errcode in refusals:
        await c.refused(user, "POST", path, body, status=status, errcode=errcode)
    await c.refused(
        alice, "POST", env.receipt("m.read", event_id), raw=b"[1]", status=400, errcode="M_NOT_JSON"
    )
    assert _receipts(await env.sync(alice), env.room_id) == {}


async def test_read_markers_set_the_fully_read_marker_and_receipts(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    first = await env.send(alice, "one", "1")
    second = await env.send(alice, "two", "2")
    markers = f"/rooms/{q(env.room_id)}/read_markers"
    body = {"m.fully_read": second, "m.read": second, "m.read.private": first}
    assert await c.ok(bob, "POST", markers, body) == {}
    synced = await env.sync(bob)
    room = synced["rooms"]["join"][env.room_id]
    assert room["account_data"]["events"] == [
        {"type": "m.fully_read", "content": {"event_id": second}}
    ]
    receipts = _receipts(synced, env.room_id)
    assert set(receipts[second]["m.read"]) == {bob.user_id}
    assert set(receipts[first]["m.read.private"]) == {bob.user_id}
    # The marker does not move back, and the receipt endpoint sets it too.
    await c.ok(bob, "POST", env.receipt("m.fully_read", first), {})
    fully_read = f"/user/{q(bob.user_id)}/rooms/{q(env.room_id)}/account_data/m.fully_read"
    assert await c.ok(bob, "GET", fully_read) == {"event_id": second}
    third = await env.send(alice, "three", "3")
    await c.ok(bob, "POST", env.receipt("m.fully_read", third), {})
    assert await c.ok(bob, "GET", fully_read) == {"event_id": third}
    # Clients may not set it directly.
    await c.refused(bob, "PUT", fully_read, {"event_id": first}, status=405, errcode="M_BAD_JSON")


async def test_an_incremental_sync_lists_only_new_receipts(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    first = await env.send(alice, "one", "1")
    await c.ok(bob, "POST", env.receipt("m.read", first), {})
    since = (await env.sync(alice))["next_batch"]
    # Nothing new: nothing for the room.
    assert env.room_id not in (await env.sync(alice, since=since))["rooms"]["join"]
    await c.ok(alice, "POST", env.receipt("m.read", first), {})
    later = await env.sync(alice, since=since)
    room = later["rooms"]["join"][env.room_id]
    assert room["timeline"]["events"] == []
    # Alice's receipt alone: Bob's came before the token.
    receipts = _receipts(later, env.room_id)
    assert list(receipts) == [first]
    assert list(receipts[first]) == ["m.read"]
    assert list(receipts[first]["m.read"]) == [alice.user_id]


async def test_a_long_poll_is_woken_by_a_receipt_of_its_room(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    event_id = await env.send(alice, "hi", "1")
    elsewhere = await c.create_room(carol)
    carols = await c.ok(carol, "PUT", f"/rooms/{q(elsewhere)}/send/m.room.message/1", {"body": "x"})
    since = (await env.sync(alice))["next_batch"]

    async def elsewhere_or_private() -> None:
        # A receipt in a room Alice is not in, and Bob's private one,
        # leave her poll asleep.
        await c.ok(
            carol, "POST", f"/rooms/{q(elsewhere)}/receipt/m.read/{q(carols['event_id'])}", {}
        )
        await c.ok(bob, "POST", env.receipt("m.read.private", event_id), {})

    answer = await env.woken_sync(
        alice,
        since,
        quiet=elsewhere_or_private,
        wake=lambda: c.ok(bob, "POST", env.receipt("m.read", event_id), {}),
    )
    assert set(_receipts(answer, env.room_id)[event_id]) == {"m.read"}
    assert answer["next_batch"] != since


async def test_the_filter_chooses_the_ephemeral_events(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    event_id = await env.send(alice, "hi", "1")
    await c.ok(bob, "POST", env.receipt("m.read", event_id), {})
    await c.ok(bob, "PUT", f"/rooms/{q(env.room_id)}/typing/{q(bob.user_id)}", {"typing": True})

    async def types(sync_filter: dict[str, Any]) -> list[str]:
        body = await env.sync(alice, filter=json.dumps(sync_filter))
        return [event["type"] for event in _ephemeral(body, env.room_id)]

    assert await types({}) == ["m.receipt", "m.typing"]
    assert await types({"room": {"ephemeral": {"types": ["m.typing"]}}}) == ["m.typing"]
    assert await types({"room": {"ephemeral": {"not_types": ["m.typ*"]}}}) == ["m.receipt"]
    assert await types({"room": {"ephemeral": {"limit": 1}}}) == ["m.receipt"]
    assert await types({"room": {"ephemeral": {"not_rooms": [env.room_id]}}}) == []
    # A senders list does not hide events that have no sender.
    assert await types({"room": {"ephemeral": {"senders": [bob.user_id]}}}) == [
        "m.receipt",
        "m.typing",
    ]
