"""The alias directory over real HTTP on a started homeserver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _client import WithAdmin, open_with_admin, q

Env = WithAdmin


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _alias(name: str) -> str:
    return f"/directory/room/{q(name)}"


async def test_an_alias_is_made_resolved_listed_and_deleted(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    assert await c.ok(alice, "PUT", _alias("#home:localhost"), {"room_id": room_id}) == {}
    # Resolving needs no access token.
    assert await c.ok(None, "GET", _alias("#home:localhost")) == {
        "room_id": room_id,
        "servers": ["localhost"],
    }
    aliases = await c.ok(alice, "GET", f"/rooms/{q(room_id)}/aliases")
    assert aliases == {"aliases": ["#home:localhost"]}
    assert await c.ok(alice, "DELETE", _alias("#home:localhost")) == {}
    await c.refused(None, "GET", _alias("#home:localhost"), status=404, errcode="M_NOT_FOUND")
    await c.refused(alice, "DELETE", _alias("#home:localhost"), status=404, errcode="M_NOT_FOUND")
    assert await c.ok(alice, "GET", f"/rooms/{q(room_id)}/aliases") == {"aliases": []}


async def test_bad_alias_requests_are_refused_and_change_nothing(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice)
    body = {"room_id": room_id}
    await c.refused(
        alice, "PUT", _alias("home:localhost"), body, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(alice, "PUT", _alias("#home"), body, status=400, errcode="M_INVALID_PARAM")
    await c.refused(
        alice, "PUT", _alias("#home:elsewhere.example"), body, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(
        alice, "PUT", _alias("#home:localhost"), {}, status=400, errcode="M_MISSING_PARAM"
    )
    await c.refused(
        alice, "PUT", _alias("#home:localhost"), {"room_id": 5}, status=400, errcode="M_BAD_JSON"
    )
    await c.refused(
        alice, "PUT", _alias("#home:localhost"), raw=b"[", status=400, errcode="M_NOT_JSON"
    )
    await c.refused(
        alice,
        "PUT",
        _alias("#home:localhost"),
        {"room_id": "!unknown:localhost"},
        status=404,
        errcode="M_NOT_FOUND",
    )
    # Bob is not in the room.
    await c.refused(bob, "PUT", _alias("#home:localhost"), body, status=403, errcode="M_FORBIDDEN")
    await c.refused(None, "GET", _alias("#home:localhost"), status=404, errcode="M_NOT_FOUND")
    await c.refused(None, "GET", _alias("#home"), status=400, errcode="M_INVALID_PARAM")
    assert await c.ok(alice, "GET", f"/rooms/{q(room_id)}/aliases") == {"aliases": []}


async def test_a_taken_alias_is_409_and_stays(env: Env) -> None:
    c, alice = env.client, env.alice
    first = await c.create_room(alice)
    second = await c.create_room(alice)
    await c.ok(alice, "PUT", _alias("#one:localhost"), {"room_id": first})
    await c.refused(
        alice, "PUT", _alias("#one:localhost"), {"room_id": second}, status=409, errcode="M_UNKNOWN"
    )
    assert (await c.ok(None, "GET", _alias("#one:localhost")))["room_id"] == first


async def test_who_may_delete_an_alias(env: Env) -> None:
    c, alice, bob, admin = env.client, env.alice, env.bob, env.admin
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await c.ok(alice, "PUT", _alias("#a:localhost"), {"room_id": room_id})
    await c.ok(alice, "PUT", _alias("#b:localhost"), {"room_id": room_id})
    await c.ok(bob, "PUT", _alias("#c:localhost"), {"room_id": room_id})
    # Bob neither made #a nor may change the room's aliases.
    await c.refused(bob, "DELETE", _alias("#a:localhost"), status=403, errcode="M_FORBIDDEN")
    assert (await c.ok(None, "GET", _alias("#a:localhost")))["room_id"] == room_id
    # A server admin may; Alice, the room's creator, may delete Bob's.
    assert await c.ok(admin, "DELETE", _alias("#a:localhost")) == {}
    assert await c.ok(alice, "DELETE", _alias("#c:localhost")) == {}
    assert await c.ok(alice, "GET", f"/rooms/{q(room_id)}/aliases") == {"aliases": ["#b:localhost"]}


async def test_local_aliases_are_listed_for_members_only(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, room_alias_name="private")
    await c.refused(bob, "GET", f"/rooms/{q(room_id)}/aliases", status=403, errcode="M_FORBIDDEN")
    readable = await c.create_room(
        alice,
        room_alias_name="readable",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    assert await c.ok(bob, "GET", f"/rooms/{q(readable)}/aliases") == {
        "aliases": ["#readable:localhost"]
    }


async def test_an_alias_may_hold_any_unicode(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    alias = "#老虎Â£я🤨👉ඞ:localhost"
    await c.ok(alice, "PUT", _alias(alias), {"room_id": room_id})
    assert (await c.ok(None, "GET", _alias(alias)))["room_id"] == room_id
    assert await c.ok(alice, "GET", f"/rooms/{q(room_id)}/aliases") == {"aliases": [alias]}


def _canonical(room_id: str) -> str:
    return f"/rooms/{q(room_id)}/state/m.room.canonical_alias"


async def test_a_canonical_alias_may_name_only_the_rooms_own_aliases(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    other = await c.create_room(alice)
    await c.ok(alice, "PUT", _alias("#mine:localhost"), {"room_id": room_id})
    await c.ok(alice, "PUT", _alias("#theirs:localhost"), {"room_id": other})
    await c.ok(alice, "PUT", _alias("#gone:localhost"), {"room_id": room_id})
    await c.ok(alice, "DELETE", _alias("#gone:localhost"))
    mine = "#mine:localhost"
    refusals = [
        ({"alias": "#nowhere:localhost"}, "M_BAD_ALIAS"),
        ({"alias": "#gone:localhost"}, "M_BAD_ALIAS"),
        ({"alias": "#theirs:localhost"}, "M_BAD_ALIAS"),
        ({"alias": mine, "alt_aliases": ["#nowhere:localhost"]}, "M_BAD_ALIAS"),
        ({"alias": mine, "alt_aliases": ["#theirs:localhost"]}, "M_BAD_ALIAS"),
        ({"alias": "%mine:localhost"}, "M_INVALID_PARAM"),
        ({"alias": mine, "alt_aliases": ["%mine:localhost"]}, "M_INVALID_PARAM"),
        ({"alias": mine, "alt_aliases": mine}, "M_INVALID_PARAM"),
        ({"alias": 5}, "M_INVALID_PARAM"),
    ]
    for content, errcode in refusals:
        await c.refused(alice, "PUT", _canonical(room_id), content, status=400, errcode=errcode)
    assert ("m.room.canonical_alias", "") not in await c.state(alice, room_id)
    await c.ok(alice, "PUT", _canonical(room_id), {"alias": mine, "alt_aliases": [mine]})
    # Emptying the event checks nothing.
    await c.ok(alice, "PUT", _canonical(room_id), {})
    state = await c.state(alice, room_id)
    assert state["m.room.canonical_alias", ""]["content"] == {}


async def test_aliases_already_listed_are_not_checked_again(env: Env) -> None:
    c, alice, admin = env.client, env.alice, env.admin
    room_id = await c.create_room(alice, room_version="10")
    await c.ok(alice, "PUT", _alias("#a:localhost"), {"room_id": room_id})
    await c.ok(alice, "PUT", _alias("#b:localhost"), {"room_id": room_id})
    await c.ok(alice, "PUT", _canonical(room_id), {"alias": "#a:localhost"})
    # The admin is not in the room, so the event keeps the deleted alias.
    await c.ok(admin, "DELETE", _alias("#a:localhost"))
    state = await c.state(alice, room_id)
    assert state["m.room.canonical_alias", ""]["content"] == {"alias": "#a:localhost"}
    # The dead alias may stay while another is added beside it.
    content = {"alias": "#a:localhost", "alt_aliases": ["#b:localhost"]}
    await c.ok(alice, "PUT", _canonical(room_id), content)
    assert (await c.state(alice, room_id))["m.room.canonical_alias", ""]["content"] == content


async def test_deleting_an_alias_takes_it_out_of_the_canonical_alias(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    for name in ("#main:localhost", "#alt:localhost", "#keep:localhost"):
        await c.ok(alice, "PUT", _alias(name), {"room_id": room_id})
    await c.ok(bob, "PUT", _alias("#bobs:localhost"), {"room_id": room_id})
    listed = ["#alt:localhost", "#keep:localhost", "#bobs:localhost"]
    content = {"alias": "#main:localhost", "alt_aliases": listed, "extra": 1}
    await c.ok(alice, "PUT", _canonical(room_id), content)
    since = (await env.sync(alice, timeout="0"))["next_batch"]

    await c.ok(alice, "DELETE", _alias("#main:localhost"))
    await c.ok(alice, "DELETE", _alias("#alt:localhost"))
    # Bob may delete the alias he made, though not change the event.
    await c.ok(bob, "DELETE", _alias("#bobs:localhost"))

    expected = {"alt_aliases": ["#keep:localhost", "#bobs:localhost"], "extra": 1}
    state = await c.state(alice, room_id)
    assert state["m.room.canonical_alias", ""]["content"] == expected
    assert state["m.room.canonical_alias", ""]["sender"] == alice.user_id
    timeline = (await env.sync(alice, since=since, timeout="0"))["rooms"]["join"][room_id]
    sent = [e["content"] for e in timeline["timeline"]["events"]]
    assert sent == [
        {"alt_aliases": listed, "extra": 1},
        expected,
    ]
    # Deleting the last one leaves an empty event behind.
    await c.ok(alice, "DELETE", _alias("#keep:localhost"))
    await c.ok(alice, "PUT", _canonical(room_id), {"alias": None, "alt_aliases": []})
    assert await c.ok(alice, "GET", _canonical(room_id)) == {"alias": None, "alt_aliases": []}


async def test_the_level_for_m_room_aliases_does_not_govern_the_directory(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    levels_path = f"/rooms/{q(room_id)}/state/m.room.power_levels"
    levels = await c.ok(alice, "GET", levels_path)
    levels["events"]["m.room.aliases"] = 50
    await c.ok(alice, "PUT", levels_path, levels)
    # Since room version 6 the event is gone: a member adds and deletes
    # their own alias whatever level it asks.
    assert await c.ok(bob, "PUT", _alias("#bobs:localhost"), {"room_id": room_id}) == {}
    assert (await c.ok(None, "GET", _alias("#bobs:localhost")))["room_id"] == room_id
    assert await c.ok(bob, "DELETE", _alias("#bobs:localhost")) == {}
    await c.refused(None, "GET", _alias("#bobs:localhost"), status=404, errcode="M_NOT_FOUND")
