"""The public room list over real HTTP: publishing, what a listed room
shows, paging, and refusals; and the lists application services keep for
their networks, apart from the server's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _bridges import Bridges, answers, open_bridges
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


# Application services' networks' lists.

_LIBERA_A = {"desc": "Libera", "network_id": "libera", "fields": {}}
_NETWORKS_A = answers(
    {"protocol/irc": (200, {"instances": [_LIBERA_A], "user_fields": [], "location_fields": []})}
)
_NETWORKS_B = answers(
    {
        "protocol/irc": (
            200,
            {
                "instances": [
                    {"desc": "OFTC", "network_id": "oftc", "fields": {}},
                    {"desc": "Libera", "network_id": "libera", "fields": {}},
                ]
            },
        )
    }
)


def _in_network(network_id: str, room_id: str) -> str:
    return f"/directory/list/appservice/{q(network_id)}/{q(room_id)}"


async def _publish(
    env: Bridges, service: str, network_id: str, room_id: str, visibility: str
) -> None:
    status, answer = await env.client.call(
        None,
        "PUT",
        _in_network(network_id, room_id),
        {"visibility": visibility},
        token=f"as-{service}",
    )
    assert (status, answer) == (200, {})


def _room_ids(page: dict[str, Any]) -> set[str]:
    return {room["room_id"] for room in page["chunk"]}


async def _listed(env: Bridges, **asked: Any) -> set[str]:
    """The rooms ``POST /publicRooms`` lists, checked against ``GET``'s."""
    posted = await env.client.ok(env.alice, "POST", "/publicRooms", asked)
    params = {
        key: ("true" if value is True else "false" if value is False else value)
        for key, value in asked.items()
    }
    got = await env.client.ok(None, "GET", "/publicRooms", params=params)
    assert _room_ids(posted) == _room_ids(got)
    assert posted["total_room_count_estimate"] == len(posted["chunk"])
    assert len(_room_ids(posted)) == len(posted["chunk"])
    return _room_ids(posted)


async def test_services_publish_rooms_in_their_networks_lists(tmp_path: Path) -> None:
    async with open_bridges(tmp_path, _NETWORKS_A, _NETWORKS_B) as env:
        c, alice = env.client, env.alice
        rooms = {
            name: await c.create_room(alice, preset="public_chat", name=name)
            for name in ("main", "a-libera", "b-oftc", "b-libera", "both")
        }
        for name in ("main", "both"):
            await c.ok(alice, "PUT", _visibility(rooms[name]), {"visibility": "public"})
        await _publish(env, "a", "libera", rooms["a-libera"], "public")
        await _publish(env, "a", "libera", rooms["both"], "public")
        await _publish(env, "b", "oftc", rooms["b-oftc"], "public")
        await _publish(env, "b", "libera", rooms["b-libera"], "public")
        # Publishing twice is publishing.
        await _publish(env, "b", "libera", rooms["b-libera"], "public")

        # The instance IDs a client learns from the protocols.
        irc = (await c.ok(alice, "GET", "/thirdparty/protocols"))["irc"]
        instance = {
            (i["desc"], i["instance_id"].partition("|")[0]): i["instance_id"]
            for i in irc["instances"]
        }
        a_libera, b_oftc, b_libera = (
            instance["Libera", "a"],
            instance["OFTC", "b"],
            instance["Libera", "b"],
        )
        assert len({a_libera, b_oftc, b_libera}) == 3

        # A plain list is the server's own.
        assert await _listed(env) == {rooms["main"], rooms["both"]}
        assert await _listed(env, include_all_networks=False) == {rooms["main"], rooms["both"]}
        # One network's is that network's alone, of that service alone.
        assert await _listed(env, third_party_instance_id=a_libera) == {
            rooms["a-libera"],
            rooms["both"],
        }
        assert await _listed(env, third_party_instance_id=b_libera) == {rooms["b-libera"]}
        assert await _listed(env, third_party_instance_id=b_oftc) == {rooms["b-oftc"]}
        for unknown in ("c|libera", "a|oftc", "a|", "libera", "nobody|libera"):
            assert await _listed(env, third_party_instance_id=unknown) == set()
        # All networks: every list, each room once.
        assert await _listed(env, include_all_networks=True) == set(rooms.values())
        assert await _listed(env, include_all_networks=True, third_party_instance_id=b_oftc) == set(
            rooms.values()
        )
        # A network's list is searched and paged as the server's is.
        searched = await c.ok(
            alice,
            "POST",
            "/publicRooms",
            {"third_party_instance_id": a_libera, "filter": {"generic_search_term": "BOTH"}},
        )
        assert _room_ids(searched) == {rooms["both"]}
        first = await c.ok(
            alice, "POST", "/publicRooms", {"third_party_instance_id": a_libera, "limit": 1}
        )
        second = await c.ok(
            alice,
            "POST",
            "/publicRooms",
            {"third_party_instance_id": a_libera, "limit": 1, "since": first["next_batch"]},
        )
        assert _room_ids(first) | _room_ids(second) == {rooms["a-libera"], rooms["both"]}

        # The server's own visibility is not the networks'.
        for name, visibility in (("a-libera", "private"), ("both", "public")):
            answer = await c.ok(None, "GET", _visibility(rooms[name]))
            assert answer == {"visibility": visibility}

        # Withdrawn from one network, it stays in the others and in the main list.
        await _publish(env, "a", "libera", rooms["both"], "private")
        assert await _listed(env, third_party_instance_id=a_libera) == {rooms["a-libera"]}
        assert await _listed(env) == {rooms["main"], rooms["both"]}
        assert rooms["both"] in await _listed(env, include_all_networks=True)
        # Withdrawn from the main list, it is in none.
        await c.ok(alice, "PUT", _visibility(rooms["both"]), {"visibility": "private"})
        assert rooms["both"] not in await _listed(env, include_all_networks=True)


