"""A room shut by an admin while another server's user is in it: that
server sees this server's users leave, and its user stays."""

from __future__ import annotations

from pathlib import Path

from _admin import admin_ok
from _client import q
from _federation import eventually, share_a_room, two_servers


async def test_another_server_sees_the_local_users_leave(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        dave = await a.register_user("dave")
        await ca.ok(dave, "POST", f"/rooms/{q(room_id)}/join", {})
        admin = await a.register_user("root", admin=True)

        async def joined_at_b() -> set[str]:
            members = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/joined_members")
            return set(members["joined"])

        async def dave_at_b() -> bool:
            return dave.user_id in await joined_at_b()

        await eventually(dave_at_b, "Dave's join at B")

        answer = await admin_ok(
            ca.http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {"block": True}
        )
        status = await admin_ok(
            ca.http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}"
        )
        assert sorted(status["shutdown_room"]["kicked_users"]) == sorted(
            [alice.user_id, dave.user_id]
        )

        async def only_bob_at_b() -> bool:
            return await joined_at_b() == {bob.user_id}

        await eventually(only_bob_at_b, "A's users leaving, seen at B")
        state = await cb.state(bob, room_id)
        for user in (alice, dave):
            assert state[("m.room.member", user.user_id)]["content"]["membership"] == "leave"
        await ca.refused(
            alice, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN"
        )
