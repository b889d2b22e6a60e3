"""What a state event replaced, in a room joined with partial state, over
real HTTP between two servers: an event received while the state is
partial is placed on that state (with the sender's membership, which its
auth events name), and placed again on the full state once the resync is
done, the record of what it replaced written afresh each time."""

from __future__ import annotations

from typing import Any

import trio
from _client import q
from _federation import eventually, two_servers

from ranvier.testing.held_routes import HeldRoutes

# The reads that start the resync; not /event, which ingestion needs.
_RESYNC_READS = frozenset(
    ("GET", f"/_matrix/federation/v1/{pattern}")
    for pattern in ("state_ids/{room_id}", "state/{room_id}")
)


async def test_a_rename_received_during_a_resync_keeps_what_it_replaced_after_it(
    tmp_path: Any,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="public_chat")
        # A member of A who joins before Bob: B's partial state lacks them.
        member = await a.register_user("member")
        await ca.ok(member, "POST", f"/rooms/{q(room_id)}/join", {})
        path = f"/rooms/{q(room_id)}/state/m.room.member/{q(member.user_id)}"
        joined = await ca.ok(member, "GET", path, params={"format": "event"})
        held = HeldRoutes(a.server.federation_app.router, _RESYNC_READS)
        a.server.federation_app.router = held
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        assert await b.server.storage.is_partial_state_room(room_id)

        renamed = await ca.ok(member, "PUT", path, {"membership": "join", "displayname": "Renamed"})
        rename_id = renamed["event_id"]

        async def rename_at_b() -> dict[str, Any] | None:
            page = await cb.ok(
                bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": 20}
            )
            found = [event for event in page["chunk"] if event["event_id"] == rename_id]
            return found[0] if found else None

        async def received() -> bool:
            return await rename_at_b() is not None

        await eventually(received, "the rename at B")
        during = await rename_at_b()
        assert during is not None
        # The member's join is no part of the state B was given, but the
        # rename names it as an auth event, so it is in the state before.
        assert during["unsigned"]["replaces_state"] == joined["event_id"]
        assert during["unsigned"]["prev_content"] == joined["content"]
        assert await b.server.storage.is_partial_state_room(room_id)
        assert await b.server.storage.get_partial_state_event_ids([rename_id]) == {rename_id}

        held.released.set()
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        assert await b.server.storage.get_partial_state_event_ids([rename_id]) == set()
        # Placed again on the full state: what it replaced is written afresh.
        after = await rename_at_b()
        assert after is not None
        assert after["unsigned"]["replaces_state"] == joined["event_id"]
        assert after["unsigned"]["prev_content"] == joined["content"]
        assert after["content"]["displayname"] == "Renamed"
        # /sync and /event agree.
        synced = await cb.ok(
            bob, "GET", "/sync", params={"filter": '{"room": {"timeline": {"limit": 50}}}'}
        )
        timeline = synced["rooms"]["join"][room_id]["timeline"]["events"]
        (in_sync,) = [event for event in timeline if event["event_id"] == rename_id]
        assert in_sync["unsigned"]["replaces_state"] == joined["event_id"]
        one = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/event/{q(rename_id)}")
        assert one["unsigned"]["prev_content"] == joined["content"]
