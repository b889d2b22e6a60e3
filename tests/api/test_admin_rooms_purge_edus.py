"""Receipts and typing sent over federation for a room purged here: this
server is no longer in the room, so it drops them, as the spec has a
server ignore EDUs for rooms it is not in, and stores nothing of them."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

from _admin import admin_ok
from _client import q
from _federation import eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestHomeserver

_SEND = "/_matrix/federation/v1/send/"
_txn_ids = itertools.count()


async def _send_edus(sender: TestHomeserver, to: TestHomeserver, edus: list[Any]) -> Any:
    """``edus`` in one transaction of ``sender`` straight to ``to``'s ``/send``."""
    body = {"origin": sender.server_name, "origin_server_ts": 1, "pdus": [], "edus": edus}
    return await sender.server.federation_client.put_json(
        to.server_name, f"{_SEND}edus-{next(_txn_ids)}", body
    )


def _receipt_rows(server: TestHomeserver, room_id: str) -> list[tuple[str, str]]:
    conn = sqlite3.connect(server.server.config.paths.database)
    try:
        rows = conn.execute(
            "SELECT user_id, event_id FROM receipts WHERE room_id = ?", (room_id,)
        ).fetchall()
    finally:
        conn.close()
    return [(str(user), str(event)) for user, event in rows]


async def test_edus_for_a_purged_room_are_dropped(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        sent = await cb.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "read me"},
        )
        message = sent["event_id"]

        async def message_at_a() -> bool:
            return await a.server.storage.get_event(message) is not None

        await eventually(message_at_a, "Bob's message at A")

        def edus(typing: bool) -> list[Any]:
            receipt = {"event_ids": [message], "data": {"ts": 7}}
            return [
                {"edu_type": "m.receipt", "content": {room_id: {"m.read": {bob.user_id: receipt}}}},
                {
                    "edu_type": "m.typing",
                    "content": {"room_id": room_id, "user_id": bob.user_id, "typing": typing},
                },
            ]

        # While A is in the room, it takes both.
        assert await _send_edus(b, a, edus(True)) == {"pdus": {}}
        assert _receipt_rows(a, room_id) == [(bob.user_id, message)]
        assert a.server.typing_notices.typing_in(room_id) == [bob.user_id]
        await _send_edus(b, a, edus(False))
        assert a.server.typing_notices.typing_in(room_id) == []

        admin = await a.register_user("root", admin=True)
        answer = await admin_ok(ca.http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {})
        status = await admin_ok(
            ca.http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}"
        )
        assert status["status"] == "complete"
        assert _receipt_rows(a, room_id) == []

        # The same EDUs again: the transaction is answered, the EDUs dropped.
        assert await _send_edus(b, a, edus(True)) == {"pdus": {}}
        assert _receipt_rows(a, room_id) == []
        assert a.server.typing_notices.typing_in(room_id) == []
        assert await a.server.storage.get_room_version(room_id) is None
        # Alice's syncs answer without the room.
        async with a.client(alice) as http:
            synced = await http.get("/_matrix/client/v3/sync", params={"timeout": 0})
        assert synced.status_code == 200
        for section in ("join", "invite", "knock", "leave"):
            assert room_id not in synced.json()["rooms"].get(section, {})
