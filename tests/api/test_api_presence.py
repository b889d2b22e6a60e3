"""Presence over real HTTP: set and read, who may do either."""

from __future__ import annotations

from pathlib import Path

import trio
from _client import SharedRoom, open_shared_room, q


async def test_presence_is_set_by_its_user_and_seen_by_those_sharing_a_room(
    tmp_path: Path,
) -> None:
    async with open_shared_room(tmp_path, SharedRoom) as env:
        c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
        status = f"/presence/{q(alice.user_id)}/status"

        # Never set: offline.
        assert await c.ok(bob, "GET", status) == {"presence": "offline"}
        body = {"presence": "online", "status_msg": "here"}
        assert await c.ok(alice, "PUT", status, body) == {}
        await trio.sleep(0.01)
        seen = await c.ok(bob, "GET", status)
        assert seen["presence"] == "online"
        assert seen["status_msg"] == "here"
        assert seen["currently_active"] is True
        assert 0 <= seen["last_active_ago"] < 60_000
        await c.ok(alice, "PUT", status, {"presence": "unavailable"})
        again = await c.ok(alice, "GET", status)
        assert again["presence"] == "unavailable"
        assert "status_msg" not in again
        assert again["currently_active"] is False

        # Carol shares no room with Alice; Bob cannot set Alice's.
        await c.refused(carol, "GET", status, status=403, errcode="M_FORBIDDEN")
        await c.refused(bob, "PUT", status, body, status=403, errcode="M_FORBIDDEN")
        for bad, errcode in (
            ({"presence": "asleep"}, "M_INVALID_PARAM"),
            ({}, "M_BAD_JSON"),
            ({"presence": "online", "status_msg": 3}, "M_BAD_JSON"),
        ):
            await c.refused(alice, "PUT", status, bad, status=400, errcode=errcode)
        assert (await c.ok(alice, "GET", status))["presence"] == "unavailable"
