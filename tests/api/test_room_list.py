"""The public room list over real HTTP: publishing, what a listed room
shows, paging, and refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _client import WithAdmin, open_with_admin, q

Env = WithAdmin


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _visibility(room_id: str) -> str:
    return f"/directory/list/room/{q(room_id)}"


async def test_a_published_room_is_listed_with_its_state(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(
        alice, preset="public_chat", name="Lobby", topic="Say hi", room_alias_name="lobby"
    )
    await c.ok(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/state/m.room.avatar/",
        {"url": "mxc://localhost/lobby"},
    )
    await c.ok(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/state/m.room.history_visibility/",
        {"history_visibility": "world_readable"},
    )
    await c.ok(bob, "POST", f"/join/{q(room_id)}", {})
    assert await c.ok(None, "GET", _visibility(room_id)) == {"visibility": "private"}
    assert (await c.ok(None, "GET", "/publicRooms"))["chunk"] == []

    assert await c.ok(alice, "PUT", _visibility(room_id), {"visibility": "public"}) == {}
    assert await c.ok(None, "GET", _visibility(room_id)) == {"visibility": "public"}
    listed = await c.ok(None, "GET", "/publicRooms")
    assert listed["total_room_count_estimate"] == 1
    assert listed["chunk"] == [
        {
            "room_id": room_id,
            "name": "Lobby",
            "topic": "Say hi",
            "canonical_alias": "#lobby:localhost",
            "avatar_url": "mxc://localhost/lobby",
            "num_joined_members": 2,
            "world_readable": True,
            "guest_can_join": False,
            "join_rule": "public",
        }
    ]
    # Bob is joined, but without the power to change the room's aliases.
    await c.refused(
        bob,
        "PUT",
        _visibility(room_id),
        {"visibility": "private"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    assert len((await c.ok(None, "GET", "/publicRooms"))["chunk"]) == 1
    await c.ok(alice, "PUT", _visibility(room_id), {"visibility": "private"})
    assert (await c.ok(None, "GET", "/publicRooms"))["chunk"] == []


async def test_the_list_is_paged_largest_first_and_searched(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    rooms = [await c.create_room(alice, preset="public_chat", name=f"Room {n}") for n in range(3)]
    for room_id in rooms:
        await c.ok(alice, "PUT", _visibility(room_id), {"visibility": "public"})
    await c.ok(bob, "POST", f"/join/{q(rooms[2])}", {})
    first = await c.ok(None, "GET", "/publicRooms", params={"limit": 2})
    assert next(room["room_id"] for room in first["chunk"]) == rooms[2]
    assert len(first["chunk"]) == 2
    assert "prev_batch" not in first
    second = await c.ok(
        None, "GET", "/publicRooms", params={"limit": 2, "since": first["next_batch"]}
    )
    assert len(second["chunk"]) == 1
    assert "next_batch" not in second
    assert isinstance(second["prev_batch"], str)
    seen = {room["room_id"] for room in first["chunk"] + second["chunk"]}
    assert seen == set(rooms)
    found = await c.ok(alice, "POST", "/publicRooms", {"filter": {"generic_search_term": "room 1"}})
    assert [room["room_id"] for room in found["chunk"]] == [rooms[1]]


async def test_refusals_change_nothing(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    body = {"visibility": "public"}
    await c.refused(None, "PUT", _visibility(room_id), body, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(bob, "PUT", _visibility(room_id), body, status=403, errcode="M_FORBIDDEN")
    await c.refused(
        alice,
        "PUT",
        _visibility(room_id),
        {"visibility": "open"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await c.refused(alice, "PUT", _visibility(room_id), raw=b"{", status=400, errcode="M_NOT_JSON")
    unknown = "!unknown:localhost"
    await c.refused(alice, "PUT", _visibility(unknown), body, status=404, errcode="M_NOT_FOUND")
    await c.refused(None, "GET", _visibility(unknown), status=404, errcode="M_NOT_FOUND")
    for params in (
        {"limit": "x"},
        {"limit": "-1"},
        {"since": "garbage"},
        {"server": "not a server name"},
    ):
        await c.refused(
            None, "GET", "/publicRooms", params=params, status=400, errcode="M_INVALID_PARAM"
        )
    # Another server's list is asked of it: one that cannot be reached is a 502.
    await c.refused(
        None,
        "GET",
        "/publicRooms",
        params={"server": "other.example"},
        status=502,
        errcode="M_UNKNOWN",
    )
    await c.refused(None, "POST", "/publicRooms", {}, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(alice, "POST", "/publicRooms", {"limit": "2"}, status=400, errcode="M_BAD_JSON")
    assert await c.ok(None, "GET", _visibility(room_id)) == {"visibility": "private"}
    assert (await c.ok(None, "GET", "/publicRooms"))["chunk"] == []


async def test_a_server_admin_may_publish_any_room(env: Env) -> None:
    c, alice, admin = env.client, env.alice, env.admin
    room_id = await c.create_room(alice)
    await c.ok(admin, "PUT", _visibility(room_id), {"visibility": "public"})
    assert await c.ok(None, "GET", _visibility(room_id)) == {"visibility": "public"}


async def test_create_room_with_public_visibility_lists_the_room(env: Env) -> None:
    c, alice = env.client, env.alice
    public = await c.create_room(alice, visibility="public", name="Lobby")
    private = await c.create_room(alice, preset="public_chat")
    assert await c.ok(None, "GET", _visibility(public)) == {"visibility": "public"}
    assert await c.ok(None, "GET", _visibility(private)) == {"visibility": "private"}
    listed = await c.ok(alice, "GET", "/publicRooms")
    assert [room["room_id"] for room in listed["chunk"]] == [public]
    assert listed["chunk"][0]["name"] == "Lobby"


@pytest.mark.parametrize(("version", "rule"), [("7", "knock"), ("10", "knock_restricted")])
async def test_a_knock_room_is_listed_with_its_join_rule(env: Env, version: str, rule: str) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice, preset="private_chat", room_version=version)
    await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.join_rules/", {"join_rule": rule})
    public = await c.create_room(alice, preset="public_chat", room_version=version)
    for listed in (room_id, public):
        await c.ok(alice, "PUT", _visibility(listed), {"visibility": "public"})
    chunk = (await c.ok(None, "GET", "/publicRooms"))["chunk"]
    assert {entry["room_id"]: entry["join_rule"] for entry in chunk} == {
        room_id: rule,
        public: "public",
    }


async def test_guest_access_is_listed_and_pages_turn_back(env: Env) -> None:
    c, alice = env.client, env.alice
    guests = {"type": "m.room.guest_access", "state_key": "", "content": {}}
    rooms = []
    for n, access in enumerate(("can_join", "forbidden", "can_join", "org.example.other")):
        state = [{**guests, "content": {"guest_access": access}}]
        room_id = await c.create_room(
            alice, preset="public_chat", name=f"Room {n}", initial_state=state
        )
        await c.ok(alice, "PUT", _visibility(room_id), {"visibility": "public"})
        rooms.append(room_id)
    listed = await c.ok(None, "GET", "/publicRooms")
    joinable = {room["room_id"]: room["guest_can_join"] for room in listed["chunk"]}
    assert joinable == dict(zip(rooms, (True, False, True, False), strict=True))

    pages = [await c.ok(alice, "POST", "/publicRooms", {"limit": 3})]
    pages.append(
        await c.ok(alice, "POST", "/publicRooms", {"limit": 3, "since": pages[0]["next_batch"]})
    )
    back = await c.ok(alice, "POST", "/publicRooms", {"limit": 3, "since": pages[1]["prev_batch"]})
    assert back["chunk"] == pages[0]["chunk"]
    assert "prev_batch" not in back
    assert [len(page["chunk"]) for page in pages] == [3, 1]
    assert {room["room_id"] for page in pages for room in page["chunk"]} == set(rooms)
