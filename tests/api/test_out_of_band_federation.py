"""Answers to our users' invites and knocks in rooms this server is not in,
across two homeservers: Bob of B knocks on Alice's room on A, or is
invited to it; Alice refuses the knock (a kick) or withdraws the invite.
A sends that leave to B, which keeps it beside the knock or invite (both
outliers), and Bob's /sync moves the room to ``leave``. Anything else of
the room that reaches B is still refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from _client import Client, q
from _federation import TwoServers, eventually, two_servers

from ranvier.testing.homeserver import TestUser

_KNOCK_RULE = {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}


async def _sync(client: Client, user: TestUser, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(user, "GET", "/sync", params=params)
    return answer


async def _bobs_membership_at_a(servers: TwoServers, room_id: str) -> dict[str, Any]:
    state = await servers.ca.state(servers.alice, room_id)
    event: dict[str, Any] = state[("m.room.member", servers.bob.user_id)]
    return event


async def _wait_for_bobs_leave_at_b(servers: TwoServers, room_id: str, leave_id: str) -> None:
    members = servers.b.server.storage.room_members

    async def arrived() -> bool:
        latest = await members.get_latest_membership_event_id(servers.bob.user_id, room_id)
        return latest == leave_id

    await eventually(arrived, "the leave at B")


async def _check_left(
    servers: TwoServers, room_id: str, since: str, leave: dict[str, Any], was: str
) -> None:
    """Bob's syncs at B: the room under ``leave`` with the event, no more
    under ``was``."""
    cb, bob = servers.cb, servers.bob
    later = await _sync(cb, bob, since=since)
    assert room_id not in later["rooms"].get(was, {})
    left = later["rooms"]["leave"][room_id]
    timeline = left["timeline"]["events"]
    assert timeline[-1]["event_id"] == leave["event_id"]
    assert timeline[-1]["content"]["membership"] == "leave"
    assert timeline[-1]["sender"] == servers.alice.user_id
    fresh = await _sync(cb, bob)
    assert room_id not in fresh["rooms"].get(was, {})
    assert room_id not in fresh["rooms"].get("join", {})


async def test_a_refused_knock_reaches_the_knockers_sync(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, initial_state=[_KNOCK_RULE])
        await cb.ok(bob, "POST", f"/knock/{q(room_id)}?via={q(a.server_name)}", {})
        knocked = await _sync(cb, bob)
        assert room_id in knocked["rooms"]["knock"]

        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id})
        kick = await _bobs_membership_at_a(servers, room_id)
        assert kick["content"]["membership"] == "leave"
        await _wait_for_bobs_leave_at_b(servers, room_id, kick["event_id"])

        held = (await b.server.storage.get_events([kick["event_id"]]))[kick["event_id"]]
        assert held.outlier
        assert await b.server.storage.get_forward_extremities(room_id) == set()
        await _check_left(servers, room_id, knocked["next_batch"], kick, "knock")


async def test_a_withdrawn_invite_reaches_the_invitees_sync(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="private_chat")
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        invited = await _sync(cb, bob)
        assert room_id in invited["rooms"]["invite"]

        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id})
        withdrawn = await _bobs_membership_at_a(servers, room_id)
        assert withdrawn["content"]["membership"] == "leave"
        await _wait_for_bobs_leave_at_b(servers, room_id, withdrawn["event_id"])
        await _check_left(servers, room_id, invited["next_batch"], withdrawn, "invite")


async def test_nothing_else_of_a_room_not_joined_is_taken(tmp_path: Path) -> None:
    """B holds only Bob's invite. A message of the room, and a leave of
    Bob's that does not answer the invite (one from before it), reach B's
    ingestion as A would send them, and are refused; nothing is written."""
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="private_chat")
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id})
        first_leave = await _bobs_membership_at_a(servers, room_id)
        await _wait_for_bobs_leave_at_b(servers, room_id, first_leave["event_id"])
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        invite = await _bobs_membership_at_a(servers, room_id)
        await _wait_for_bobs_leave_at_b(servers, room_id, invite["event_id"])
        said = await ca.ok(
            alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "not for B"}
        )

        replayed = [said["event_id"], first_leave["event_id"]]
        stored_at_a = await a.server.storage.get_events(replayed)
        # In this order: storage answers by ID, in no order of its own.
        raws = [bytes(stored_at_a[event_id].json) for event_id in replayed]
        # Replayed: the old leave cites the first invite, not the current one.
        assert msgspec.json.decode(raws[1])["content"]["membership"] == "leave"
        outcomes = await b.server.ingester.receive_pdus(a.server_name, raws)
        assert [outcome.error is not None for outcome in outcomes] == [True, True]
        assert said["event_id"] not in await b.server.storage.get_events([said["event_id"]])
        members = b.server.storage.room_members
        latest = await members.get_latest_membership_event_id(bob.user_id, room_id)
        assert latest == invite["event_id"]
        assert room_id in (await _sync(cb, bob))["rooms"]["invite"]
