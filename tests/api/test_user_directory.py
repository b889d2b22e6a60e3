"""The user directory over real HTTP: who a user may find, and by what."""

from __future__ import annotations

from pathlib import Path

from _client import Client, q
from _federation import share_a_room, two_servers

from ranvier.testing.homeserver import TestUser, open_test_homeserver


async def test_users_sharing_a_room_or_in_a_public_room_are_found(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        c = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        carol, dave = await hs.register_user("carol"), await hs.register_user("dave")
        shared = await c.create_room(alice, preset="public_chat")
        await c.ok(bob, "POST", f"/join/{q(shared)}", {})
        await c.ok(
            bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Robert Zed"}
        )
        # Carol is in a published room; Dave shares nothing with Alice.
        listed = await c.create_room(carol, preset="public_chat")
        await c.ok(carol, "PUT", f"/directory/list/room/{q(listed)}", {"visibility": "public"})
        await c.create_room(dave)

        async def search(term: str, **extra: object) -> list[str]:
            answer = await c.ok(
                alice, "POST", "/user_directory/search", {"search_term": term, **extra}
            )
            assert isinstance(answer["limited"], bool)
            return [found["user_id"] for found in answer["results"]]

        assert await search("bob") == [bob.user_id]
        assert await search("zed") == [bob.user_id]
        answer = await c.ok(alice, "POST", "/user_directory/search", {"search_term": "robert"})
        assert answer["results"] == [{"user_id": bob.user_id, "display_name": "Robert Zed"}]
        assert await search("carol") == [carol.user_id]
        assert await search("dave") == []
        everyone = await search("localhost")
        assert set(everyone) == {alice.user_id, bob.user_id, carol.user_id}
        limited = await c.ok(
            alice, "POST", "/user_directory/search", {"search_term": "localhost", "limit": 1}
        )
        assert len(limited["results"]) == 1
        assert limited["limited"] is True

        await c.refused(
            None,
            "POST",
            "/user_directory/search",
            {"search_term": "x"},
            status=401,
            errcode="M_MISSING_TOKEN",
        )
        await c.refused(
            alice, "POST", "/user_directory/search", {}, status=400, errcode="M_BAD_JSON"
        )
        await c.refused(
            alice,
            "POST",
            "/user_directory/search",
            {"search_term": "x", "limit": "3"},
            status=400,
            errcode="M_BAD_JSON",
        )
        await c.refused(
            alice, "POST", "/user_directory/search", raw=b"[", status=400, errcode="M_NOT_JSON"
        )


async def _found(c: Client, searcher: TestUser, user: TestUser) -> bool:
    answer = await c.ok(searcher, "POST", "/user_directory/search", {"search_term": user.user_id})
    return any(found["user_id"] == user.user_id for found in answer["results"])


async def test_a_public_or_world_readable_room_makes_its_members_found(tmp_path: Path) -> None:
    # Spec: the search considers at least the members of rooms with a public
    # join rule or world_readable history, published in the room list or not.
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        c = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        eve = await hs.register_user("eve")
        room_id = await c.create_room(alice, preset="private_chat", invite=[bob.user_id])
        await c.ok(bob, "POST", f"/join/{q(room_id)}", {})
        assert not await _found(c, eve, bob)

        async def put(event_type: str, content: dict[str, str]) -> None:
            await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/{event_type}", content)

        await put("m.room.join_rules", {"join_rule": "public"})
        assert await _found(c, eve, bob)
        await put("m.room.join_rules", {"join_rule": "invite"})
        assert not await _found(c, eve, bob)
        await put("m.room.history_visibility", {"history_visibility": "world_readable"})
        assert await _found(c, eve, bob)
        # Both: the room stays public while either says so.
        await put("m.room.join_rules", {"join_rule": "public"})
        await put("m.room.join_rules", {"join_rule": "invite"})
        assert await _found(c, eve, bob)
        await put("m.room.history_visibility", {"history_visibility": "shared"})
        assert not await _found(c, eve, bob)
        # Alice shares the room with Bob whatever its rules.
        assert await _found(c, alice, bob)

        # A public room's member is found while joined, and not once he left.
        lobby = await c.create_room(alice, preset="public_chat")
        await c.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
        await c.ok(bob, "POST", f"/join/{q(lobby)}", {})
        assert await _found(c, eve, bob)
        await c.ok(bob, "POST", f"/rooms/{q(lobby)}/leave", {})
        assert not await _found(c, eve, bob)


async def test_a_remote_rooms_members_are_not_found_once_this_server_left(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        b, cb, alice, bob = servers.b, servers.cb, servers.alice, servers.bob
        room_id = await share_a_room(servers)
        carol = await b.register_user("carol")
        # Carol of B is in no room: she finds Alice through the public room
        # B is joined to.
        assert await _found(cb, carol, alice)
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
        assert not await _found(cb, carol, alice)
        assert not await _found(cb, bob, alice)
