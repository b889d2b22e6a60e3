"""Presence in /sync over real HTTP: a sync marks its user online, those
sharing a room see it, a change wakes their long-polls, and it travels to
another server as an ``m.presence`` EDU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _client import SharedRoom, open_shared_room, q
from _federation import eventually, share_a_room, two_servers


def _presence(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each sender's presence content in a sync answer; a sender twice fails."""
    events = body["presence"]["events"]
    assert all(event["type"] == "m.presence" for event in events)
    found = {event["sender"]: event["content"] for event in events}
    assert len(found) == len(events)
    return found


async def test_a_sync_shows_the_presence_of_those_sharing_a_room(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, SharedRoom) as env:
        c, alice, bob, carol = env.client, env.alice, env.bob, env.carol

        # A sync marks its user online, unless it says otherwise.
        await c.ok(carol, "GET", "/sync", params={"set_presence": "offline"})
        carol_said = await c.ok(carol, "GET", f"/presence/{q(carol.user_id)}/status")
        assert carol_said == {"presence": "offline"}
        await c.ok(bob, "GET", "/sync", params={"set_presence": "unavailable"})
        first = await c.ok(alice, "GET", "/sync")
        seen = _presence(first)
        assert seen[alice.user_id]["presence"] == "online"
        assert seen[alice.user_id]["currently_active"] is True
        assert seen[bob.user_id]["presence"] == "unavailable"
        # Carol shares no room with Alice, and synced as offline.
        assert carol.user_id not in seen

        # Nothing changed: nothing again, and the answer is empty.
        again = await c.ok(alice, "GET", "/sync", params={"since": first["next_batch"]})
        assert _presence(again) == {}

        # Bob's new status wakes Alice's long-poll; Carol's, who shares no
        # room with her, leaves it asleep.
        woken = await env.woken_sync(
            alice,
            again["next_batch"],
            quiet=lambda: c.ok(
                carol, "PUT", f"/presence/{q(carol.user_id)}/status", {"presence": "online"}
            ),
            wake=lambda: c.ok(
                bob,
                "PUT",
                f"/presence/{q(bob.user_id)}/status",
                {"presence": "online", "status_msg": "lunch"},
            ),
        )
        bob_now = _presence(woken)
        assert set(bob_now) == {bob.user_id}
        assert bob_now[bob.user_id]["presence"] == "online"
        assert bob_now[bob.user_id]["status_msg"] == "lunch"
        assert bob_now[bob.user_id]["currently_active"] is True
        assert woken["rooms"]["join"] == {}

        # The filter's presence section chooses senders.
        only_alice = json.dumps({"presence": {"senders": [alice.user_id]}})
        filtered = await c.ok(alice, "GET", "/sync", params={"filter": only_alice})
        assert set(_presence(filtered)) == {alice.user_id}
        none = json.dumps({"presence": {"not_types": ["m.presence"]}})
        assert _presence(await c.ok(alice, "GET", "/sync", params={"filter": none})) == {}


async def test_presence_travels_to_the_servers_of_the_users_rooms(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        await share_a_room(servers)
        status = {"presence": "unavailable", "status_msg": "away"}
        await ca.ok(alice, "PUT", f"/presence/{q(alice.user_id)}/status", status)

        async def at_b() -> bool:
            said = await cb.ok(bob, "GET", f"/presence/{q(alice.user_id)}/status")
            return bool(said.get("status_msg") == "away")

        await eventually(at_b, "Alice's presence at B")
        at_bob = _presence(await cb.ok(bob, "GET", "/sync"))
        assert at_bob[alice.user_id]["presence"] == "unavailable"
        assert at_bob[alice.user_id]["status_msg"] == "away"

        # And back: Bob's sync marks him online at A.
        async def bob_online_at_a() -> bool:
            said = await ca.ok(alice, "GET", f"/presence/{q(bob.user_id)}/status")
            return bool(said["presence"] == "online")

        await eventually(bob_online_at_a, "Bob's presence at A")
