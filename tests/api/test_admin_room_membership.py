"""The admin join and make-room-admin endpoints over real HTTP on one
server: users joined to public rooms and through a local member's invite
to others, given the power of the room's most powerful local user (room
version 12's creators included), and every refusal with what it leaves
unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_call, admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q

from ranvier.testing import RoomBuilder, ingest_all
from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _members(env: WithAdmin, room_id: str) -> list[str]:
    answer = await admin_ok(env.client.http, env.admin, "GET", f"/v1/rooms/{q(room_id)}/members")
    members: list[str] = answer["members"]
    return sorted(members)


async def _membership_events(env: WithAdmin, room_id: str, user_id: str) -> list[tuple[str, str]]:
    """``(membership, sender)`` of each member event of ``user_id``, oldest first."""
    state = await admin_ok(
        env.client.http,
        env.admin,
        "GET",
        f"/v1/rooms/{q(room_id)}/messages",
        params={"dir": "f", "limit": "100"},
    )
    return [
        (event["content"]["membership"], event["sender"])
        for event in state["chunk"]
        if event["type"] == "m.room.member" and event["state_key"] == user_id
    ]


async def _power_levels(env: WithAdmin, room_id: str) -> dict[str, Any]:
    answer = await admin_ok(
        env.client.http,
        env.admin,
        "GET",
        f"/v1/rooms/{q(room_id)}/state",
        params={"type": "m.room.power_levels"},
    )
    (event,) = answer["state"]
    content: dict[str, Any] = event["content"]
    return content


async def _join(env: WithAdmin, room: str, user: TestUser | str) -> Any:
    user_id = user if isinstance(user, str) else user.user_id
    return await admin_ok(
        env.client.http, env.admin, "POST", f"/v1/join/{q(room)}", {"user_id": user_id}
    )


# Joining.


async def test_a_user_joins_a_public_room_by_alias_or_id(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    carol = await env.hs.register_user("carol")
    room_id = await c.create_room(alice, preset="public_chat", room_alias_name="hall")
    assert await _join(env, f"#hall:{env.hs.server_name}", bob) == {"room_id": room_id}
    assert await _join(env, room_id, carol) == {"room_id": room_id}
    assert await _members(env, room_id) == sorted([alice.user_id, bob.user_id, carol.user_id])
    # Joined as if by themselves, with no invite first.
    assert await _membership_events(env, room_id, bob.user_id) == [("join", bob.user_id)]
    # The room is in Bob's own sync.
    synced = await c.ok(bob, "GET", "/sync")
    assert room_id in synced["rooms"]["join"]
    # Joining again changes nothing and answers the same.
    assert await _join(env, room_id, bob) == {"room_id": room_id}
    assert await _members(env, room_id) == sorted([alice.user_id, bob.user_id, carol.user_id])


async def test_an_invite_only_room_is_joined_on_a_local_members_invite(env: WithAdmin) -> None:
    c, alice, bob, admin = env.client, env.alice, env.bob, env.admin
    carol = await env.hs.register_user("carol")
    room_id = await c.create_room(alice, preset="private_chat")
    # The admin is not in the room: Alice, who may invite, invites Bob.
    assert await _join(env, room_id, bob) == {"room_id": room_id}
    assert await _membership_events(env, room_id, bob.user_id) == [
        ("invite", alice.user_id),
        ("join", bob.user_id),
    ]
    # Once the admin is in the room with the power to invite, the admin does.
    await _join(env, room_id, admin)
    await _join(env, room_id, carol)
    assert await _membership_events(env, room_id, carol.user_id) == [
        ("invite", admin.user_id),
        ("join", carol.user_id),
    ]
    # A user already invited joins on that invite.
    dave = await env.hs.register_user("dave")
    await c.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": dave.user_id})
    await _join(env, room_id, dave)
    assert await _membership_events(env, room_id, dave.user_id) == [
        ("invite", alice.user_id),
        ("join", dave.user_id),
    ]
    assert await _members(env, room_id) == sorted(
        [alice.user_id, bob.user_id, admin.user_id, carol.user_id, dave.user_id]
    )


async def test_a_join_nobody_here_can_open_is_refused(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    carol = await env.hs.register_user("carol")
    # Invites need 50; Bob, left alone in the room, has 0.
    room_id = await c.create_room(
        alice, preset="private_chat", power_level_content_override={"invite": 50}
    )
    await c.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await c.ok(alice, "POST", f"/rooms/{q(room_id)}/leave", {})
    message = await admin_refused(
        http, admin, "POST", f"/v1/join/{q(room_id)}", {"user_id": carol.user_id},
        status=403, errcode="M_FORBIDDEN",
    )  # fmt: skip
    assert "invite" in message
    assert await _membership_events(env, room_id, carol.user_id) == []

    # A banned user stays out, and is not invited.
    lobby = await c.create_room(alice, preset="public_chat")
    await c.ok(alice, "POST", f"/rooms/{q(lobby)}/ban", {"user_id": carol.user_id})
    await admin_refused(
        http, admin, "POST", f"/v1/join/{q(lobby)}", {"user_id": carol.user_id},
        status=403, errcode="M_FORBIDDEN",
    )  # fmt: skip
    assert await _membership_events(env, lobby, carol.user_id) == [("ban", alice.user_id)]

    # A blocked room is not joined, nor anyone invited to it.
    secret = await c.create_room(alice, preset="private_chat")
    await admin_ok(http, admin, "PUT", f"/v1/rooms/{q(secret)}/block", {"block": True})
    await admin_refused(
        http, admin, "POST", f"/v1/join/{q(secret)}", {"user_id": bob.user_id},
        status=403, errcode="M_FORBIDDEN",
    )  # fmt: skip
    assert await _membership_events(env, secret, bob.user_id) == []


async def test_the_join_refuses_bad_requests(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    server = env.hs.server_name
    room_id = await c.create_room(alice, preset="public_chat")
    path = f"/v1/join/{q(room_id)}"
    cases: list[tuple[str, Any, int, str]] = [
        (path, {"user_id": f"@nobody:{server}"}, 404, "M_NOT_FOUND"),
        (path, {"user_id": "@bob:elsewhere.example"}, 400, "M_INVALID_PARAM"),
        (path, {"user_id": "bob"}, 400, "M_INVALID_PARAM"),
        (path, {"user_id": 7}, 400, "M_INVALID_PARAM"),
        (path, {}, 400, "M_MISSING_PARAM"),
        (path, [bob.user_id], 400, "M_NOT_JSON"),
        (f"/v1/join/{q('!unknown:' + server)}", {"user_id": bob.user_id}, 404, "M_NOT_FOUND"),
        (f"/v1/join/{q('#unknown:' + server)}", {"user_id": bob.user_id}, 404, "M_NOT_FOUND"),
        (f"/v1/join/{q('hall')}", {"user_id": bob.user_id}, 400, "M_INVALID_PARAM"),
    ]
    for where, body, status, errcode in cases:
        await admin_refused(http, admin, "POST", where, body, status=status, errcode=errcode)
    # Admins only.
    await admin_refused(
        http, alice, "POST", path, {"user_id": bob.user_id}, status=403, errcode="M_FORBIDDEN"
    )
    got, answer = await admin_call(http, None, "POST", path, {"user_id": bob.user_id})
    assert (got, answer["errcode"]) == (401, "M_MISSING_TOKEN")
    # A deactivated account is not joined anywhere.
    await admin_ok(http, admin, "POST", f"/v1/deactivate/{q(bob.user_id)}", {})
    await admin_refused(
        http, admin, "POST", path, {"user_id": bob.user_id}, status=400, errcode="M_INVALID_PARAM"
    )
    assert await _members(env, room_id) == [alice.user_id]


# Making a room admin.


async def test_the_admin_is_made_room_admin_of_a_private_room(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    room_id = await c.create_room(alice, preset="private_chat", room_version="10")
    assert await admin_ok(http, admin, "POST", f"/v1/rooms/{q(room_id)}/make_room_admin") == {}
    # Invited by Alice, the room's only local admin, joined, and given her level.
    assert await _membership_events(env, room_id, admin.user_id) == [
        ("invite", alice.user_id),
        ("join", admin.user_id),
    ]
    levels = await _power_levels(env, room_id)
    assert levels["users"] == {alice.user_id: 100, admin.user_id: 100}
    # The admin can now do what a room admin does.
    await c.ok(admin, "PUT", f"/rooms/{q(room_id)}/state/m.room.name/", {"name": "Taken over"})
    # Asked again, nothing changes: no event is sent.
    before = await _membership_events(env, room_id, admin.user_id)
    assert await admin_ok(http, admin, "POST", f"/v1/rooms/{q(room_id)}/make_room_admin", {}) == {}
    assert await _membership_events(env, room_id, admin.user_id) == before
    assert await _power_levels(env, room_id) == levels


async def test_another_user_is_made_room_admin_of_a_public_room_by_alias(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(
        alice,
        preset="public_chat",
        room_version="10",
        room_alias_name="plaza",
        power_level_content_override={"users": {alice.user_id: 90}, "events": {}},
    )
    alias = f"#plaza:{env.hs.server_name}"
    answer = await admin_ok(
        http, admin, "POST", f"/v1/rooms/{q(alias)}/make_room_admin", {"user_id": bob.user_id}
    )
    assert answer == {}
    # A public room is joined without an invite; Bob gets Alice's 90.
    assert await _membership_events(env, room_id, bob.user_id) == [("join", bob.user_id)]
    assert (await _power_levels(env, room_id))["users"] == {alice.user_id: 90, bob.user_id: 90}


async def test_room_version_12_creators_are_handled(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    carol = await env.hs.register_user("carol")
    # Alice created the room: above every level, and never in users.
    room_id = await c.create_room(alice, preset="private_chat", room_version="12")
    path = f"/v1/rooms/{q(room_id)}/make_room_admin"
    await admin_ok(http, admin, "POST", path, {"user_id": bob.user_id})
    levels = await _power_levels(env, room_id)
    assert levels["users"] == {bob.user_id: 100}
    # The creator is made nothing more, and no event is sent.
    await admin_ok(http, admin, "POST", path, {"user_id": alice.user_id})
    assert await _power_levels(env, room_id) == levels
    # With a level above 100 in users, the creator grants that one.
    levels["users"][bob.user_id] = 150
    await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels/", levels)
    await admin_ok(http, admin, "POST", path, {"user_id": carol.user_id})
    assert (await _power_levels(env, room_id))["users"] == {
        bob.user_id: 150,
        carol.user_id: 150,
    }
    assert await _membership_events(env, room_id, carol.user_id) == [
        ("invite", alice.user_id),
        ("join", carol.user_id),
    ]


async def test_a_room_without_a_local_user_with_power_is_refused(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat", room_version="10")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await c.ok(alice, "POST", f"/rooms/{q(room_id)}/leave", {})
    levels = await _power_levels(env, room_id)
    path = f"/v1/rooms/{q(room_id)}/make_room_admin"
    # Bob, the only local user left, has 0 of the 100 it takes.
    message = await admin_refused(http, admin, "POST", path, status=400, errcode="M_FORBIDDEN")
    assert bob.user_id in message
    assert "100" in message
    # Nothing was written: the admin is not in the room, the levels are as they were.
    assert await _members(env, room_id) == [bob.user_id]
    assert await _power_levels(env, room_id) == levels

    # Nobody of this server left at all.
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
    message = await admin_refused(http, admin, "POST", path, status=400, errcode="M_FORBIDDEN")
    assert "no user of" in message
    assert await _membership_events(env, room_id, admin.user_id) == []


async def test_make_room_admin_refuses_bad_requests(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    server = env.hs.server_name
    room_id = await c.create_room(alice, preset="private_chat")
    path = f"/v1/rooms/{q(room_id)}/make_room_admin"
    cases: list[tuple[str, Any, int, str]] = [
        (path, {"user_id": f"@nobody:{server}"}, 404, "M_NOT_FOUND"),
        (path, {"user_id": "nobody"}, 400, "M_INVALID_PARAM"),
        (f"/v1/rooms/{q('!unknown:' + server)}/make_room_admin", {}, 404, "M_NOT_FOUND"),
        (f"/v1/rooms/{q('#unknown:' + server)}/make_room_admin", {}, 404, "M_NOT_FOUND"),
        (f"/v1/rooms/{q('plaza')}/make_room_admin", {}, 400, "M_INVALID_PARAM"),
    ]
    for where, body, status, errcode in cases:
        await admin_refused(http, admin, "POST", where, body, status=status, errcode=errcode)
    await admin_refused(http, alice, "POST", path, {}, status=403, errcode="M_FORBIDDEN")
    assert await _members(env, room_id) == [alice.user_id]


async def test_a_room_without_power_levels_keeps_its_creators_power(env: WithAdmin) -> None:
    # A room another implementation made without a power levels event:
    # by the rules its creator has 100, which the first power levels
    # event must keep by naming her.
    alice, bob = env.alice, env.bob
    server = env.hs.server
    room = RoomBuilder("10", alice.user_id, keys={server.server_name: server.signing_key})
    room.member(alice.user_id, "join")
    room.join_rules(alice.user_id, "public")
    await ingest_all(server.storage, room.order)
    answer = await admin_ok(
        env.client.http,
        env.admin,
        "POST",
        f"/v1/rooms/{q(room.room_id)}/make_room_admin",
        {"user_id": bob.user_id},
    )
    assert answer == {}
    assert await _membership_events(env, room.room_id, bob.user_id) == [("join", bob.user_id)]
    levels = await _power_levels(env, room.room_id)
    assert levels == {"users": {alice.user_id: 100, bob.user_id: 100}}
    # Alice still has her power: she can change the room's name.
    await env.client.ok(
        alice, "PUT", f"/rooms/{q(room.room_id)}/state/m.room.name/", {"name": "Still mine"}
    )
