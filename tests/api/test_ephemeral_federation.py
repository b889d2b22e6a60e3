"""Receipts and typing across two homeservers over loopback TLS: what a user
of A does reaches B's /sync as m.receipt and m.typing EDUs, and back; EDUs
from a server about users it does not own, or rooms it is not in, are
dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _client import Client, q
from _federation import eventually, share_a_room, two_servers

from ranvier.core.receipts import RemoteReceipt
from ranvier.core.typing import REMOTE_TIMEOUT_MS
from ranvier.testing.homeserver import TestUser


def _ephemeral(body: dict[str, Any], room_id: str, event_type: str) -> dict[str, Any] | None:
    room = body["rooms"]["join"].get(room_id)
    for event in [] if room is None else room["ephemeral"]["events"]:
        if event["type"] == event_type:
            content: dict[str, Any] = event["content"]
            return content
    return None


async def test_receipts_and_typing_travel_both_ways(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        sent = await ca.ok(
            alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "hi"}
        )
        event_id = sent["event_id"]

        async def at_b() -> bool:
            status, _ = await cb.call(bob, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
            return bool(status == 200)

        await eventually(at_b, "Alice's message at B")
        since_b = (await cb.ok(bob, "GET", "/sync"))["next_batch"]
        since_a = (await ca.ok(alice, "GET", "/sync"))["next_batch"]

        receipt = f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}"
        await ca.ok(alice, "POST", receipt, {"thread_id": "main"})
        await ca.ok(
            alice, "PUT", f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}", {"typing": True}
        )

        async def seen_on(
            client: Client, user: TestUser, since: str, event_type: str, want: Any
        ) -> None:
            async def check() -> bool:
                body = await client.ok(user, "GET", "/sync", params={"since": since})
                return bool(_ephemeral(body, room_id, event_type) == want)

            await eventually(check, f"{event_type} for {user.user_id}")

        alice_read = await ca.ok(alice, "GET", "/sync")
        own = _ephemeral(alice_read, room_id, "m.receipt")
        assert own is not None
        ts = own[event_id]["m.read"][alice.user_id]["ts"]
        await seen_on(
            cb,
            bob,
            since_b,
            "m.receipt",
            {event_id: {"m.read": {alice.user_id: {"ts": ts, "thread_id": "main"}}}},
        )
        await seen_on(cb, bob, since_b, "m.typing", {"user_ids": [alice.user_id]})

        # And back: Bob's receipt and typing reach A; his private receipt,
        # sent before, stays home.
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/receipt/m.read.private/{q(event_id)}", {})
        await cb.ok(bob, "POST", receipt, {})
        await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/typing/{q(bob.user_id)}", {"typing": True})

        async def bobs_receipt_at_a() -> bool:
            body = await ca.ok(alice, "GET", "/sync", params={"since": since_a})
            receipts = _ephemeral(body, room_id, "m.receipt") or {}
            return bob.user_id in receipts.get(event_id, {}).get("m.read", {})

        await eventually(bobs_receipt_at_a, "Bob's receipt at A")
        body = await ca.ok(alice, "GET", "/sync", params={"since": since_a})
        at_a = _ephemeral(body, room_id, "m.receipt")
        assert at_a is not None
        assert set(at_a[event_id]) == {"m.read"}
        await seen_on(
            ca, alice, since_a, "m.typing", {"user_ids": sorted([alice.user_id, bob.user_id])}
        )
        await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/typing/{q(bob.user_id)}", {"typing": False})
        await seen_on(ca, alice, since_a, "m.typing", {"user_ids": [alice.user_id]})

        # B cannot speak for A's users, nor for rooms it is not in.
        elsewhere = await ca.create_room(alice)
        forged = [
            RemoteReceipt(room_id, alice.user_id, "$forged", 1),
            RemoteReceipt(elsewhere, bob.user_id, "$forged", 1),
        ]
        assert await a.server.receipts.on_remote_receipts(b.server_name, forged) == 0
        typing = a.server.typing_notices
        assert not await typing.on_remote_typing(b.server_name, room_id, alice.user_id, False)
        assert not await typing.on_remote_typing(b.server_name, elsewhere, bob.user_id, True)
        assert typing.typing_in(room_id) == [alice.user_id]
        assert typing.typing_in(elsewhere) == []

        # Alice's typing ending by its timeout on A is told to B, well
        # before B's own timeout for other servers' typing would end it.
        path = f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}"
        await ca.ok(alice, "PUT", path, {"typing": True, "timeout": 200})

        async def stopped_at_b() -> bool:
            await trio.lowlevel.checkpoint()
            return b.server.typing_notices.typing_in(room_id) == []

        with trio.fail_after(REMOTE_TIMEOUT_MS / 1000 / 2):
            await eventually(stopped_at_b, "the end of Alice's typing at B")
        assert typing.typing_in(room_id) == []
