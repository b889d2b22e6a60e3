"""A user's push rule, tags and direct-chat listing of a room follow them
to the room that replaced it, over HTTP: the user who upgrades at once,
another user of the server when they join the new room, a user of another
server when they join it there; and what a user set on the new room first
stays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import Client, SharedRoom, open_shared_room, q
from _federation import share_a_room, two_servers

from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _room_rule(client: Client, user: TestUser, room_id: str) -> dict[str, Any] | None:
    status, rule = await client.call(user, "GET", f"/pushrules/global/room/{q(room_id)}")
    if status == 404:
        return None
    assert status == 200, rule
    shown: dict[str, Any] = rule
    return shown


async def _set_room_rule(client: Client, user: TestUser, room_id: str, actions: list[Any]) -> None:
    await client.ok(user, "PUT", f"/pushrules/global/room/{q(room_id)}", {"actions": actions})


def _tags_path(user: TestUser, room_id: str) -> str:
    return f"/user/{q(user.user_id)}/rooms/{q(room_id)}/account_data/m.tag"


async def _tags(client: Client, user: TestUser, room_id: str) -> Any:
    """The room's tags, kept as its ``m.tag`` account data."""
    status, answer = await client.call(user, "GET", _tags_path(user, room_id))
    if status == 404:
        return {}
    assert status == 200, answer
    return answer["tags"]


async def _tag(client: Client, user: TestUser, room_id: str, tag: str, order: float) -> None:
    tags = {**await _tags(client, user, room_id), tag: {"order": order}}
    await client.ok(user, "PUT", _tags_path(user, room_id), {"tags": tags})


async def _upgrade(client: Client, user: TestUser, room_id: str) -> str:
    answer = await client.ok(user, "POST", f"/rooms/{q(room_id)}/upgrade", {"new_version": "11"})
    new_room_id: str = answer["replacement_room"]
    return new_room_id


def _rule_ids(answer: dict[str, Any]) -> set[str]:
    for event in answer.get("account_data", {}).get("events", []):
        if event["type"] == "m.push_rules":
            return {rule["rule_id"] for rule in event["content"]["global"]["room"]}
    return set()


async def test_the_upgrader_and_local_joiners_take_their_rules_and_tags_along(
    env: SharedRoom,
) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    old = await c.create_room(alice, preset="public_chat", room_version="10")
    await c.ok(bob, "POST", f"/join/{q(old)}", {})
    await c.ok(carol, "POST", f"/join/{q(old)}", {})
    await _set_room_rule(c, alice, old, ["dont_notify"])
    await _tag(c, alice, old, "m.favourite", 0.25)
    await _set_room_rule(c, bob, old, ["dont_notify"])
    await c.ok(bob, "PUT", f"/pushrules/global/room/{q(old)}/enabled", {"enabled": False})
    await _tag(c, bob, old, "u.work", 0.5)
    await _set_room_rule(c, carol, old, ["dont_notify"])
    await _tag(c, carol, old, "u.old", 0.1)
    since = (await env.sync(alice))["next_batch"]

    new = await _upgrade(c, alice, old)

    # The upgrader's, at once, and shown by an incremental sync.
    assert await _room_rule(c, alice, new) == {
        "rule_id": new,
        "default": False,
        "enabled": True,
        "actions": ["dont_notify"],
    }
    assert await _room_rule(c, alice, old) is not None
    assert await _tags(c, alice, new) == {"m.favourite": {"order": 0.25}}
    assert {old, new} <= _rule_ids(await env.sync(alice, since=since))

    # Bob's, when he joins, disabled as it was.
    assert await _room_rule(c, bob, new) is None
    assert await _tags(c, bob, new) == {}
    await c.ok(bob, "POST", f"/join/{q(new)}", {})
    rule = await _room_rule(c, bob, new)
    assert rule is not None
    assert (rule["enabled"], rule["actions"]) == (False, ["dont_notify"])
    assert await _tags(c, bob, new) == {"u.work": {"order": 0.5}}

    # What Carol set on the new room before joining it stays.
    await _set_room_rule(c, carol, new, [])
    await _tag(c, carol, new, "u.mine", 0.9)
    await c.ok(carol, "POST", f"/rooms/{q(new)}/join", {})
    rule = await _room_rule(c, carol, new)
    assert rule is not None
    assert rule["actions"] == []
    assert await _tags(c, carol, new) == {"u.mine": {"order": 0.9}}


