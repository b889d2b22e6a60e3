"""Room upgrades over real HTTP: what moves to the new room, what becomes of
the old one, who may upgrade, and members following the tombstone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _client import WithAdmin, open_with_admin, q

Env = WithAdmin

_SPACE_CHILD = "!child:localhost"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _put_state(env: Env, room_id: str, event_type: str, content: Any, key: str = "") -> None:
    await env.client.ok(
        env.alice, "PUT", f"/rooms/{q(room_id)}/state/{event_type}/{q(key)}", content
    )


async def _furnished_room(env: Env, version: str) -> str:
    """A public room of Alice's with every kind of state an upgrade carries,
    an alias, a place in the room list, and Bob joined as a moderator."""
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(
        alice,
        preset="public_chat",
        room_version=version,
        name="Lobby",
        topic="Say hi",
        room_alias_name="lobby",
        creation_content={"type": "org.example.lobby"},
        # Given at creation, which asks no server whether its aliases exist:
        # a later change would have to reach elsewhere's directory.
        initial_state=[
            {
                "type": "m.room.canonical_alias",
                "content": {
                    "alias": "#lobby:localhost",
                    "alt_aliases": ["#hall:localhost", "#far:elsewhere"],
                },
            }
        ],
    )
    await c.ok(alice, "PUT", f"/directory/room/{q('#hall:localhost')}", {"room_id": room_id})
    await _put_state(env, room_id, "m.room.avatar", {"url": "mxc://localhost/lobby"})
    await _put_state(env, room_id, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    await _put_state(env, room_id, "m.room.server_acl", {"allow": ["*"], "deny": ["bad.example"]})
    await _put_state(env, room_id, "m.room.guest_access", {"guest_access": "can_join"})
    await _put_state(
        env, room_id, "m.room.history_visibility", {"history_visibility": "world_readable"}
    )
    await _put_state(env, room_id, "m.space.child", {"via": ["localhost"]}, _SPACE_CHILD)
    await c.ok(bob, "POST", f"/join/{q(room_id)}", {})
    levels = (await c.state(alice, room_id))[("m.room.power_levels", "")]["content"]
    levels["users"][bob.user_id] = 50
    await _put_state(env, room_id, "m.room.power_levels", levels)
    await c.ok(alice, "PUT", f"/directory/list/room/{q(room_id)}", {"visibility": "public"})
    return room_id


_TRANSFERRED = [
    ("m.room.server_acl", ""),
    ("m.room.encryption", ""),
    ("m.room.name", ""),
    ("m.room.avatar", ""),
    ("m.room.topic", ""),
    ("m.room.guest_access", ""),
    ("m.room.history_visibility", ""),
    ("m.room.join_rules", ""),
    ("m.room.canonical_alias", ""),
    ("m.space.child", _SPACE_CHILD),
]


async def _upgrade(env: Env, user: Any, room_id: str, body: dict[str, Any]) -> str:
    answer = await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/upgrade", body)
    assert set(answer) == {"replacement_room"}
    replacement: str = answer["replacement_room"]
    assert replacement != room_id
    return replacement


async def test_an_upgrade_from_10_to_12_moves_the_room(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.admin
    old = await _furnished_room(env, "10")
    await c.ok(carol, "POST", f"/join/{q(old)}", {})
    old_state = await c.state(alice, old)
    first_sync = await c.ok(bob, "GET", "/sync")

    new = await _upgrade(
        env, alice, old, {"new_version": "12", "additional_creators": [carol.user_id]}
    )

    new_state = await c.state(alice, new)
    create = new_state[("m.room.create", "")]
    assert create["sender"] == alice.user_id
    assert create["content"] == {
        "room_version": "12",
        "type": "org.example.lobby",
        "predecessor": {"room_id": old},
        "additional_creators": [carol.user_id],
    }
    for key in _TRANSFERRED:
        assert new_state[key]["content"] == old_state[key]["content"], key
        assert new_state[key]["sender"] == alice.user_id
    old_levels = old_state[("m.room.power_levels", "")]["content"]
    new_levels = new_state[("m.room.power_levels", "")]["content"]
    # Creators have their own power from v12 and are not listed.
    assert new_levels["users"] == {bob.user_id: 50}
    assert {k: v for k, v in new_levels.items() if k != "users"} == {
        k: v for k, v in old_levels.items() if k != "users"
    }
    members = {key[1] for key in new_state if key[0] == "m.room.member"}
    assert members == {alice.user_id}

    # The old room: tombstoned, quietened, its local aliases gone elsewhere.
    after = await c.state(alice, old)
    assert after[("m.room.tombstone", "")]["content"] == {
        "body": "This room has been replaced",
        "replacement_room": new,
    }
    levels = after[("m.room.power_levels", "")]["content"]
    assert (levels["events_default"], levels["invite"]) == (50, 50)
    assert levels["users"] == old_levels["users"]
    assert after[("m.room.canonical_alias", "")]["content"] == {"alt_aliases": ["#far:elsewhere"]}
    # A member without a moderator's power can no longer talk there.
    await c.refused(
        carol,
        "PUT",
        f"/rooms/{q(old)}/send/m.room.message/late",
        {"msgtype": "m.text", "body": "still here?"},
        status=403,
        errcode="M_FORBIDDEN",
    )

    # The directory follows.
    for alias in ("#lobby:localhost", "#hall:localhost"):
        assert (await c.ok(None, "GET", f"/directory/room/{q(alias)}"))["room_id"] == new
    assert await c.ok(None, "GET", f"/directory/list/room/{q(old)}") == {"visibility": "private"}
    assert await c.ok(None, "GET", f"/directory/list/room/{q(new)}") == {"visibility": "public"}
    listed = await c.ok(None, "GET", "/publicRooms")
    assert [room["room_id"] for room in listed["chunk"]] == [new]

    # Bob hears of the tombstone through /sync and follows it.
    later = await c.ok(bob, "GET", "/sync", params={"since": first_sync["next_batch"]})
    timeline = later["rooms"]["join"][old]["timeline"]["events"]
    tombstones = [event for event in timeline if event["type"] == "m.room.tombstone"]
    assert [event["content"]["replacement_room"] for event in tombstones] == [new]
    await c.ok(bob, "POST", f"/join/{q(new)}", {})
    sent = await c.ok(
        bob,
        "PUT",
        f"/rooms/{q(new)}/send/m.room.message/hello",
        {"msgtype": "m.text", "body": "moved in"},
    )
    members_now = await c.ok(alice, "GET", f"/rooms/{q(new)}/joined_members")
    assert set(members_now["joined"]) == {alice.user_id, bob.user_id}
    event = await c.ok(alice, "GET", f"/rooms/{q(new)}/event/{q(sent['event_id'])}")
    assert event["content"]["body"] == "moved in"


async def test_an_upgrade_from_11_to_11_names_the_last_event_and_keeps_levels(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    old = await _furnished_room(env, "11")
    old_state = await c.state(alice, old)
    messages = await c.ok(alice, "GET", f"/rooms/{q(old)}/messages", params={"dir": "b"})
    last_event_id = messages["chunk"][0]["event_id"]

    new = await _upgrade(env, alice, old, {"new_version": "11", "additional_creators": ["@x:y"]})

    new_state = await c.state(alice, new)
    create = new_state[("m.room.create", "")]["content"]
    # additional_creators mean nothing before v12 and are left out.
    assert create == {
        "room_version": "11",
        "type": "org.example.lobby",
        "predecessor": {"room_id": old, "event_id": last_event_id},
    }
    for key in _TRANSFERRED:
        assert new_state[key]["content"] == old_state[key]["content"], key
    assert (
        new_state[("m.room.power_levels", "")]["content"]
        == old_state[("m.room.power_levels", "")]["content"]
    )
    assert (await c.ok(alice, "GET", f"/rooms/{q(new)}/state/m.room.create"))[
        "room_version"
    ] == "11"
    assert (await c.ok(alice, "GET", f"/rooms/{q(old)}/state/m.room.tombstone"))[
        "replacement_room"
    ] == new

    # Asked again, the same answer and no second room.
    assert await _upgrade(env, alice, old, {"new_version": "11"}) == new
    await c.refused(
        alice,
        "POST",
        f"/rooms/{q(old)}/upgrade",
        {"new_version": "12"},
        status=400,
        errcode="M_BAD_STATE",
    )
    joined = await c.ok(alice, "GET", "/joined_rooms")
    assert sorted(joined["joined_rooms"]) == sorted([old, new])
    await c.ok(bob, "POST", f"/join/{q(new)}", {})


async def test_a_moderator_allowed_to_upgrade_keeps_their_own_level(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    old = await c.create_room(alice, preset="public_chat", room_version="10", name="Club")
    await c.ok(bob, "POST", f"/join/{q(old)}", {})
    levels = (await c.state(alice, old))[("m.room.power_levels", "")]["content"]
    levels["users"][bob.user_id] = 50
    levels["events"]["m.room.tombstone"] = 50
    await _put_state(env, old, "m.room.power_levels", levels)

    new = await _upgrade(env, bob, old, {"new_version": "11"})

    new_state = await c.state(bob, new)
    # Raised to copy the state (names and history visibility need more
    # than 50), then put back.
    assert new_state[("m.room.power_levels", "")]["content"] == levels
    assert new_state[("m.room.name", "")]["content"] == {"name": "Club"}
    assert new_state[("m.room.history_visibility", "")]["sender"] == bob.user_id
    after = await c.state(alice, old)
    assert after[("m.room.tombstone", "")]["content"]["replacement_room"] == new
    # Bob may not change the old room's power levels: they stay as they were.
    assert after[("m.room.power_levels", "")]["content"] == levels


async def test_upgrades_refused(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.admin
    room_id = await c.create_room(alice, preset="public_chat", room_version="10")
    await c.ok(bob, "POST", f"/join/{q(room_id)}", {})
    path = f"/rooms/{q(room_id)}/upgrade"
    await c.refused(bob, "POST", path, {"new_version": "11"}, status=403, errcode="M_FORBIDDEN")
    await c.refused(carol, "POST", path, {"new_version": "11"}, status=403, errcode="M_FORBIDDEN")
    for version in ("99", "1", "5"):
        await c.refused(
            alice,
            "POST",
            path,
            {"new_version": version},
            status=400,
            errcode="M_UNSUPPORTED_ROOM_VERSION",
        )
    await c.refused(alice, "POST", path, {}, status=400, errcode="M_BAD_JSON")
    await c.refused(alice, "POST", path, {"new_version": 11}, status=400, errcode="M_BAD_JSON")
    await c.refused(
        alice,
        "POST",
        path,
        {"new_version": "12", "additional_creators": ["not a user"]},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await c.refused(
        alice,
        "POST",
        "/rooms/!nowhere:localhost/upgrade",
        {"new_version": "11"},
        status=404,
        errcode="M_NOT_FOUND",
    )
    await c.refused(
        None, "POST", path, {"new_version": "11"}, status=401, errcode="M_MISSING_TOKEN"
    )
    # Nothing was written: no tombstone, no second room.
    assert ("m.room.tombstone", "") not in await c.state(alice, room_id)
    assert (await c.ok(alice, "GET", "/joined_rooms"))["joined_rooms"] == [room_id]


async def test_a_room_with_partial_state_is_not_upgraded(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice, preset="public_chat", room_version="10")
    storage = env.hs.server.storage
    # Marked as a partial-state join would leave it, its state then being
    # fetched from another server.
    state = await c.state(alice, room_id)
    join = state[("m.room.member", alice.user_id)]["event_id"]
    await storage.store_partial_join(room_id, "10", join, "elsewhere.example", [])
    assert await storage.is_partial_state_room(room_id)

    await c.refused(
        alice,
        "POST",
        f"/rooms/{q(room_id)}/upgrade",
        {"new_version": "11"},
        status=400,
        errcode="M_BAD_STATE",
    )
    assert (await c.ok(alice, "GET", "/joined_rooms"))["joined_rooms"] == [room_id]


async def test_string_levels_of_a_v6_room_become_integers(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    old = await c.create_room(alice, preset="public_chat", room_version="6")
    await c.ok(bob, "POST", f"/join/{q(old)}", {})
    levels = (await c.state(alice, old))[("m.room.power_levels", "")]["content"]
    levels["users"][bob.user_id] = "50"
    levels["kick"] = " 60 "
    await _put_state(env, old, "m.room.power_levels", levels)

    new = await _upgrade(env, alice, old, {"new_version": "11"})

    copied = (await c.state(alice, new))[("m.room.power_levels", "")]["content"]
    assert copied["users"] == {alice.user_id: 100, bob.user_id: 50}
    assert copied["kick"] == 60


async def test_a_v12_creator_upgrading_to_11_gets_the_highest_level(env: Env) -> None:
    c, alice = env.client, env.alice
    old = await c.create_room(alice, preset="private_chat", room_version="12")

    new = await _upgrade(env, alice, old, {"new_version": "11"})

    state = await c.state(alice, new)
    assert state[("m.room.create", "")]["content"]["predecessor"]["room_id"] == old
    # v12 rooms ask 150 for a tombstone; the creator keeps the power to upgrade.
    assert state[("m.room.power_levels", "")]["content"]["users"] == {alice.user_id: 150}
    assert await _upgrade(env, alice, new, {"new_version": "12"}) != new


async def test_the_same_upgrade_asked_twice_at_once_makes_one_room(env: Env) -> None:
    c, alice = env.client, env.alice
    old = await c.create_room(alice, preset="public_chat", room_version="10")
    answers: list[str] = []

    async def upgrade() -> None:
        answers.append(await _upgrade(env, alice, old, {"new_version": "11"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upgrade)
        nursery.start_soon(upgrade)

    assert len(answers) == 2
    assert answers[0] == answers[1]
    joined = await c.ok(alice, "GET", "/joined_rooms")
    assert sorted(joined["joined_rooms"]) == sorted([old, answers[0]])