async def test_only_a_service_publishes_in_a_network_list(tmp_path: Path) -> None:
    async with open_bridges(tmp_path) as env:
        c, alice = env.client, env.alice
        room_id = await c.create_room(alice, preset="public_chat")
        path = _in_network("libera", room_id)
        public = {"visibility": "public"}
        await c.refused(alice, "PUT", path, public, status=403, errcode="M_FORBIDDEN")
        await c.refused(None, "PUT", path, public, status=401, errcode="M_MISSING_TOKEN")
        await c.refused(
            None, "PUT", path, public, token="as-nobody", status=401, errcode="M_UNKNOWN_TOKEN"
        )
        # Not even a server admin.
        admin = await env.hs.register_user("admin", admin=True)
        await c.refused(admin, "PUT", path, public, status=403, errcode="M_FORBIDDEN")
        assert await _listed(env, include_all_networks=True) == set()

        # A service acting as one of its users is the service.
        ghost = (
            await c.ok(
                None,
                "POST",
                "/register",
                {
                    "type": "m.login.application_service",
                    "username": "_a_ghost",
                    "inhibit_login": True,
                },
                token="as-a",
            )
        )["user_id"]
        status, answer = await c.call(
            None, "PUT", path, public, token="as-a", params={"user_id": ghost}
        )
        assert (status, answer) == (200, {})
        assert await _listed(env, third_party_instance_id="a|libera") == {room_id}
        assert await _listed(env, third_party_instance_id="b|libera") == set()


async def test_bad_network_list_requests_change_nothing(tmp_path: Path) -> None:
    async with open_bridges(tmp_path) as env:
        c, alice = env.client, env.alice
        room_id = await c.create_room(alice, preset="public_chat")
        await _publish(env, "a", "libera", room_id, "public")

        async def refused(path: str, body: Any, status: int, errcode: str, **kw: Any) -> None:
            await c.refused(
                None, "PUT", path, body, token="as-a", status=status, errcode=errcode, **kw
            )

        path = _in_network("libera", room_id)
        await refused(path, {"visibility": "hidden"}, 400, "M_INVALID_PARAM")
        await refused(path, {"visibility": None}, 400, "M_INVALID_PARAM")
        await refused(path, {}, 400, "M_BAD_JSON")
        await refused(path, ["private"], 400, "M_NOT_JSON")
        await refused(
            _in_network("x" * 256, room_id), {"visibility": "public"}, 400, "M_INVALID_PARAM"
        )
        await refused(
            _in_network("libera", "!unknown:localhost"),
            {"visibility": "public"},
            404,
            "M_NOT_FOUND",
        )
        for body in (
            {"include_all_networks": "yes"},
            {"include_all_networks": 1},
            {"third_party_instance_id": 5},
            {"third_party_instance_id": ["a|libera"]},
        ):
            await c.refused(alice, "POST", "/publicRooms", body, status=400, errcode="M_BAD_JSON")
        await c.refused(
            None,
            "GET",
            "/publicRooms",
            params={"include_all_networks": "maybe"},
            status=400,
            errcode="M_INVALID_PARAM",
        )
        assert await _listed(env, third_party_instance_id="a|libera") == {room_id}
        assert await _listed(env, include_all_networks=True) == {room_id}
