"""Deactivating an account whose rooms are on another server: the other
server sees the user leave the rooms they had joined through it, and the
invite it sent declined."""

from __future__ import annotations

from pathlib import Path

from _client import q
from _federation import eventually, two_servers

PASSWORD = "carols password"


async def test_another_server_sees_a_deactivated_user_leave(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, _bob):
        carol = await b.register_user("carol", PASSWORD)
        joined = await ca.create_room(alice, preset="public_chat", room_alias_name="lobby")
        await cb.ok(carol, "POST", f"/join/{q(f'#lobby:{a.server_name}')}", {})
        invited = await ca.create_room(alice, name="Not yet for Carol")
        await ca.ok(alice, "POST", f"/rooms/{q(invited)}/invite", {"user_id": carol.user_id})

        async def carol_at_a(room_id: str, membership: str) -> bool:
            state = await ca.state(alice, room_id)
            member = state.get(("m.room.member", carol.user_id))
            return member is not None and member["content"]["membership"] == membership

        await eventually(lambda: carol_at_a(joined, "join"), "Carol's join at A")
        rooms = await b.server.storage.accounts.rooms_to_leave(carol.user_id)
        assert sorted(rooms) == sorted([joined, invited])

        status, challenge = await cb.call(carol, "POST", "/account/deactivate", {})
        assert status == 401
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "carol"},
            "password": PASSWORD,
            "session": challenge["session"],
        }
        await cb.ok(carol, "POST", "/account/deactivate", {"auth": auth})

        await eventually(lambda: carol_at_a(joined, "leave"), "Carol's leave at A")
        # The invite was declined at A, which is the only server in the room.
        assert await carol_at_a(invited, "leave")
        assert await b.server.storage.accounts.rooms_to_leave(carol.user_id) == []
