"""The user directory and redacted member events: another server's user
is found by the display name their member event carries, and once that
event is redacted (a moderator removing an offensive name), no longer by
the name removed, as the room's state no longer shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _client import q
from _federation import eventually, share_a_room, two_servers


async def test_a_redacted_display_name_is_not_found(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        renamed = await cb.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}",
            {"membership": "join", "displayname": "Rude Nickname"},
        )

        async def search() -> list[dict[str, Any]]:
            answer = await ca.ok(
                alice, "POST", "/user_directory/search", {"search_term": "rude nick"}
            )
            results: list[dict[str, Any]] = answer["results"]
            return results

        async def found() -> bool:
            return [result["user_id"] for result in await search()] == [bob.user_id]

        await eventually(found, "Bob's new name at A")
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/redact/{q(renamed['event_id'])}/r1", {})
        assert await search() == []
        state = await ca.state(alice, room_id)
        assert state["m.room.member", bob.user_id]["content"] == {"membership": "join"}
