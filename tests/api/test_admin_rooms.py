"""The room admin API over real HTTP: rooms listed, paged and shown, their
members and state, blocks refusing joins, and rooms shut with their
status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_call, admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q

from ranvier.errors import MatrixError


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _rooms(env: WithAdmin, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await admin_ok(
        env.client.http, env.admin, "GET", "/v1/rooms", params=params
    )
    return answer


async def test_rooms_are_listed_with_their_state(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    lobby = await c.create_room(
        alice, preset="public_chat", name="Lobby", room_alias_name="lobby", visibility="public"
    )
    await c.ok(bob, "POST", f"/rooms/{q(lobby)}/join", {})
    secret = await c.create_room(
        bob,
        preset="private_chat",
        name="Attic",
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
        creation_content={"m.federate": False, "type": "m.space"},
    )
    unnamed = await c.create_room(alice)

    answer = await _rooms(env)
    assert (answer["total_rooms"], answer["offset"]) == (3, 0)
    # By name; a room without one last.
    assert [room["room_id"] for room in answer["rooms"]] == [secret, lobby, unnamed]
    by_id = {room["room_id"]: room for room in answer["rooms"]}
    assert by_id[lobby] == {
        "room_id": lobby,
        "name": "Lobby",
        "canonical_alias": f"#lobby:{env.hs.server_name}",
        "joined_members": 2,
        "joined_local_members": 2,
        "version": by_id[lobby]["version"],
        "creator": alice.user_id,
        "encryption": None,
        "federatable": True,
        "public": True,
        "join_rules": "public",
        "guest_access": by_id[lobby]["guest_access"],
        "history_visibility": "shared",
        "state_events": by_id[lobby]["state_events"],
        "room_type": None,
    }
    assert isinstance(by_id[lobby]["version"], str)
    assert by_id[lobby]["state_events"] >= 6
    attic = by_id[secret]
    assert (attic["encryption"], attic["federatable"], attic["room_type"]) == (
        "m.megolm.v1.aes-sha2",
        False,
        "m.space",
    )
    assert (attic["public"], attic["join_rules"], attic["joined_members"]) == (False, "invite", 1)

    biggest = await _rooms(env, order_by="joined_members")
    assert biggest["rooms"][0]["room_id"] == lobby
    smallest = await _rooms(env, order_by="joined_members", dir="b")
    assert smallest["rooms"][-1]["room_id"] == lobby
    assert [room["room_id"] for room in (await _rooms(env, search_term="lob"))["rooms"]] == [lobby]
    assert [room["room_id"] for room in (await _rooms(env, search_term="ATT"))["rooms"]] == [secret]
    assert [room["room_id"] for room in (await _rooms(env, public_rooms="true"))["rooms"]] == [
        lobby
    ]

    # Paged one at a time to the end.
    seen: list[str] = []
    params = {"limit": "1"}
    while True:
        page = await _rooms(env, **params)
        seen.extend(room["room_id"] for room in page["rooms"])
        if "next_batch" not in page:
            break
        params["from"] = str(page["next_batch"])
    assert seen == [secret, lobby, unnamed]
    await admin_refused(
        env.client.http, env.admin, "GET", "/v1/rooms", params={"order_by": "colour"},
        status=400, errcode="M_INVALID_PARAM",
    )  # fmt: skip


async def test_a_room_its_members_and_state_are_shown(env: WithAdmin) -> None:
    c, http, admin = env.client, env.client.http, env.admin
    room_id = await c.create_room(env.alice, name="Den", topic="Talk")
    await c.ok(env.alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": env.bob.user_id})
    details = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}")
    assert (details["name"], details["topic"], details["joined_members"]) == ("Den", "Talk", 1)
    assert (details["joined_local_devices"], details["forgotten"]) == (1, False)
    members = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/members")
    assert members == {"members": [env.alice.user_id], "total": 1}
    state = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/state")
    keys = {(event["type"], event["state_key"]) for event in state["state"]}
    assert ("m.room.create", "") in keys
    assert ("m.room.member", env.bob.user_id) in keys
    assert state["state"][0]["type"] == "m.room.create"
    names = await admin_ok(
        http, admin, "GET", f"/v1/rooms/{q(room_id)}/state", params={"type": "m.room.name"}
    )
    assert [event["content"] for event in names["state"]] == [{"name": "Den"}]

    for path in ("", "/members", "/state"):
        await admin_refused(
            http, admin, "GET", f"/v1/rooms/{q('!nowhere:example.org')}{path}",
            status=404, errcode="M_NOT_FOUND",
        )  # fmt: skip
        await admin_refused(
            http, admin, "GET", f"/v1/rooms/{q('#not-an-id:x')}{path}",
            status=400, errcode="M_INVALID_PARAM",
        )  # fmt: skip


async def test_a_blocked_room_cannot_be_joined_until_unblocked(env: WithAdmin) -> None:
    c, http, admin = env.client, env.client.http, env.admin
    room_id = await c.create_room(env.alice, preset="public_chat")
    path = f"/v1/rooms/{q(room_id)}/block"
    assert await admin_ok(http, admin, "GET", path) == {"block": False}
    assert await admin_ok(http, admin, "PUT", path, {"block": True}) == {"block": True}
    assert await admin_ok(http, admin, "GET", path) == {"block": True, "user_id": admin.user_id}
    await c.refused(
        env.bob, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN"
    )
    await c.refused(env.bob, "POST", f"/join/{q(room_id)}", {}, status=403, errcode="M_FORBIDDEN")
    with pytest.raises(MatrixError) as refused:
        await env.hs.server.join_room(env.bob.user_id, room_id)
    assert refused.value.errcode == "M_FORBIDDEN"
    members = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/members")
    assert members["members"] == [env.alice.user_id]

    assert await admin_ok(http, admin, "PUT", path, {"block": False}) == {"block": False}
    await c.ok(env.bob, "POST", f"/rooms/{q(room_id)}/join", {})
    # A room not known here may be blocked before anyone joins it.
    unknown = f"/v1/rooms/{q('!later:elsewhere.example')}/block"
    assert await admin_ok(http, admin, "PUT", unknown, {"block": True}) == {"block": True}
    await admin_refused(
        http, admin, "PUT", path, {"block": "yes"}, status=400, errcode="M_BAD_JSON"
    )


async def test_a_deleted_room_is_left_by_its_local_users_and_blocked(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    carol = await env.hs.register_user("carol")
    alias = f"#doomed:{env.hs.server_name}"
    room_id = await c.create_room(
        alice, preset="public_chat", room_alias_name="doomed", visibility="public"
    )
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await c.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
    since = (await c.ok(bob, "GET", "/sync"))["next_batch"]

    answer = await admin_ok(
        http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {"block": True, "purge": False}
    )
    delete_id = answer["delete_id"]
    status = await admin_ok(http, admin, "GET", f"/v2/rooms/delete_status/{q(delete_id)}")
    assert (status["status"], status["room_id"], status["delete_id"]) == (
        "complete",
        room_id,
        delete_id,
    )
    shutdown = status["shutdown_room"]
    assert sorted(shutdown["kicked_users"]) == sorted([alice.user_id, bob.user_id, carol.user_id])
    assert (shutdown["failed_to_kick_users"], shutdown["local_aliases"]) == ([], [alias])
    by_room = await admin_ok(http, admin, "GET", f"/v2/rooms/{q(room_id)}/delete_status")
    assert by_room == {"results": [status]}

    # Bob's sync has the room as left; nobody is joined; the alias and
    # the listing are gone; joins are refused.
    synced = await c.ok(bob, "GET", "/sync", params={"since": since})
    assert room_id in synced["rooms"]["leave"]
    members = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/members")
    assert members == {"members": [], "total": 0}
    invites = (await c.ok(carol, "GET", "/sync"))["rooms"].get("invite", {})
    assert room_id not in invites
    await c.refused(None, "GET", f"/directory/room/{q(alias)}", status=404, errcode="M_NOT_FOUND")
    listed = await c.ok(None, "GET", f"/directory/list/room/{q(room_id)}")
    assert listed == {"visibility": "private"}
    await c.refused(bob, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN")
    assert await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/block") == {
        "block": True,
        "user_id": admin.user_id,
    }


async def test_a_delete_it_cannot_do_is_refused_and_changes_nothing(env: WithAdmin) -> None:
    c, http, admin, alice = env.client, env.client.http, env.admin, env.alice
    room_id = await c.create_room(alice, preset="public_chat")
    path = f"/v2/rooms/{q(room_id)}"
    await admin_refused(
        http, admin, "DELETE", path, {"new_room_user_id": admin.user_id},
        status=400, errcode="M_INVALID_PARAM",
    )  # fmt: skip
    await admin_refused(http, admin, "DELETE", path, {"block": 1}, status=400, errcode="M_BAD_JSON")
    await admin_refused(
        http, admin, "DELETE", f"/v2/rooms/{q('!unknown:example.org')}", {},
        status=400, errcode="M_INVALID_PARAM",
    )  # fmt: skip
    members = await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/members")
    assert members["members"] == [alice.user_id]
    await admin_refused(
        http, admin, "GET", f"/v2/rooms/{q(room_id)}/delete_status",
        status=404, errcode="M_NOT_FOUND",
    )  # fmt: skip
    await admin_refused(
        http, admin, "GET", "/v2/rooms/delete_status/nothing", status=404, errcode="M_NOT_FOUND"
    )
    # Without block, the room is shut but not blocked.
    await admin_ok(http, admin, "DELETE", path, {"purge": False})
    status, members = await admin_call(http, admin, "GET", f"/v1/rooms/{q(room_id)}/members")
    assert (status, members["total"]) == (200, 0)
    assert await admin_ok(http, admin, "GET", f"/v1/rooms/{q(room_id)}/block") == {"block": False}
