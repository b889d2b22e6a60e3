"""The admin join and make-room-admin endpoints with rooms of another
server, over real HTTP and federation between two servers: A's admin joins
A's users to B's rooms by alias, by ID with ``server_name`` hints, and
through a local member's invite; a room of B nobody of A can open stays
shut; A's admin makes B's user a room admin of A's room."""

from __future__ import annotations

from pathlib import Path

from _admin import admin_ok, admin_refused
from _client import Client, q
from _federation import eventually, two_servers

from ranvier.testing.homeserver import TestUser


async def _joined(client: Client, user: TestUser, room_id: str) -> set[str]:
    members = await client.ok(user, "GET", f"/rooms/{q(room_id)}/joined_members")
    return set(members["joined"])


async def test_local_users_join_rooms_of_another_server(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        admin = await a.register_user("root", admin=True)
        dave = await a.register_user("dave")
        erin = await a.register_user("erin")
        lobby = await cb.create_room(bob, preset="public_chat", room_alias_name="lobby")

        # By B's alias: A asks B where it points and joins through B.
        alias = f"#lobby:{b.server_name}"
        answer = await admin_ok(
            ca.http, admin, "POST", f"/v1/join/{q(alias)}", {"user_id": alice.user_id}
        )
        assert answer == {"room_id": lobby}

        async def alice_at_b() -> bool:
            return alice.user_id in await _joined(cb, bob, lobby)

        await eventually(alice_at_b, "Alice's join at B")

        # By ID, with B named as the server to join through. A is in the
        # room now, so the join is made here and sent to B.
        room_v12 = await cb.create_room(bob, preset="public_chat")
        answer = await admin_ok(
            ca.http, admin, "POST", f"/v1/join/{q(room_v12)}", {"user_id": dave.user_id},
            params={"server_name": b.server_name},
        )  # fmt: skip
        assert answer == {"room_id": room_v12}

        async def dave_at_b() -> bool:
            return dave.user_id in await _joined(cb, bob, room_v12)

        await eventually(dave_at_b, "Dave's join at B")

        # An invite-only room of B that no user of A is in: B refuses, and
        # nobody here can invite.
        closed = await cb.create_room(bob, preset="private_chat")
        await admin_refused(
            ca.http, admin, "POST", f"/v1/join/{q(closed)}", {"user_id": erin.user_id},
            params={"server_name": b.server_name}, status=403, errcode="M_FORBIDDEN",
        )  # fmt: skip
        assert await _joined(cb, bob, closed) == {bob.user_id}

        # Once Alice is in it, she invites Erin, who joins.
        await cb.ok(bob, "POST", f"/rooms/{q(closed)}/invite", {"user_id": alice.user_id})

        async def alice_invited() -> bool:
            synced = await ca.ok(alice, "GET", "/sync")
            return closed in synced["rooms"].get("invite", {})

        await eventually(alice_invited, "Alice's invite at A")
        await ca.ok(alice, "POST", f"/join/{q(closed)}", {}, params={"via": b.server_name})
        answer = await admin_ok(
            ca.http, admin, "POST", f"/v1/join/{q(closed)}", {"user_id": erin.user_id}
        )
        assert answer == {"room_id": closed}

        async def erin_at_b() -> bool:
            return erin.user_id in await _joined(cb, bob, closed)

        await eventually(erin_at_b, "Erin's join at B")
        state = await cb.state(bob, closed)
        assert state[("m.room.member", erin.user_id)]["content"]["membership"] == "join"

        # An alias B does not know, and a room nobody can be asked about.
        await admin_refused(
            ca.http, admin, "POST", f"/v1/join/{q('#nowhere:' + b.server_name)}",
            {"user_id": erin.user_id}, status=404, errcode="M_NOT_FOUND",
        )  # fmt: skip
        await admin_refused(
            ca.http, admin, "POST", f"/v1/join/{q('!nowhere:' + a.server_name)}",
            {"user_id": erin.user_id}, status=404, errcode="M_NOT_FOUND",
        )  # fmt: skip
        # B's users are B's to join.
        await admin_refused(
            ca.http, admin, "POST", f"/v1/join/{q(lobby)}", {"user_id": bob.user_id},
            status=400, errcode="M_INVALID_PARAM",
        )  # fmt: skip


async def test_a_user_of_another_server_is_made_room_admin(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        admin = await a.register_user("root", admin=True)
        room_id = await ca.create_room(alice, preset="private_chat", room_version="10")
        path = f"/v1/rooms/{q(room_id)}/make_room_admin"
        answer = await admin_ok(ca.http, admin, "POST", path, {"user_id": bob.user_id})
        assert answer == {}
        # Bob is invited by Alice (his server countersigned it) and given her level.
        state = await ca.state(alice, room_id)
        invite = state[("m.room.member", bob.user_id)]
        assert (invite["content"]["membership"], invite["sender"]) == ("invite", alice.user_id)
        levels = state[("m.room.power_levels", "")]["content"]
        assert levels["users"] == {alice.user_id: 100, bob.user_id: 100}

        async def bob_invited() -> bool:
            synced = await cb.ok(bob, "GET", "/sync")
            return room_id in synced["rooms"].get("invite", {})

        await eventually(bob_invited, "Bob's invite at B")
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"via": a.server_name})
        # On joining, Bob can act as the room's admin.
        await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic/", {"topic": "Bob's now"})

        async def topic_at_a() -> bool:
            state = await ca.state(alice, room_id)
            return state.get(("m.room.topic", ""), {}).get("content") == {"topic": "Bob's now"}

        await eventually(topic_at_a, "Bob's topic at A")
