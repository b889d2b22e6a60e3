"""A user of another server banned, unbanned and invited back, over HTTP."""

from __future__ import annotations

from pathlib import Path

from _client import q
from _federation import eventually, two_servers


async def test_a_user_unbanned_and_invited_again_can_join_again(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="public_chat")
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        member_path = f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"

        async def membership_on_b(wanted: str) -> None:
            async def there() -> bool:
                status, content = await cb.call(bob, "GET", member_path)
                return status == 200 and content.get("membership") == wanted

            await eventually(there, f"Bob's {wanted} on B")

        await membership_on_b("join")
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/ban", {"user_id": bob.user_id})
        await membership_on_b("ban")
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/unban", {"user_id": bob.user_id})
        assert (await ca.ok(alice, "GET", member_path))["membership"] == "leave"
        # The invite returns once B has countersigned it.
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        assert (await ca.ok(alice, "GET", member_path))["membership"] == "invite"
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        assert (await ca.ok(alice, "GET", member_path))["membership"] == "join"