async def test_a_room_replaced_by_hand_takes_its_creators_settings_along(
    env: SharedRoom,
) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    old = await c.create_room(alice, preset="public_chat", room_version="10")
    await c.ok(bob, "POST", f"/join/{q(old)}", {})
    for user in (alice, bob):
        await _set_room_rule(c, user, old, ["dont_notify"])
    await _tag(c, alice, old, "m.favourite", 0.75)
    since = (await env.sync(alice))["next_batch"]

    # The replacement made with createRoom and a tombstone, not /upgrade.
    new = await c.create_room(
        alice,
        preset="public_chat",
        room_version="11",
        creation_content={"predecessor": {"room_id": old}},
    )
    await c.ok(
        alice,
        "PUT",
        f"/rooms/{q(old)}/state/m.room.tombstone/",
        {"body": "Moved", "replacement_room": new},
    )

    rule = await _room_rule(c, alice, new)
    assert rule is not None
    assert rule["actions"] == ["dont_notify"]
    assert await _tags(c, alice, new) == {"m.favourite": {"order": 0.75}}
    assert {old, new} <= _rule_ids(await env.sync(alice, since=since))
    await c.ok(bob, "POST", f"/join/{q(new)}", {})
    rule = await _room_rule(c, bob, new)
    assert rule is not None
    assert rule["actions"] == ["dont_notify"]


async def test_a_room_with_no_predecessor_copies_nothing(env: SharedRoom) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await _set_room_rule(c, bob, env.room_id, ["dont_notify"])
    other = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/join/{q(other)}", {})
    assert await _room_rule(c, bob, other) is None
    assert await _tags(c, bob, other) == {}


async def test_a_user_of_another_server_takes_their_rule_and_tags_along(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, _, ca, cb, alice, bob = servers
        old = await share_a_room(servers)
        await _set_room_rule(cb, bob, old, ["dont_notify"])
        await _tag(cb, bob, old, "u.work", 0.5)

        new = await _upgrade(ca, alice, old)
        assert await _room_rule(cb, bob, new) is None
        await cb.ok(bob, "POST", f"/join/{q(new)}?server_name={q(a.server_name)}", {})

        rule = await _room_rule(cb, bob, new)
        assert rule is not None
        assert (rule["enabled"], rule["actions"]) == (True, ["dont_notify"])
        assert await _tags(cb, bob, new) == {"u.work": {"order": 0.5}}


def _direct_path(user: TestUser) -> str:
    return f"/user/{q(user.user_id)}/account_data/m.direct"


async def test_a_direct_chat_stays_one_for_its_members_after_an_upgrade(
    env: SharedRoom,
) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    old = await c.create_room(alice, is_direct=True, invite=[bob.user_id])
    await c.ok(bob, "POST", f"/join/{q(old)}", {})
    other = await c.create_room(alice)
    alices = {bob.user_id: [old], "@someone:elsewhere": [other], "org.example.odd": old}
    await c.ok(alice, "PUT", _direct_path(alice), alices)
    await c.ok(bob, "PUT", _direct_path(bob), {alice.user_id: [old]})
    since = (await env.sync(alice))["next_batch"]

    new = await _upgrade(c, alice, old)

    # The upgrader's at once, the other lists and values as they were.
    assert await c.ok(alice, "GET", _direct_path(alice)) == {**alices, bob.user_id: [old, new]}
    later = await env.sync(alice, since=since)
    synced = [e for e in later["account_data"]["events"] if e["type"] == "m.direct"]
    assert [event["content"][bob.user_id] for event in synced] == [[old, new]]
    # Bob's when he joins, and only once however often he joins.
    assert await c.ok(bob, "GET", _direct_path(bob)) == {alice.user_id: [old]}
    await c.ok(alice, "POST", f"/rooms/{q(new)}/invite", {"user_id": bob.user_id})
    await c.ok(bob, "POST", f"/join/{q(new)}", {})
    await c.ok(bob, "POST", f"/join/{q(new)}", {})
    assert await c.ok(bob, "GET", _direct_path(bob)) == {alice.user_id: [old, new]}


async def test_a_new_per_room_profile_is_no_new_arrival(env: SharedRoom) -> None:
    """Bob's join of a room he is in already (his per-room display name,
    sent through /state) carries nothing over again: the room rule he
    deleted after joining stays deleted."""
    c, alice, bob = env.client, env.alice, env.bob
    old = await c.create_room(alice, preset="public_chat", room_version="10")
    await c.ok(bob, "POST", f"/join/{q(old)}", {})
    await _set_room_rule(c, bob, old, ["dont_notify"])
    new = await _upgrade(c, alice, old)
    await c.ok(bob, "POST", f"/join/{q(new)}", {})
    assert await _room_rule(c, bob, new) is not None
    await c.ok(bob, "DELETE", f"/pushrules/global/room/{q(new)}")

    member = f"/rooms/{q(new)}/state/m.room.member/{q(bob.user_id)}"
    await c.ok(bob, "PUT", member, {"membership": "join", "displayname": "Bob in new"})
    assert (await c.ok(bob, "GET", member))["displayname"] == "Bob in new"
    assert await _room_rule(c, bob, new) is None
