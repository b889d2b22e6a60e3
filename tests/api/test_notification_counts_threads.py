"""Notification counts of a room with a thread, whole and split by thread,
as threaded and unthreaded read receipts and the user's own events clear
them, sync after sync; and which receipt ``/sync`` shows when one event
has both, over HTTP."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import Client, SharedRoom, open_shared_room, q
from _federation import eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestUser

_TXN = itertools.count()
_THREADED = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _send(
    client: Client,
    user: TestUser,
    room_id: str,
    content: dict[str, Any],
    kind: str = "m.room.message",
) -> str:
    sent = await client.ok(user, "PUT", f"/rooms/{q(room_id)}/send/{kind}/n{next(_TXN)}", content)
    event_id: str = sent["event_id"]
    return event_id


def _text(body: str, relates: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if relates is not None:
        content["m.relates_to"] = relates
    return content


def _counts(answer: dict[str, Any], room_id: str) -> tuple[tuple[int, int], dict[str, Any]]:
    room = answer["rooms"]["join"][room_id]
    unread = room["unread_notifications"]
    threads = {
        thread: (counts["notification_count"], counts["highlight_count"])
        for thread, counts in room.get("unread_thread_notifications", {}).items()
    }
    return (unread["notification_count"], unread["highlight_count"]), threads


async def test_counts_by_thread_follow_threaded_and_unthreaded_receipts(env: SharedRoom) -> None:
    c, alice, bob, room_id = env.client, env.alice, env.bob, env.room_id
    a = await _send(c, alice, room_id, _text("Hello world!"))
    thread = {"rel_type": "m.thread", "event_id": a}
    b = await _send(c, alice, room_id, _text("Start thread!", thread))
    await _send(
        c,
        alice,
        room_id,
        _text("Thread response", {**thread}) | {"m.mentions": {"user_ids": [bob.user_id]}},
    )
    d = await _send(
        c, alice, room_id, _text("Hello Bob!") | {"m.mentions": {"user_ids": [bob.user_id]}}
    )
    await _send(c, alice, room_id, _text("End thread", thread))
    f = await _send(
        c, alice, room_id, _text("Reference!", {"rel_type": "m.reference", "event_id": a})
    )
    g = await _send(
        c,
        alice,
        room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": f, "key": "test"}},
        "m.reaction",
    )

    async def both() -> tuple[Any, Any]:
        whole = _counts(await env.sync(bob), room_id)
        split = _counts(await env.sync(bob, filter=_THREADED), room_id)
        return whole, split

    # Six messages notify, the reaction does not; two mention Bob.
    assert await both() == (((6, 2), {}), ((3, 1), {a: (3, 1)}))

    receipt = f"/rooms/{q(room_id)}/receipt/m.read"
    await c.ok(bob, "POST", f"{receipt}/{q(a)}", {"thread_id": "main"})
    assert await both() == (((5, 2), {}), ((2, 1), {a: (3, 1)}))

    await c.ok(bob, "POST", f"{receipt}/{q(b)}", {"thread_id": a})
    assert await both() == (((4, 2), {}), ((2, 1), {a: (2, 1)}))

    await c.ok(bob, "POST", f"{receipt}/{q(d)}", {})
    assert await both() == (((2, 0), {}), ((1, 0), {a: (1, 0)}))

    # A receipt in the thread past its last reply reads the thread alone:
    # the reference on the main timeline stays unread.
    await c.ok(bob, "POST", f"{receipt}/{q(g)}", {"thread_id": a})
    assert await both() == (((1, 0), {}), ((1, 0), {}))

    await c.ok(bob, "POST", f"{receipt}/{q(f)}", {"thread_id": "main"})
    assert await both() == (((0, 0), {}), ((0, 0), {}))


async def test_a_threaded_room_counts_on_as_events_come_and_others_stay_incremental(
    env: SharedRoom,
) -> None:
    c, alice, bob, room_id = env.client, env.alice, env.bob, env.room_id
    root = await _send(c, alice, room_id, _text("root"))
    thread = {"rel_type": "m.thread", "event_id": root}
    reply = await _send(c, alice, room_id, _text("reply", thread))
    receipt = f"/rooms/{q(room_id)}/receipt/m.read"
    await c.ok(bob, "POST", f"{receipt}/{q(reply)}", {"thread_id": root})
    # The root is unread on the main timeline; the thread is read.
    assert _counts(await env.sync(bob), room_id)[0] == (1, 0)

    await _send(c, alice, room_id, _text("second reply", thread))
    await _send(c, alice, room_id, _text("in the room"))
    assert _counts(await env.sync(bob), room_id)[0] == (3, 0)

    # Bob's own reply reads the thread alone.
    await _send(c, bob, room_id, _text("my reply", thread))
    assert _counts(await env.sync(bob), room_id)[0] == (2, 0)

    # Bob's own message on the main timeline reads it, not the thread.
    await _send(c, alice, room_id, _text("third reply", thread))
    await _send(c, bob, room_id, _text("my message"))
    assert _counts(await env.sync(bob), room_id)[0] == (1, 0)


def _read_by(answer: dict[str, Any], room_id: str, event_id: str, user_id: str) -> Any:
    for event in answer["rooms"]["join"].get(room_id, {}).get("ephemeral", {}).get("events", []):
        if event["type"] == "m.receipt" and event_id in event["content"]:
            return event["content"][event_id].get("m.read", {}).get(user_id)
    return None


async def test_an_unthreaded_receipt_wins_over_a_threaded_one_of_the_same_event(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        a = await _send(ca, alice, room_id, _text("Hello world!"))
        b = await _send(
            ca, alice, room_id, _text("Start thread!", {"rel_type": "m.thread", "event_id": a})
        )
        receipt = f"/rooms/{q(room_id)}/receipt/m.read/{q(b)}"
        await ca.ok(alice, "POST", receipt, {})
        await ca.ok(alice, "POST", receipt, {"thread_id": a})

        for client, user in ((ca, alice), (cb, bob)):

            async def unthreaded(client: Client = client, user: TestUser = user) -> bool:
                answer = await client.ok(user, "GET", "/sync")
                read = _read_by(answer, room_id, b, alice.user_id)
                return read is not None and "thread_id" not in read

            await eventually(unthreaded, f"Alice's unthreaded receipt at {client.hs.server_name}")
