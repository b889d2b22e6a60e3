"""Answers to our users' invites and knocks in rooms this server is not in,
across two homeservers: Bob of B knocks on Alice's room on A, or is
invited to it; Alice refuses the knock (a kick) or withdraws the invite.
A sends that leave to B, which keeps it beside the knock or invite (both
outliers), and Bob's /sync moves the room to ``leave``. Anything else of
the room that reaches B is still refused, and so is a refusal of the
knock from a stand-in third server that knows the room but is not the
one the knock went through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client, q
from _federation import TwoServers, eventually, two_servers

from ranvier.protocol.auth import auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import compute_event_id, hash_and_sign_event
from ranvier.testing import RemoteHomeserver
from ranvier.testing.homeserver import TestUser, open_test_homeserver
from ranvier.testing.network import Pki

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


async def _forged_refusal(
    servers: TwoServers, remote: RemoteHomeserver, room_id: str, knock_id: str
) -> dict[str, Any]:
    """A leave of Bob's by Eve of ``remote``, after his knock and citing it
    with the auth events A's state gives: what a server that knows the
    room and the knock's ID can make, signed as itself."""
    storage = servers.a.server.storage
    version = await storage.get_room_version(room_id)
    assert version is not None
    knock = await storage.get_event(knock_id)
    assert knock is not None
    event: dict[str, Any] = {
        "type": "m.room.member",
        "room_id": room_id,
        "sender": f"@eve:{remote.server_name}",
        "state_key": servers.bob.user_id,
        "content": {"membership": "leave", "reason": "not you"},
        "prev_events": [knock_id],
        "depth": knock.depth + 1,
        "origin_server_ts": remote.clock(),
    }
    draft = Pdu.from_json(
        event | {"auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}}, version
    )
    state = await storage.get_current_state_ids(room_id)
    event["auth_events"] = [state[k] for k in sorted(auth_types_for_event(draft)) if k in state]
    assert knock_id in event["auth_events"]
    return hash_and_sign_event(event, version, remote.server_name, remote.signing_key)


async def test_a_knock_is_refused_only_by_the_server_it_went_through(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Bob of B knocks through A. A stand-in server that knows the room
    and the knock sends B a leave of Bob's citing the knock: B refuses it,
    saying why, writes nothing of it, and Bob still sees his knock. Alice's
    kick, which A sends, is taken."""
    pki = Pki.create(tmp_path)
    remote = RemoteHomeserver("127.0.0.1:{port}")
    await remote.start(nursery, pki.server_context("127.0.0.1"))
    await remote.open_client(nursery, pki.client_context())
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        a.client() as http_a,
        b.client() as http_b,
    ):
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        servers = TwoServers(a, b, Client(a, http_a), Client(b, http_b), alice, bob)
        ca, cb = servers.ca, servers.cb
        room_id = await ca.create_room(alice, initial_state=[_KNOCK_RULE])
        await cb.ok(bob, "POST", f"/knock/{q(room_id)}?via={q(a.server_name)}", {})
        knocked = await _sync(cb, bob)
        assert room_id in knocked["rooms"]["knock"]
        members = b.server.storage.room_members
        knock_id = await members.get_latest_membership_event_id(bob.user_id, room_id)
        assert knock_id is not None
        assert await members.get_knock_server(knock_id) == a.server_name

        forged = await _forged_refusal(servers, remote, room_id, knock_id)
        forged_id = compute_event_id(forged, "12")
        answer = await remote.send_transaction(b.server_name, [forged])
        error = answer["pdus"][forged_id]["error"]
        assert f"made through {a.server_name}" in error, error
        assert f"{remote.server_name} cannot refuse it" in error, error
        assert forged_id not in await b.server.storage.get_events([forged_id])
        assert await members.get_latest_membership_event_id(bob.user_id, room_id) == knock_id
        assert room_id in (await _sync(cb, bob))["rooms"]["knock"]

        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id})
        kick = await _bobs_membership_at_a(servers, room_id)
        await _wait_for_bobs_leave_at_b(servers, room_id, kick["event_id"])
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
