"""``/messages`` pages back past a federated join: B's user joins A's room,
which has history from before B was in it (more than one ``/backfill`` answer
holds), and pages back through B to the
room's create event. B fetches what it lacks from A with ``/backfill`` as
the pages reach the start of what it holds, and the events it takes in
stay history: they are not new to ``/sync``, not forward extremities, and
do not change the room's current state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _client import Client, q
from _federation import two_servers


async def test_paging_back_through_the_joining_server_reaches_the_create_event(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="public_chat", name="Old news")
        for number in range(60):
            path = f"/rooms/{q(room_id)}/send/m.room.message/{number}"
            await ca.ok(alice, "PUT", path, {"msgtype": "m.text", "body": f"before {number}"})
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "New news"})
        everything_at_a = await _page_back(ca, alice, room_id)

        await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "after"})
        synced = await cb.ok(bob, "GET", "/sync")
        storage = b.server.storage
        extremities = await storage.get_forward_extremities(room_id)
        current = await storage.get_current_state_ids(room_id)

        everything_at_b = await _page_back(cb, bob, room_id)
        assert everything_at_b[0]["type"] == "m.room.create"
        bodies = [
            e["content"].get("body") for e in everything_at_b if e["type"] == "m.room.message"
        ]
        assert bodies == [f"before {number}" for number in range(60)] + ["after"]
        # The same history as A holds, in the same order, then B's own events.
        ids_at_a = [event["event_id"] for event in everything_at_a]
        ids_at_b = [event["event_id"] for event in everything_at_b]
        assert ids_at_b[: len(ids_at_a)] == ids_at_a
        assert [e["type"] for e in everything_at_b[len(ids_at_a) :]] == [
            "m.room.member",
            "m.room.message",
        ]

        # History stays history: nothing new to sync, the tips and the state unmoved.
        later = await cb.ok(bob, "GET", "/sync", params={"since": synced["next_batch"]})
        assert room_id not in later["rooms"]["join"]
        assert await storage.get_forward_extremities(room_id) == extremities
        assert await storage.get_current_state_ids(room_id) == current
        name = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/state/m.room.name")
        assert name == {"name": "New news"}
        # Paging again asks nobody: the history here reaches the create event.
        assert await _page_back(cb, bob, room_id) == everything_at_b
        # And forward from the start gives the same events.
        forward = await cb.ok(
            bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "f", "limit": 100}
        )
        assert [event["event_id"] for event in forward["chunk"]] == ids_at_b


async def _page_back(client: Client, user: Any, room_id: str) -> list[dict[str, Any]]:
    """Every event ``/messages`` gives paging back 7 at a time, oldest first."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dir": "b", "limit": 7}
    for _ in range(40):
        page = await client.ok(user, "GET", f"/rooms/{q(room_id)}/messages", params=params)
        events.extend(page["chunk"])
        if "end" not in page:
            return events[::-1]
        params["from"] = page["end"]
    raise AssertionError("paging back never ended")
