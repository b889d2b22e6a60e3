"""Room tags over real HTTP: added, listed and removed one at a time, kept as
the room's ``m.tag`` account data and carried by /sync."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from _client import Client, OneServer, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

Env = OneServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        yield Env(hs, Client(hs, http), alice, bob)


def _tags(user: TestUser, room_id: str, tag: str | None = None) -> str:
    path = f"/user/{q(user.user_id)}/rooms/{q(room_id)}/tags"
    return path if tag is None else f"{path}/{q(tag)}"


async def test_tags_are_added_listed_and_removed(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    assert await c.ok(alice, "GET", _tags(alice, room_id)) == {"tags": {}}
    assert await c.ok(alice, "PUT", _tags(alice, room_id, "m.favourite"), {"order": 0.25}) == {}
    await c.ok(alice, "PUT", _tags(alice, room_id, "u.work"), {})
    assert await c.ok(alice, "GET", _tags(alice, room_id)) == {
        "tags": {"m.favourite": {"order": 0.25}, "u.work": {}}
    }
    # A tag put again takes its new content.
    await c.ok(alice, "PUT", _tags(alice, room_id, "m.favourite"), {"order": 1})
    assert await c.ok(alice, "DELETE", _tags(alice, room_id, "u.work")) == {}
    # Removing a tag the room does not have is no error.
    await c.ok(alice, "DELETE", _tags(alice, room_id, "u.never"))
    assert await c.ok(alice, "GET", _tags(alice, room_id)) == {
        "tags": {"m.favourite": {"order": 1}}
    }
    # The same entry as room account data.
    account_data = f"/user/{q(alice.user_id)}/rooms/{q(room_id)}/account_data/m.tag"
    assert await c.ok(alice, "GET", account_data) == {"tags": {"m.favourite": {"order": 1}}}


async def test_changes_made_at_once_all_stand(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    names = [f"u.tag{n}" for n in range(12)]
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(c.ok, alice, "PUT", _tags(alice, room_id, name), {})
    tags = (await c.ok(alice, "GET", _tags(alice, room_id)))["tags"]
    assert set(tags) == set(names)


async def test_tags_reach_sync(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    first = await c.ok(alice, "GET", "/sync", params={"timeout": "0"})
    await c.ok(alice, "PUT", _tags(alice, room_id, "m.lowpriority"), {"order": 0.5})
    synced = await c.ok(
        alice, "GET", "/sync", params={"timeout": "0", "since": first["next_batch"]}
    )
    events = synced["rooms"]["join"][room_id]["account_data"]["events"]
    assert {"type": "m.tag", "content": {"tags": {"m.lowpriority": {"order": 0.5}}}} in events
    # A removed tag reaches the next sync as the room's tags without it.
    await c.ok(alice, "DELETE", _tags(alice, room_id, "m.lowpriority"))
    after = await c.ok(
        alice, "GET", "/sync", params={"timeout": "0", "since": synced["next_batch"]}
    )
    events = after["rooms"]["join"][room_id]["account_data"]["events"]
    assert events == [{"type": "m.tag", "content": {"tags": {}}}]


async def test_refusals_change_nothing(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice)
    await c.ok(alice, "PUT", _tags(alice, room_id, "u.kept"), {})
    for order in ("high", -0.1, 2, True, None):
        await c.refused(
            alice,
            "PUT",
            _tags(alice, room_id, "u.bad"),
            {"order": order},
            status=400,
            errcode="M_INVALID_PARAM",
        )
    await c.refused(
        alice, "PUT", _tags(alice, room_id, "u.bad"), [1], status=400, errcode="M_NOT_JSON"
    )
    await c.refused(
        alice, "PUT", _tags(alice, room_id, "x" * 256), {}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(
        bob, "PUT", _tags(alice, room_id, "u.bad"), {}, status=403, errcode="M_FORBIDDEN"
    )
    await c.refused(bob, "GET", _tags(alice, room_id), status=403, errcode="M_FORBIDDEN")
    await c.refused(
        bob, "DELETE", _tags(alice, room_id, "u.kept"), status=403, errcode="M_FORBIDDEN"
    )
    await c.refused(None, "GET", _tags(alice, room_id), status=401, errcode="M_MISSING_TOKEN")
    assert await c.ok(alice, "GET", _tags(alice, room_id)) == {"tags": {"u.kept": {}}}
