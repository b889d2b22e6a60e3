"""The user directory shows a user's profile name, never a name they set
in one room alone, whoever searches, over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _client import Client, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

_PUBLIC = "Alice Cooper"
_PRIVATE = "Freddy"


async def _search(client: Client, user: TestUser, term: str) -> list[dict[str, Any]]:
    answer = await client.ok(user, "POST", "/user_directory/search", {"search_term": term})
    results: list[dict[str, Any]] = answer["results"]
    return results


async def test_a_room_specific_name_is_not_in_the_directory(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        eve = await hs.register_user("eve")
        await client.ok(
            alice, "PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": _PUBLIC}
        )
        await client.create_room(alice, visibility="public", preset="public_chat")
        private = await client.create_room(bob, preset="private_chat", invite=[alice.user_id])
        await client.ok(alice, "POST", f"/rooms/{q(private)}/join", {})
        await client.ok(
            alice,
            "PUT",
            f"/rooms/{q(private)}/state/m.room.member/{q(alice.user_id)}",
            {"membership": "join", "displayname": _PRIVATE},
        )
        shown = [{"user_id": alice.user_id, "display_name": _PUBLIC}]
        for searcher in (eve, bob):
            for term in (_PUBLIC, "alice"):
                found = await _search(client, searcher, term)
                assert [
                    {"user_id": r["user_id"], "display_name": r.get("display_name")}
                    for r in found
                    if r["user_id"] == alice.user_id
                ] == shown, (searcher.user_id, term, found)
        assert await _search(client, eve, _PRIVATE) == []
