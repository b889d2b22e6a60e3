"""The user directory over real HTTP: who a user may find, and by what."""

from __future__ import annotations

from pathlib import Path

from _client import Client, q

from ranvier.testing.homeserver import open_test_homeserver


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
