"""Account data over real HTTP: global and per room, in /sync, waking long-polls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _client import Client, OneServer, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

Env = OneServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        yield Env(hs, Client(hs, http), alice, bob)


def _global(user: TestUser, data_type: str) -> str:
    return f"/user/{q(user.user_id)}/account_data/{q(data_type)}"


def _in_room(user: TestUser, room_id: str, data_type: str) -> str:
    return f"/user/{q(user.user_id)}/rooms/{q(room_id)}/account_data/{q(data_type)}"


async def test_global_and_room_account_data_are_set_read_and_replaced(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    assert await c.ok(alice, "PUT", _global(alice, "m.direct"), {"@bob:localhost": []}) == {}
    assert await c.ok(alice, "GET", _global(alice, "m.direct")) == {"@bob:localhost": []}
    await c.ok(alice, "PUT", _global(alice, "m.direct"), {"replaced": True})
    assert await c.ok(alice, "GET", _global(alice, "m.direct")) == {"replaced": True}
    await c.ok(alice, "PUT", _in_room(alice, room_id, "m.tag"), {"tags": {"u.work": {}}})
    assert await c.ok(alice, "GET", _in_room(alice, room_id, "m.tag")) == {"tags": {"u.work": {}}}
    # Room and global entries of one type are apart.
    await c.refused(alice, "GET", _global(alice, "m.tag"), status=404, errcode="M_NOT_FOUND")


async def test_refusals_change_nothing(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.ok(alice, "PUT", _global(alice, "x.mine"), {"v": 1})
    path = _global(alice, "x.mine")
    await c.refused(None, "PUT", path, {"v": 2}, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(None, "GET", path, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(bob, "PUT", path, {"v": 2}, status=403, errcode="M_FORBIDDEN")
    await c.refused(bob, "GET", path, status=403, errcode="M_FORBIDDEN")
    await c.refused(alice, "PUT", path, raw=b"{not json", status=400, errcode="M_NOT_JSON")
    await c.refused(alice, "PUT", path, [1, 2], status=400, errcode="M_NOT_JSON")
    await c.refused(
        alice,
        "PUT",
        _global(alice, "m.fully_read"),
        {"event_id": "$x"},
        status=405,
        errcode="M_BAD_JSON",
    )
    await c.refused(
        alice,
        "PUT",
        _in_room(alice, "not-a-room", "m.tag"),
        {},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await c.refused(alice, "GET", _global(alice, "x.never"), status=404, errcode="M_NOT_FOUND")
    assert await c.ok(alice, "GET", path) == {"v": 1}
    # Bob's refused writes made nothing of his either.
    await c.refused(bob, "GET", _global(bob, "x.mine"), status=404, errcode="M_NOT_FOUND")


async def test_sync_delivers_account_data_at_first_and_then_only_changes(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice)
    await c.ok(alice, "PUT", _global(alice, "x.one"), {"n": 1})
    await c.ok(alice, "PUT", _global(alice, "x.two"), {"n": 2})
    await c.ok(alice, "PUT", _in_room(alice, room_id, "m.tag"), {"tags": {}})
    await c.ok(bob, "PUT", _global(bob, "x.bob"), {"n": 0})
    first = await env.sync(alice)
    # The push rules come in every initial sync (ranvier.core.push_rules).
    assert sorted(e["type"] for e in first["account_data"]["events"]) == [
        "m.push_rules",
        "x.one",
        "x.two",
    ]
    room = first["rooms"]["join"][room_id]
    assert room["account_data"]["events"] == [{"type": "m.tag", "content": {"tags": {}}}]

    # Nothing changed: nothing again.
    again = await env.sync(alice, since=first["next_batch"])
    assert again["account_data"]["events"] == []
    assert again["rooms"]["join"] == {}

    await c.ok(alice, "PUT", _global(alice, "x.two"), {"n": 22})
    await c.ok(alice, "PUT", _in_room(alice, room_id, "m.tag"), {"tags": {"u.x": {}}})
    later = await env.sync(alice, since=again["next_batch"])
    assert later["account_data"]["events"] == [{"type": "x.two", "content": {"n": 22}}]
    # The room had no new events, only its account data.
    quiet = later["rooms"]["join"][room_id]
    assert quiet["timeline"]["events"] == []
    assert quiet["account_data"]["events"] == [{"type": "m.tag", "content": {"tags": {"u.x": {}}}}]
    # Bob's data never reaches Alice.
    assert all(e["type"] != "x.bob" for e in later["account_data"]["events"])


async def test_a_long_poll_is_woken_by_an_account_data_change(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    since = (await env.sync(alice))["next_batch"]
    answer = await env.woken_sync(
        alice,
        since,
        # Bob's change concerns Bob only: Alice's poll sleeps on.
        quiet=lambda: c.ok(bob, "PUT", _global(bob, "x.bob"), {"n": 1}),
        wake=lambda: c.ok(alice, "PUT", _global(alice, "x.wake"), {"n": 1}),
    )
    assert answer["account_data"]["events"] == [{"type": "x.wake", "content": {"n": 1}}]
    assert answer["next_batch"] != since


async def test_a_filter_chooses_the_account_data_synced(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    await c.ok(alice, "PUT", _global(alice, "x.keep"), {"n": 1})
    await c.ok(alice, "PUT", _global(alice, "x.drop"), {"n": 2})
    await c.ok(alice, "PUT", _in_room(alice, room_id, "m.tag"), {"tags": {}})
    await c.ok(alice, "PUT", _in_room(alice, room_id, "x.other"), {})
    sync_filter = {
        "account_data": {"not_types": ["x.drop"]},
        "room": {"account_data": {"types": ["m.*"]}},
    }
    body = await env.sync(alice, filter=json.dumps(sync_filter))
    events = body["account_data"]["events"]
    assert [e["type"] for e in events] == ["x.keep", "m.push_rules"]
    assert events[0] == {"type": "x.keep", "content": {"n": 1}}
    assert body["rooms"]["join"][room_id]["account_data"]["events"] == [
        {"type": "m.tag", "content": {"tags": {}}}
    ]
    nothing = {"account_data": {"limit": 1, "types": []}, "room": {"account_data": {"types": []}}}
    body = await env.sync(alice, filter=json.dumps(nothing))
    assert body["account_data"]["events"] == []
    assert body["rooms"]["join"][room_id]["account_data"]["events"] == []
