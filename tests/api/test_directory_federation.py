"""Room aliases of one server resolved by a user of another, over HTTP."""

from __future__ import annotations

from pathlib import Path

from _client import q
from _federation import two_servers


async def test_an_alias_in_any_script_resolves_across_servers(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice)
        # CJK, Latin-1, Cyrillic, emoji and Sinhala, some outside the BMP.
        alias = f"#\u8001\u864e\u00c2\u00a3\u044f\U0001f928\U0001f449\u0d9e:{a.server_name}"
        await ca.ok(alice, "PUT", f"/directory/room/{q(alias)}", {"room_id": room_id})
        found = await cb.ok(bob, "GET", f"/directory/room/{q(alias)}")
        assert found["room_id"] == room_id
        assert a.server_name in found["servers"]
        # One code point off is another alias, unknown to A.
        other = alias.replace("\U0001f928", "\U0001f929")
        await cb.refused(
            bob, "GET", f"/directory/room/{q(other)}", status=404, errcode="M_NOT_FOUND"
        )
