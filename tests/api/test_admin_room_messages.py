"""A room's messages read by a server admin over real HTTP: every event,
whatever the admin's membership and the room's history visibility, paged
and filtered as ``/messages`` pages and filters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _admin import admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def test_an_admin_reads_every_event_of_a_room_they_are_not_in(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(
        alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    for n in range(3):
        await c.ok(
            alice,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/early{n}",
            {"msgtype": "m.text", "body": f"before bob {n}"},
        )
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await c.ok(
        bob,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/late",
        {"msgtype": "m.text", "body": "bob is here"},
    )
    path = f"/v1/rooms/{q(room_id)}/messages"

    # Bob, who joined later, sees none of what came before; the admin, in
    # no way a member, sees it all (the client API refuses them outright).
    bobs = await c.ok(bob, "GET", f"/rooms/{q(room_id)}/messages", params={"limit": 50})
    bodies = [e["content"].get("body") for e in bobs["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["bob is here"]
    await c.refused(
        admin, "GET", f"/rooms/{q(room_id)}/messages", status=403, errcode="M_FORBIDDEN"
    )
    everything = await admin_ok(http, admin, "GET", path, params={"limit": 50})
    types = [event["type"] for event in everything["chunk"]]
    assert types[0] == "m.room.message"
    assert types[-1] == "m.room.create"
    assert "end" not in everything
    messages = [e["content"]["body"] for e in everything["chunk"] if e["type"] == "m.room.message"]
    assert messages == ["bob is here", "before bob 2", "before bob 1", "before bob 0"]

    # Paged forwards, two at a time, with a filter: the same messages in order.
    only_messages = json.dumps({"types": ["m.room.message"]})
    seen: list[str] = []
    params: dict[str, str | int] = {"dir": "f", "limit": 2, "filter": only_messages}
    while True:
        page = await admin_ok(http, admin, "GET", path, params=params)
        assert len(page["chunk"]) <= 2
        seen.extend(event["content"]["body"] for event in page["chunk"])
        if "end" not in page:
            break
        params["from"] = page["end"]
    assert seen == ["before bob 0", "before bob 1", "before bob 2", "bob is here"]

    await admin_refused(http, bob, "GET", path, status=403, errcode="M_FORBIDDEN")
    await admin_refused(
        http,
        admin,
        "GET",
        f"/v1/rooms/{q('!nowhere:' + env.hs.server_name)}/messages",
        status=404,
        errcode="M_NOT_FOUND",
    )
    await admin_refused(
        http, admin, "GET", path, params={"dir": "x"}, status=400, errcode="M_INVALID_PARAM"
    )
