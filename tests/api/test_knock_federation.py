"""Knocking across two homeservers over loopback TLS: Bob of B knocks on
Alice's room on A through make_knock and send_knock, A's members see the
knock, B's /sync shows it with the state A answered, and it is let in
or withdrawn from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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


async def _knock(client: Client, user: TestUser, room_id: str, via: str, reason: str | None) -> int:
    body = {} if reason is None else {"reason": reason}
    status, answer = await client.call(
        user, "POST", f"/knock/{q(room_id)}", body, params={"server_name": via}
    )
    if status == 200:
        assert answer == {"room_id": room_id}
        knocked = (await _sync(client, user))["rooms"]["knock"]
        assert room_id in knocked
    else:
        assert answer["errcode"] == "M_FORBIDDEN", answer
    return status


async def _membership_at(client: Client, viewer: TestUser, room_id: str, user_id: str) -> Any:
    state = await client.state(viewer, room_id)
    return state.get(("m.room.member", user_id), {}).get("content")


@pytest.mark.parametrize(
    ("version", "rule", "remote"),
    [("7", "knock", False), ("7", "knock", True), ("10", "knock_restricted", True)],
)
async def test_a_knocker_knocks_again_is_turned_away_let_in_and_kept_out(
    tmp_path: Path, version: str, rule: str, remote: bool
) -> None:
    """Alice's invite-only room on A turned to knocking, knocked on by
    Bob of A or of B. B never hears of a kick or a ban of Bob (he is not
    in the room), so each later knock must go to A regardless."""
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        if not remote:
            cb, bob = ca, await a.register_user("bobby")
        room_id = await ca.create_room(alice, preset="private_chat", room_version=version)
        via = a.server_name
        assert await _knock(cb, bob, room_id, via, "anyway?") == 403

        rules = f"/rooms/{q(room_id)}/state/m.room.join_rules/"
        await ca.ok(alice, "PUT", rules, {"join_rule": rule})
        status, answer = await cb.call(
            bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": via}
        )
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")

        assert await _knock(cb, bob, room_id, via, "knock knock") == 200
        assert await _knock(cb, bob, room_id, via, "again") == 200
        seen = await _membership_at(ca, alice, room_id, bob.user_id)
        assert seen == {"membership": "knock", "reason": "again"}

        if not remote:
            before = await _sync(cb, bob)
            await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
            after = await _sync(cb, bob, since=before["next_batch"])
            timeline = after["rooms"]["leave"][room_id]["timeline"]["events"]
            assert [e["content"]["membership"] for e in timeline if e["sender"] == bob.user_id] == [
                "leave"
            ]
            assert await _knock(cb, bob, room_id, via, "again?") == 200

        kick = {"user_id": bob.user_id, "reason": "no"}
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", kick)
        assert (await _membership_at(ca, alice, room_id, bob.user_id))["membership"] == "leave"
        assert await _knock(cb, bob, room_id, via, "please?") == 200
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", kick)
        assert await _knock(cb, bob, room_id, via, None) == 200
        assert await _membership_at(ca, alice, room_id, bob.user_id) == {"membership": "knock"}

        # Let in: an invite, after which a knock is refused, and a join.
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})

        async def invited() -> bool:
            return room_id in (await _sync(cb, bob))["rooms"]["invite"]

        await eventually(invited, "the invite at Bob's server")
        assert await _knock(cb, bob, room_id, via, "hello?") == 403
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": via})
        assert await _knock(cb, bob, room_id, via, "hello?") == 403

        since = (await _sync(cb, bob))["next_batch"]
        ban = {"user_id": bob.user_id, "reason": "gone"}
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/ban", ban)

        async def banned_at_b() -> bool:
            return room_id in (await _sync(cb, bob, since=since))["rooms"]["leave"]

        await eventually(banned_at_b, "the ban at Bob's server")
        assert await _knock(cb, bob, room_id, via, "sorry") == 403
        assert (await _membership_at(ca, alice, room_id, bob.user_id))["membership"] == "ban"
