"""A user of another server banned, unbanned and invited back, over HTTP:
while no user of B is in the room, B holds the new invite (and what
becomes of it) outside the room's DAG, and B's /sync, sliding sync and
room reads show it as Bob's membership now, over the leave B's copy of
the room still has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _client import Client, q
from _federation import TwoServers, eventually, two_servers
from _sliding_sync import all_rooms, slide

from ranvier.testing.homeserver import TestUser

#: A filter that lists rooms left, so an initial sync shows a left room too.
_WITH_LEAVE = '{"room": {"include_leave": true}}'


async def _sections(client: Client, user: TestUser, room_id: str, **params: Any) -> set[str]:
    """The /sync sections the room is in."""
    rooms = (await client.ok(user, "GET", "/sync", params=params))["rooms"]
    return {section for section, held in rooms.items() if room_id in held}


async def _next_batch(client: Client, user: TestUser) -> str:
    token: str = (await client.ok(user, "GET", "/sync"))["next_batch"]
    return token


async def _left_and_invited_again(servers: TwoServers) -> tuple[str, str]:
    """Bob joins Alice's room, is banned and unbanned (B is then in the room
    no more) and invited again; the room, and a /sync token of Bob's from
    before the invite.
    """
    a, _, ca, cb, alice, bob = servers
    room_id = await ca.create_room(alice, preset="public_chat", name="Reunion")
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
    assert await _sections(cb, bob, room_id, filter=_WITH_LEAVE) == {"leave"}
    since = await _next_batch(cb, bob)
    # The invite returns once B has countersigned it.
    await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    assert (await ca.ok(alice, "GET", member_path))["membership"] == "invite"
    return room_id, since


async def test_a_user_unbanned_and_invited_again_can_join_again(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _, ca, cb, alice, bob = servers
        room_id, since = await _left_and_invited_again(servers)
        # B shows the invite, and the room nowhere else, on an initial and
        # on an incremental sync.
        rooms = (await cb.ok(bob, "GET", "/sync", params={"filter": _WITH_LEAVE}))["rooms"]
        assert room_id in rooms["invite"]
        assert room_id not in rooms["leave"]
        assert room_id not in rooms["join"]
        stripped = rooms["invite"][room_id]["invite_state"]["events"]
        assert stripped[-1]["content"]["membership"] == "invite"
        assert stripped[-1]["sender"] == alice.user_id
        names = [e["content"].get("name") for e in stripped if e["type"] == "m.room.name"]
        assert names == ["Reunion"]
        assert await _sections(cb, bob, room_id, since=since) == {"invite"}
        assert room_id not in (await cb.ok(bob, "GET", "/joined_rooms"))["joined_rooms"]
        # An invited user reads no more of the room than its invite.
        await cb.refused(
            bob, "GET", f"/rooms/{q(room_id)}/messages", status=403, errcode="M_FORBIDDEN"
        )
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        member_path = f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
        assert (await ca.ok(alice, "GET", member_path))["membership"] == "join"
        # The join, in the room's DAG here, is newer than the invite held
        # outside it. B joined again with partial state, and a sync that does
        # not lazy-load members shows the room once its resync is done.

        async def joined_on_b() -> bool:
            return await _sections(cb, bob, room_id) == {"join"}

        await eventually(joined_on_b, "the room joined in Bob's sync on B")
        assert room_id in (await cb.ok(bob, "GET", "/joined_rooms"))["joined_rooms"]
        assert (await cb.ok(bob, "GET", member_path))["membership"] == "join"


async def test_an_invite_to_a_room_left_is_declined_through_its_server(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        room_id, since = await _left_and_invited_again(servers)
        after_invite = await _next_batch(cb, bob)
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
        member_path = f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
        assert (await ca.ok(alice, "GET", member_path))["membership"] == "leave"
        assert await _sections(cb, bob, room_id, since=after_invite) == {"leave"}
        assert await _sections(cb, bob, room_id, since=since) == {"leave"}
        rooms = (await cb.ok(bob, "GET", "/sync", params={"filter": _WITH_LEAVE}))["rooms"]
        assert set(rooms["leave"]) == {room_id}
        assert room_id not in rooms["invite"]
        # The room's timeline here ends with the unban; the leave, held
        # outside it, comes last.
        last = rooms["leave"][room_id]["timeline"]["events"][-1]
        assert (last["sender"], last["content"]["membership"]) == (bob.user_id, "leave")
        # What Bob reads of the room still ends where he left its DAG.
        assert (await cb.ok(bob, "GET", member_path))["membership"] == "leave"
        # Declined, there is nothing left to decline.
        await cb.refused(
            bob, "POST", f"/rooms/{q(room_id)}/leave", {}, status=403, errcode="M_FORBIDDEN"
        )


async def test_an_invite_to_a_room_left_withdrawn_reaches_sync(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        room_id, _ = await _left_and_invited_again(servers)
        after_invite = await _next_batch(cb, bob)
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id})

        async def withdrawn_on_b() -> bool:
            return await _sections(cb, bob, room_id, since=after_invite) == {"leave"}

        await eventually(withdrawn_on_b, "the withdrawn invite on B")
        rooms = (await cb.ok(bob, "GET", "/sync", params={"since": after_invite}))["rooms"]
        (kick,) = [
            event
            for event in rooms["leave"][room_id]["timeline"]["events"]
            if event["type"] == "m.room.member"
        ]
        assert (kick["sender"], kick["content"]["membership"]) == (alice.user_id, "leave")


async def test_sliding_sync_lists_an_invite_to_a_room_left(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, _, cb, _, bob = servers
        room_id, _ = await _left_and_invited_again(servers)
        answer = await slide(cb.http, bob, {"lists": {"all": all_rooms()}})
        room = answer["rooms"][room_id]
        assert room["membership"] == "invite"
        assert room["invite_state"][-1]["content"]["membership"] == "invite"
        invites = await slide(
            cb.http, bob, {"lists": {"invites": all_rooms(filters={"is_invite": True})}}
        )
        assert invites["lists"]["invites"]["count"] == 1
