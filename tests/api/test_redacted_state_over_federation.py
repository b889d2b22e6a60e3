"""A room's state events that were redacted reach a server joining later
redacted: the send_join answer serves events as ``/state`` and ``/event``
do, so what a moderator removed does not reach the joining server's users
whole (and the joining server, never shown the redaction, would keep it).
"""

from __future__ import annotations

from pathlib import Path

import trio
from _client import q
from _federation import eventually, two_servers


async def test_a_redacted_topic_reaches_a_joining_server_redacted(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="public_chat", room_alias_name="lobby")
        path = f"/rooms/{q(room_id)}/state/m.room.topic"
        topic = await ca.ok(alice, "PUT", path, {"topic": "the vault code is 4711"})
        await ca.ok(
            alice,
            "PUT",
            f"/rooms/{q(room_id)}/redact/{q(topic['event_id'])}/r1",
            {"reason": "oops"},
        )
        assert await ca.ok(alice, "GET", path) == {}
        # Newer events, so the redaction is no prev event of the join.
        for n in range(3):
            await ca.ok(
                alice,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/m{n}",
                {"msgtype": "m.text", "body": f"later {n}"},
            )

        await cb.ok(bob, "POST", f"/join/{q(f'#lobby:{a.server_name}')}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)

        async def joined_at_a() -> bool:
            members = await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/joined_members")
            return bob.user_id in members["joined"]

        await eventually(joined_at_a, "Bob's join at A")
        state = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/state")
        topics = [event for event in state if event["type"] == "m.room.topic"]
        assert [event["event_id"] for event in topics] == [topic["event_id"]]
        assert topics[0]["content"] == {}
        assert await cb.ok(bob, "GET", path) == {}


async def test_an_invite_shows_another_server_a_redacted_name_redacted(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (_, _, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="private_chat")
        name = await ca.ok(
            alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "Project Nightfall"}
        )
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/redact/{q(name['event_id'])}/r1", {})
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})

        async def invited_at_b() -> bool:
            sync = await cb.ok(bob, "GET", "/sync")
            return room_id in sync["rooms"]["invite"]

        await eventually(invited_at_b, "Bob's invite at B")
        sync = await cb.ok(bob, "GET", "/sync")
        stripped = sync["rooms"]["invite"][room_id]["invite_state"]["events"]
        names = [event["content"] for event in stripped if event["type"] == "m.room.name"]
        assert names == [{}]
