"""The client API across two homeservers over loopback TLS: an alias of A
resolved and joined from B (the federation ``/query/directory`` asked and
answered underneath), and an invite from A's user to B's user accepted
from B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _appservices import AS_TOKEN, open_with_service_and_peer
from _client import Client, q
from _federation import eventually, two_servers

from ranvier.testing.homeserver import TestUser


async def test_an_alias_of_another_server_is_resolved_and_joined(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="public_chat", room_alias_name="lobby")
        alias = f"#lobby:{a.server_name}"
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "hi"})

        resolved = await cb.ok(None, "GET", f"/directory/room/{q(alias)}")
        assert resolved == {"room_id": room_id, "servers": [a.server_name]}
        unknown = f"#nothing:{a.server_name}"
        await cb.refused(
            None, "GET", f"/directory/room/{q(unknown)}", status=404, errcode="M_NOT_FOUND"
        )

        assert await cb.ok(bob, "POST", f"/join/{q(alias)}", {}) == {"room_id": room_id}
        assert await cb.ok(bob, "GET", "/joined_rooms") == {"joined_rooms": [room_id]}
        sent = await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "yo"})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        joined = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/joined_members")
        assert set(joined["joined"]) == {alice.user_id, bob.user_id}

        async def arrived() -> bool:
            status, _ = await ca.call(
                alice, "GET", f"/rooms/{q(room_id)}/event/{q(sent['event_id'])}"
            )
            return bool(status == 200)

        await eventually(arrived, "Bob's message at A")
        # Now B is in the room, A names it too.
        resolved = await ca.ok(None, "GET", f"/directory/room/{q(alias)}")
        assert resolved == {"room_id": room_id, "servers": [a.server_name, b.server_name]}


async def test_an_invite_to_another_servers_user_is_accepted_from_there(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (_a, b, ca, cb, alice, bob):
        # A private room of version 12: its ID names no server, so B finds
        # A through the invite.
        room_id = await ca.create_room(alice, name="Private")
        assert ":" not in room_id
        assert (
            await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
            == {}
        )
        state = await ca.state(alice, room_id)
        invite = state[("m.room.member", bob.user_id)]
        assert invite["content"]["membership"] == "invite"
        # B holds the invite it signed.
        held = await b.server.storage.room_members.get_latest_membership_event_id(
            bob.user_id, room_id
        )
        assert held == invite["event_id"]

        assert await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {}) == {"room_id": room_id}

        async def joined_at_a() -> bool:
            members = await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/joined_members")
            return bob.user_id in set(members["joined"])

        await eventually(joined_at_a, "Bob's join at A")
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        assert (await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/state/m.room.name")) == {
            "name": "Private"
        }


async def test_an_invite_from_another_server_is_declined_through_it(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (_a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, name="Not for Bob")
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        # B is not in the room: its reads refuse Bob, who is only invited.
        await cb.refused(
            bob, "GET", f"/rooms/{q(room_id)}/state", status=403, errcode="M_FORBIDDEN"
        )

        assert await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {"reason": "no thanks"}) == {}
        state = await ca.state(alice, room_id)
        leave = state[("m.room.member", bob.user_id)]
        assert leave["content"] == {"membership": "leave", "reason": "no thanks"}
        assert leave["sender"] == bob.user_id
        # B keeps the leave beside the invite.
        members = b.server.storage.room_members
        held = await members.get_latest_membership_event_id(bob.user_id, room_id)
        assert held == leave["event_id"]
        # Declined twice: there is no invite left to decline, and no room here.
        await cb.refused(
            bob, "POST", f"/rooms/{q(room_id)}/leave", {}, status=404, errcode="M_NOT_FOUND"
        )
        assert await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/joined_members") == {
            "joined": {alice.user_id: {}}
        }


async def test_a_join_carries_its_reason_here_and_through_another_server(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        carol = await a.register_user("carol")
        room_id = await ca.create_room(alice, preset="public_chat")

        # Carol joins a room of her own server.
        path = f"/rooms/{q(room_id)}/join"
        assert await ca.ok(carol, "POST", path, {"reason": "said hello"}) == {"room_id": room_id}
        # Bob joins through make_join and send_join.
        joined = await cb.ok(
            bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {"reason": "asked to"}
        )
        assert joined == {"room_id": room_id}
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)

        for client, reader in ((ca, alice), (cb, bob)):
            state = await client.state(reader, room_id)
            carol_join = state[("m.room.member", carol.user_id)]["content"]
            bob_join = state[("m.room.member", bob.user_id)]["content"]
            assert (carol_join["membership"], carol_join["reason"]) == ("join", "said hello")
            assert (bob_join["membership"], bob_join["reason"]) == ("join", "asked to")
        # A reason that is not a string is refused before anything is sent.
        await ca.refused(alice, "POST", path, {"reason": 5}, status=400, errcode="M_BAD_JSON")


async def test_an_invite_from_another_server_syncs_with_the_rooms_state(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (_a, _b, ca, cb, alice, bob):
        room_id = await ca.create_room(
            alice,
            name="Garden",
            topic="plants",
            initial_state=[
                {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ],
        )
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.avatar", {"url": "mxc://a/b"})
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})

        # B is in no part of the room: everything but the invite came with it.
        synced = await cb.ok(bob, "GET", "/sync")
        events = synced["rooms"]["invite"][room_id]["invite_state"]["events"]
        by_key = {(event["type"], event["state_key"]): event for event in events}
        assert set(by_key) == {
            ("m.room.create", ""),
            ("m.room.join_rules", ""),
            ("m.room.name", ""),
            ("m.room.avatar", ""),
            ("m.room.topic", ""),
            ("m.room.encryption", ""),
            ("m.room.member", alice.user_id),
            ("m.room.member", bob.user_id),
        }
        assert all(set(event) == {"type", "state_key", "content", "sender"} for event in events)
        assert by_key[("m.room.name", "")]["content"] == {"name": "Garden"}
        assert by_key[("m.room.create", "")]["sender"] == alice.user_id
        assert by_key[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}
        assert by_key[("m.room.avatar", "")]["content"] == {"url": "mxc://a/b"}
        assert events[-1] == {
            "type": "m.room.member",
            "state_key": bob.user_id,
            "content": {"membership": "invite"},
            "sender": alice.user_id,
        }


async def test_an_application_services_own_user_joins_a_room_of_another_server(
    tmp_path: Path,
) -> None:
    """The service's sender user, which no one registered and which has no
    profile, joins a public room of B through B."""
    async with open_with_service_and_peer(tmp_path) as (env, b, cb):
        a, ca = env.hs, env.client
        charlie = await b.register_user("charlie")
        room_id = await cb.create_room(charlie, preset="public_chat", name="B's room")
        bridge = f"@_br_bot:{a.server_name}"

        path = f"/join/{q(room_id)}?via={q(b.server_name)}"
        status, answer = await ca.call(None, "POST", path, {}, token=AS_TOKEN)
        assert (status, answer) == (200, {"room_id": room_id})

        async def joined_at_b() -> bool:
            members = await cb.ok(charlie, "GET", f"/rooms/{q(room_id)}/joined_members")
            return bridge in members["joined"]

        await eventually(joined_at_b, "the bridge's join at B")
        state = await cb.state(charlie, room_id)
        assert state[("m.room.member", bridge)]["content"] == {"membership": "join"}


async def _membership_at(client: Client, reader: TestUser, room_id: str, user: str) -> Any:
    state = await client.state(reader, room_id)
    return state[("m.room.member", user)]["content"]["membership"]


async def test_invites_from_another_server_are_declined_again_and_again(tmp_path: Path) -> None:
    """Bob declines three invites to one room in turn, each seen as a leave
    at A and under ``leave`` in his sync; then one to a room its inviter
    left first, with no one left in it."""
    async with two_servers(tmp_path) as (_a, _b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="private_chat")
        for _ in range(3):
            await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
            invited = await cb.ok(bob, "GET", "/sync")
            assert room_id in invited["rooms"]["invite"]
            assert await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {}) == {}
            assert await _membership_at(ca, alice, room_id, bob.user_id) == "leave"
            later = await cb.ok(bob, "GET", "/sync", params={"since": invited["next_batch"]})
            assert room_id in later["rooms"]["leave"]
            assert room_id not in later["rooms"]["invite"]

        emptied = await ca.create_room(alice, preset="private_chat", invite=[bob.user_id])
        invited = await cb.ok(bob, "GET", "/sync")
        assert emptied in invited["rooms"]["invite"]
        assert await ca.ok(alice, "POST", f"/rooms/{q(emptied)}/leave", {}) == {}
        assert await cb.ok(bob, "POST", f"/rooms/{q(emptied)}/leave", {}) == {}
        later = await cb.ok(bob, "GET", "/sync", params={"since": invited["next_batch"]})
        assert emptied in later["rooms"]["leave"]
        assert emptied not in later["rooms"]["invite"]


async def test_invites_to_a_room_this_server_is_in_are_joined_or_declined(
    tmp_path: Path,
) -> None:
    """Once Bob has joined, B is in the room: his neighbours' invites are
    taken as room events, one joins and one declines, and A sees both."""
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        dora, erin = await b.register_user("dora"), await b.register_user("erin")
        room_id = await ca.create_room(alice, preset="private_chat", invite=[bob.user_id])
        assert await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        for user in (dora, erin):
            await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": user.user_id})

        async def invited_at_b() -> bool:
            members = b.server.storage.room_members
            held = [
                await members.get_latest_membership_event_id(user.user_id, room_id)
                for user in (dora, erin)
            ]
            return all(held)

        await eventually(invited_at_b, "the invites at B")
        assert room_id in (await cb.ok(dora, "GET", "/sync"))["rooms"]["invite"]
        assert await cb.ok(dora, "POST", f"/rooms/{q(room_id)}/join", {}) == {"room_id": room_id}
        assert await cb.ok(erin, "POST", f"/rooms/{q(room_id)}/leave", {}) == {}

        async def both_at_a() -> bool:
            seen = (
                await _membership_at(ca, alice, room_id, dora.user_id),
                await _membership_at(ca, alice, room_id, erin.user_id),
            )
            return seen == ("join", "leave")

        await eventually(both_at_a, "Dora's join and Erin's leave at A")


async def test_a_direct_chat_invite_from_another_server_says_so(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (_a, _b, ca, cb, alice, bob):
        since = (await cb.ok(bob, "GET", "/sync"))["next_batch"]
        room_id = await ca.create_room(
            alice, preset="trusted_private_chat", invite=[bob.user_id], is_direct=True
        )
        synced = await cb.ok(bob, "GET", "/sync", params={"since": since})
        events = synced["rooms"]["invite"][room_id]["invite_state"]["events"]
        assert events[-1] == {
            "type": "m.room.member",
            "state_key": bob.user_id,
            "content": {"membership": "invite", "is_direct": True},
            "sender": alice.user_id,
        }


async def test_a_room_that_does_not_federate_refuses_another_servers_user(
    tmp_path: Path,
) -> None:
    """Bob of B may neither join by alias nor by ID a public room of A
    created with ``m.federate`` false, and nothing of his reaches it."""
    async with two_servers(tmp_path) as (a, _b, ca, cb, alice, bob):
        room_id = await ca.create_room(
            alice,
            preset="public_chat",
            room_alias_name="homebound",
            creation_content={"m.federate": False},
        )
        alias = f"#homebound:{a.server_name}"
        await cb.refused(bob, "POST", f"/join/{q(alias)}", {}, status=403, errcode="M_FORBIDDEN")
        await cb.refused(
            bob,
            "POST",
            f"/join/{q(room_id)}",
            {},
            params={"server_name": a.server_name},
            status=403,
            errcode="M_FORBIDDEN",
        )
        assert ("m.room.member", bob.user_id) not in await ca.state(alice, room_id)
        assert await cb.ok(bob, "GET", "/joined_rooms") == {"joined_rooms": []}


async def test_member_events_through_state_join_and_leave_rooms_of_another_server(
    tmp_path: Path,
) -> None:
    """Bob of B sends his member events through /state for rooms of A that
    B is not in: a join routed by the room ID's server, a decline of an
    invite sent through A, and a join routed by his inviter's server, each
    taken into the room at A with the keys Bob sent."""
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):

        def own(room_id: str) -> str:
            return f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"

        async def bobs_event_at_a(room_id: str, event_id: str) -> dict[str, Any]:
            async def there() -> bool:
                state = await ca.state(alice, room_id)
                return state.get(("m.room.member", bob.user_id), {}).get("event_id") == event_id

            await eventually(there, f"Bob's member event {event_id} at A")
            event: dict[str, Any] = (await ca.state(alice, room_id))[("m.room.member", bob.user_id)]
            return event

        # A room of version 11 names A in its ID: that is where B goes.
        public = await ca.create_room(alice, preset="public_chat", room_version="11")
        assert public.endswith(f":{a.server_name}")
        answer = await cb.ok(bob, "PUT", own(public), {"membership": "join", "reason": "hi"})
        event = await bobs_event_at_a(public, answer["event_id"])
        assert (event["content"]["membership"], event["content"]["reason"]) == ("join", "hi")
        with trio.fail_after(20):
            await b.server.wait_for_full_state(public)
        assert public in (await cb.ok(bob, "GET", "/joined_rooms"))["joined_rooms"]

        # Alice invites Bob through /state; he declines through A.
        declined = await ca.create_room(alice, name="Declined")
        invite = {"membership": "invite", "reason": "come"}
        answer = await ca.ok(alice, "PUT", own(declined), invite)
        event = await bobs_event_at_a(declined, answer["event_id"])
        assert (event["sender"], event["content"]) == (alice.user_id, invite)
        answer = await cb.ok(bob, "PUT", own(declined), {"membership": "leave", "reason": "no"})
        event = await bobs_event_at_a(declined, answer["event_id"])
        assert (event["sender"], event["content"]) == (
            bob.user_id,
            {"membership": "leave", "reason": "no"},
        )

        # A room of version 12 names no server: B goes to the inviter's.
        private = await ca.create_room(alice, name="Private")
        assert ":" not in private
        await ca.ok(alice, "PUT", own(private), {"membership": "invite"})
        join = {"membership": "join", "displayname": "Bobby", "org.example.badge": [1, 2]}
        answer = await cb.ok(bob, "PUT", own(private), join)
        event = await bobs_event_at_a(private, answer["event_id"])
        assert {key: event["content"][key] for key in join} == join
        with trio.fail_after(20):
            await b.server.wait_for_full_state(private)
        assert (await cb.ok(bob, "GET", f"/rooms/{q(private)}/state/m.room.name")) == {
            "name": "Private"
        }
        # And leaves it, now from a room B is in.
        answer = await cb.ok(bob, "PUT", own(private), {"membership": "leave"})
        event = await bobs_event_at_a(private, answer["event_id"])
        assert event["content"] == {"membership": "leave"}


async def test_another_servers_user_is_not_invited_to_a_room_that_does_not_federate(
    tmp_path: Path,
) -> None:
    """Inviting Bob of B to a room of A made with ``m.federate`` false is
    refused, by /invite, through /state and at creation alike, before
    anything is written here or sent to B."""
    async with two_servers(tmp_path) as (_a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, creation_content={"m.federate": False})
        before = await ca.state(alice, room_id)
        for method, path, body in (
            ("POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id}),
            (
                "PUT",
                f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}",
                {"membership": "invite"},
            ),
        ):
            status, answer = await ca.call(alice, method, path, body)
            assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), (path, answer)
            assert "not federated" in answer["error"]
        state = await ca.state(alice, room_id)
        assert {key: event["event_id"] for key, event in state.items()} == {
            key: event["event_id"] for key, event in before.items()
        }
        rooms = await ca.ok(alice, "GET", "/joined_rooms")
        status, answer = await ca.call(
            alice,
            "POST",
            "/createRoom",
            {"invite": [bob.user_id], "creation_content": {"m.federate": False}},
        )
        assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), answer
        assert "not federated" in answer["error"]
        assert await ca.ok(alice, "GET", "/joined_rooms") == rooms
        # B never heard of an invite.
        members = b.server.storage.room_members
        assert await members.get_latest_membership_event_id(bob.user_id, room_id) is None
        assert (await cb.ok(bob, "GET", "/sync"))["rooms"]["invite"] == {}
        # A user of A is invited as ever.
        carol = await ca.hs.register_user("carol")
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
