"""Knocking across two homeservers over loopback TLS: Bob of B knocks on
Alice's room on A through make_knock and send_knock, A's members see the
knock, B's /sync shows it with the state A answered, and it is let in
or withdrawn from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _client import Client, q
from _federation import TwoServers, eventually, two_servers

from ranvier.testing.homeserver import TestUser

_KNOCK_RULE = {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}


async def _knock_room(servers: TwoServers) -> str:
    """Alice's room on A of join rule ``knock``, alias ``#door``."""
    return await servers.ca.create_room(
        servers.alice,
        name="Door",
        topic="knock first",
        room_alias_name="door",
        initial_state=[_KNOCK_RULE],
    )


async def _sync(client: Client, user: TestUser, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(user, "GET", "/sync", params=params)
    return answer


async def _bobs_membership_at_a(servers: TwoServers, room_id: str) -> dict[str, Any]:
    state = await servers.ca.state(servers.alice, room_id)
    event: dict[str, Any] = state[("m.room.member", servers.bob.user_id)]
    return event


async def test_a_knock_on_another_servers_room_is_seen_there_and_let_in(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await _knock_room(servers)
        before = await _sync(cb, bob)
        # A room ID of version 12 names no server: the knock goes through via.
        path = f"/knock/{q(room_id)}?via={q(a.server_name)}"
        assert await cb.ok(bob, "POST", path, {"reason": "hello"}) == {"room_id": room_id}

        # A wrote the knock before answering: Alice sees it at once.
        knock = await _bobs_membership_at_a(servers, room_id)
        assert knock["content"] == {"membership": "knock", "reason": "hello"}
        assert knock["sender"] == bob.user_id
        timeline = (await _sync(ca, alice))["rooms"]["join"][room_id]["timeline"]["events"]
        assert knock["event_id"] in [event["event_id"] for event in timeline]
        # B keeps the knock it signed.
        held = await b.server.storage.room_members.get_latest_membership_event_id(
            bob.user_id, room_id
        )
        assert held == knock["event_id"]

        # B is in no part of the room: the state comes from A's answer.
        knocked = await _sync(cb, bob, since=before["next_batch"])
        events = knocked["rooms"]["knock"][room_id]["knock_state"]["events"]
        by_key = {(event["type"], event["state_key"]): event for event in events}
        assert ("m.room.create", "") in by_key
        assert by_key[("m.room.join_rules", "")]["content"] == {"join_rule": "knock"}
        assert by_key[("m.room.name", "")]["content"] == {"name": "Door"}
        assert by_key[("m.room.topic", "")]["content"]["topic"] == "knock first"
        assert by_key[("m.room.create", "")]["sender"] == alice.user_id
        assert all(set(event) == {"type", "state_key", "content", "sender"} for event in events)
        assert events[-1] == {
            "type": "m.room.member",
            "state_key": bob.user_id,
            "content": {"membership": "knock", "reason": "hello"},
            "sender": bob.user_id,
        }
        assert (await _sync(cb, bob))["rooms"]["knock"] == knocked["rooms"]["knock"]

        # Alice lets Bob in; B hears of the invite, and Bob joins through A.
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        invited = await _sync(cb, bob, since=knocked["next_batch"])
        assert invited["rooms"]["knock"] == {}
        assert room_id in invited["rooms"]["invite"]
        assert await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {}) == {"room_id": room_id}

        async def joined_at_a() -> bool:
            member = await _bobs_membership_at_a(servers, room_id)
            return bool(member["content"]["membership"] == "join")

        await eventually(joined_at_a, "Bob's join at A")
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        joined = await _sync(cb, bob, since=invited["next_batch"])
        assert room_id in joined["rooms"]["join"]
        assert joined["rooms"]["knock"] == {}


async def test_a_knock_on_another_servers_room_through_its_alias_is_withdrawn(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, _b, _ca, cb, _alice, bob = servers
        room_id = await _knock_room(servers)
        alias = f"#door:{a.server_name}"
        assert await cb.ok(bob, "POST", f"/knock/{q(alias)}", {}) == {"room_id": room_id}
        knocked = await _sync(cb, bob)
        assert list(knocked["rooms"]["knock"]) == [room_id]

        # The leave goes to A through make_leave and send_leave.
        assert await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {"reason": "later"}) == {}
        leave = await _bobs_membership_at_a(servers, room_id)
        assert leave["content"] == {"membership": "leave", "reason": "later"}
        assert leave["sender"] == bob.user_id
        withdrawn = await _sync(cb, bob, since=knocked["next_batch"])
        assert withdrawn["rooms"]["knock"] == {}
        assert room_id in withdrawn["rooms"]["leave"]
        # Nothing left to withdraw.
        await cb.refused(
            bob, "POST", f"/rooms/{q(room_id)}/leave", {}, status=404, errcode="M_NOT_FOUND"
        )


async def test_a_knock_another_server_does_not_allow_is_refused(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        public = await ca.create_room(alice, preset="public_chat")
        invite_only = await ca.create_room(alice, preset="private_chat")
        old = await ca.create_room(alice, room_version="6", initial_state=[_KNOCK_RULE])
        for room_id in (public, invite_only):
            path = f"/knock/{q(room_id)}?via={q(a.server_name)}"
            await cb.refused(bob, "POST", path, {}, status=403, errcode="M_FORBIDDEN")
        # Version 6 has no knocking: A says so when asked for a template.
        await cb.refused(
            bob,
            "POST",
            f"/knock/{q(old)}",
            {},
            status=400,
            errcode="M_INCOMPATIBLE_ROOM_VERSION",
        )
        for room_id in (public, invite_only, old):
            assert ("m.room.member", bob.user_id) not in await ca.state(alice, room_id)
            held = await b.server.storage.room_members.get_latest_membership_event_id(
                bob.user_id, room_id
            )
            assert held is None
        assert (await _sync(cb, bob))["rooms"]["knock"] == {}
