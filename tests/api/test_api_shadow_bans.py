"""Shadow bans over real HTTP: the admin API that sets and lifts them, and
what a shadow-banned user's requests do. Each faked request is answered as
a real one would be (or refused as a real one would be), and reaches no one:
the event answered is in no one's view of the room, nor in storage; lifting
the ban lets the user's sends through again."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _admin import admin_call, admin_ok, admin_refused
from _client import Client, q

from ranvier.config import RateLimitConfig
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)

#: An event ID of room versions 4 and later: a hash, unpadded URL-safe base64.
_EVENT_ID = re.compile(r"^\$[A-Za-z0-9_-]{43}$")
#: A room ID from v12 on: the create event's hash.
_V12_ROOM_ID = re.compile(r"^![A-Za-z0-9_-]{43}$")


@dataclass
class Env:
    """Alice's public room that Bob has joined; Carol, not in it; an admin."""

    hs: TestHomeserver
    client: Client
    alice: TestUser
    bob: TestUser
    carol: TestUser
    admin: TestUser
    room_id: str

    @property
    def room(self) -> str:
        return f"/rooms/{q(self.room_id)}"

    async def shadow_ban(self, user: TestUser, banned: bool = True) -> None:
        method = "POST" if banned else "DELETE"
        path = f"/v1/users/{q(user.user_id)}/shadow_ban"
        assert await admin_ok(self.client.http, self.admin, method, path) == {}

    async def send(self, user: TestUser, body: str, txn: str, room_id: str | None = None) -> str:
        room = self.room if room_id is None else f"/rooms/{q(room_id)}"
        answer = await self.client.ok(
            user, "PUT", f"{room}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": body}
        )
        event_id: str = answer["event_id"]
        return event_id

    async def seen_by(self, user: TestUser, event_id: str) -> bool:
        """Whether ``user`` can fetch the event from the room."""
        status, _ = await self.client.call(user, "GET", f"{self.room}/event/{q(event_id)}")
        assert status in (200, 404)
        return status == 200

    async def stored(self, event_id: str) -> bool:
        return bool(await self.hs.server.storage.get_events([event_id]))

    async def timeline(self, user: TestUser) -> list[dict[str, Any]]:
        answer = await self.client.ok(
            user, "GET", f"{self.room}/messages", params={"dir": "b", "limit": 100}
        )
        chunk: list[dict[str, Any]] = answer["chunk"]
        return chunk

    async def bodies(self, user: TestUser) -> list[str]:
        return [
            event["content"]["body"]
            for event in await self.timeline(user)
            if event["type"] == "m.room.message"
        ]

    async def state_content(self, user: TestUser, event_type: str, state_key: str = "") -> Any:
        return await self.client.ok(user, "GET", f"{self.room}/state/{event_type}/{state_key}")


async def _open(tmp_path: Path, **ratelimit: Any) -> AsyncIterator[Env]:
    config = config_for_tests(tmp_path / "hs")
    if ratelimit:
        config = msgspec.structs.replace(config, ratelimit=RateLimitConfig(**ratelimit))
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        carol, admin = await hs.register_user("carol"), await hs.register_user("root", admin=True)
        room_id = await client.create_room(alice, preset="public_chat")
        await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        yield Env(hs, client, alice, bob, carol, admin, room_id)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for opened in _open(tmp_path):
        yield opened


# --- The admin API ----------------------------------------------------------------


async def test_an_admin_shadow_bans_and_lifts_the_ban(env: Env) -> None:
    http, admin, bob = env.client.http, env.admin, env.bob
    user_path = f"/v2/users/{q(bob.user_id)}"
    assert (await admin_ok(http, admin, "GET", user_path))["shadow_banned"] is False
    await env.shadow_ban(bob)
    assert (await admin_ok(http, admin, "GET", user_path))["shadow_banned"] is True
    # Banning twice is no error.
    await env.shadow_ban(bob)
    listed = await admin_ok(http, admin, "GET", "/v2/users", params={"order_by": "shadow_banned"})
    flags = [(user["name"], user["shadow_banned"]) for user in listed["users"]]
    assert flags[-1] == (bob.user_id, True)
    assert all(not banned for _, banned in flags[:-1])
    await env.shadow_ban(bob, banned=False)
    assert (await admin_ok(http, admin, "GET", user_path))["shadow_banned"] is False
    await env.shadow_ban(bob, banned=False)


async def test_the_admin_api_refuses_what_synapse_refuses(env: Env) -> None:
    http, admin, alice = env.client.http, env.admin, env.alice
    for method in ("POST", "DELETE"):
        remote = f"/v1/users/{q('@bob:elsewhere.test')}/shadow_ban"
        await admin_refused(http, admin, method, remote, status=400, errcode="M_INVALID_PARAM")
        unknown = f"/v1/users/{q('@nobody:' + env.hs.server_name)}/shadow_ban"
        await admin_refused(http, admin, method, unknown, status=404, errcode="M_NOT_FOUND")
        bobs = f"/v1/users/{q(env.bob.user_id)}/shadow_ban"
        message = await admin_refused(http, alice, method, bobs, status=403, errcode="M_FORBIDDEN")
        assert message == "You are not a server admin"
        await admin_refused(http, None, method, bobs, status=401, errcode="M_MISSING_TOKEN")
    status, shown = await admin_call(http, admin, "GET", f"/v2/users/{q(env.bob.user_id)}")
    assert (status, shown["shadow_banned"]) == (200, False)


# --- Events -----------------------------------------------------------------------


async def test_messages_are_answered_and_reach_no_one(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await env.shadow_ban(bob)
    faked = await env.send(bob, "buy now", "t1")
    assert _EVENT_ID.match(faked)
    assert not await env.stored(faked)
    for user in (alice, bob):
        assert not await env.seen_by(user, faked)
        assert "buy now" not in await env.bodies(user)
    # The same transaction answers the same event; another, another.
    assert await env.send(bob, "buy now", "t1") == faked
    other = await env.send(bob, "buy now", "t2")
    assert _EVENT_ID.match(other)
    assert other != faked
    # A reaction goes the same way.
    real = await env.send(alice, "hello", "a1")
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": real, "key": "x"}}
    reacted = await c.ok(bob, "PUT", f"{env.room}/send/m.reaction/r1", reaction)
    assert not await env.stored(reacted["event_id"])

    await env.shadow_ban(bob, banned=False)
    sent = await env.send(bob, "hello again", "t3")
    assert await env.seen_by(alice, sent)
    assert "hello again" in await env.bodies(alice)
    # A transaction answered while banned keeps its answer.
    assert await env.send(bob, "buy now", "t1") == faked


async def test_requests_a_real_send_refuses_are_refused_alike(env: Env) -> None:
    c, bob, carol = env.client, env.bob, env.carol
    await env.shadow_ban(bob)
    await env.shadow_ban(carol)
    message = {"msgtype": "m.text", "body": "hi"}
    # Carol is not in the room.
    await c.refused(
        carol,
        "PUT",
        f"{env.room}/send/m.room.message/t",
        message,
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(
        carol,
        "PUT",
        f"{env.room}/typing/{q(carol.user_id)}",
        {"typing": True},
        status=403,
        errcode="M_FORBIDDEN",
    )
    # Bob is, without the power to change the topic or invite ...
    await c.refused(
        bob,
        "PUT",
        f"{env.room}/state/m.room.topic",
        {"topic": "spam"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.ok(env.alice, "PUT", f"{env.room}/state/m.room.join_rules", {"join_rule": "invite"})
    await c.refused(
        bob,
        "POST",
        f"{env.room}/invite",
        {"user_id": carol.user_id},
        status=403,
        errcode="M_FORBIDDEN",
    )
    # ... or to redact Alice's messages.
    real = await env.send(env.alice, "mine", "a1")
    await c.refused(
        bob, "PUT", f"{env.room}/redact/{q(real)}/t", {}, status=403, errcode="M_FORBIDDEN"
    )
    # A room that is not there.
    await c.refused(
        bob,
        "PUT",
        f"/rooms/{q('!nowhere:' + env.hs.server_name)}/send/m.room.message/t",
        message,
        status=403,
        errcode="M_FORBIDDEN",
    )


async def _raise_bob(env: Env) -> None:
    """Bob gets the moderators' level in Alice's room."""
    levels = await env.state_content(env.alice, "m.room.power_levels")
    levels["users"][env.bob.user_id] = 50
    await env.client.ok(env.alice, "PUT", f"{env.room}/state/m.room.power_levels", levels)


async def test_state_and_redactions_are_answered_and_dropped(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.ok(alice, "PUT", f"{env.room}/state/m.room.topic", {"topic": "calm"})
    await _raise_bob(env)
    before = await env.send(bob, "said before the ban", "b0")
    await env.shadow_ban(bob)

    topic = await c.ok(bob, "PUT", f"{env.room}/state/m.room.topic", {"topic": "spam"})
    assert _EVENT_ID.match(topic["event_id"])
    assert not await env.stored(topic["event_id"])
    assert await env.state_content(alice, "m.room.topic") == {"topic": "calm"}

    redacted = await c.ok(bob, "PUT", f"{env.room}/redact/{q(before)}/r1", {"reason": "oops"})
    assert not await env.stored(redacted["event_id"])
    redaction = {"redacts": before}
    sent = await c.ok(bob, "PUT", f"{env.room}/send/m.room.redaction/r2", redaction)
    assert not await env.stored(sent["event_id"])
    shown = await c.ok(alice, "GET", f"{env.room}/event/{q(before)}")
    assert shown["content"]["body"] == "said before the ban"

    # A new name in this room alone is a profile change: dropped too.
    member = await env.state_content(alice, "m.room.member", q(bob.user_id))
    renamed = await c.ok(
        bob,
        "PUT",
        f"{env.room}/state/m.room.member/{q(bob.user_id)}",
        {"membership": "join", "displayname": "Buy Now"},
    )
    assert not await env.stored(renamed["event_id"])
    assert await env.state_content(alice, "m.room.member", q(bob.user_id)) == member

    await env.shadow_ban(bob, banned=False)
    await c.ok(bob, "PUT", f"{env.room}/state/m.room.topic", {"topic": "lifted"})
    assert await env.state_content(alice, "m.room.topic") == {"topic": "lifted"}


# --- Invites, rooms, profiles ------------------------------------------------------


async def _invited_rooms(env: Env, user: TestUser) -> set[str]:
    answer = await env.client.ok(user, "GET", "/sync")
    return set(answer["rooms"]["invite"])


async def test_invites_are_answered_and_not_sent(env: Env) -> None:
    c, bob, carol = env.client, env.bob, env.carol
    await _raise_bob(env)
    await env.shadow_ban(bob)
    assert await c.ok(bob, "POST", f"{env.room}/invite", {"user_id": carol.user_id}) == {}
    state_invite = await c.ok(
        bob,
        "PUT",
        f"{env.room}/state/m.room.member/{q(carol.user_id)}",
        {"membership": "invite"},
    )
    assert not await env.stored(state_invite["event_id"])
    made = await c.ok(bob, "POST", "/createRoom", {"invite": [carol.user_id], "name": "Deals"})
    room_id = made["room_id"]
    assert _V12_ROOM_ID.match(room_id)
    assert await _invited_rooms(env, carol) == set()
    # The room is there, with Bob in it and no one invited.
    state = await c.state(bob, room_id)
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
    assert ("m.room.member", carol.user_id) not in state
    assert state[("m.room.name", "")]["content"] == {"name": "Deals"}
    # An invite list a real request refuses is refused alike.
    await c.refused(
        bob,
        "POST",
        "/createRoom",
        {"invite": ["not a user"]},
        status=400,
        errcode="M_INVALID_PARAM",
    )

    await env.shadow_ban(bob, banned=False)
    await c.ok(bob, "POST", f"{env.room}/invite", {"user_id": carol.user_id})
    assert await _invited_rooms(env, carol) == {env.room_id}


async def test_joins_leaves_and_reads_work_as_for_anyone(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    other = await c.create_room(alice, preset="public_chat")
    await env.send(alice, "welcome", "a1", room_id=other)
    await env.shadow_ban(bob)
    await c.ok(bob, "POST", f"/join/{q(other)}", {})
    members = await c.ok(alice, "GET", f"/rooms/{q(other)}/joined_members")
    assert bob.user_id in members["joined"]
    synced = await c.ok(bob, "GET", "/sync")
    timeline = synced["rooms"]["join"][other]["timeline"]["events"]
    assert "welcome" in [event["content"].get("body") for event in timeline]
    await c.ok(bob, "POST", f"/rooms/{q(other)}/leave", {})
    members = await c.ok(alice, "GET", f"/rooms/{q(other)}/joined_members")
    assert bob.user_id not in members["joined"]


async def test_a_profile_changes_but_not_in_the_rooms(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    member = await env.state_content(alice, "m.room.member", q(bob.user_id))
    await env.shadow_ban(bob)
    await c.ok(bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Buy Now"})
    profile = await c.ok(alice, "GET", f"/profile/{q(bob.user_id)}")
    assert profile["displayname"] == "Buy Now"
    assert await env.state_content(alice, "m.room.member", q(bob.user_id)) == member
    await env.shadow_ban(bob, banned=False)
    await c.ok(bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob"})
    renamed = await env.state_content(alice, "m.room.member", q(bob.user_id))
    assert renamed["displayname"] == "Bob"


async def test_an_upgrade_is_answered_and_nothing_is_made(env: Env) -> None:
    c, bob = env.client, env.bob
    own = await c.create_room(bob, preset="private_chat")
    await env.shadow_ban(bob)
    # Refused alike: Bob may not upgrade Alice's room.
    await c.refused(
        bob, "POST", f"{env.room}/upgrade", {"new_version": "11"}, status=403, errcode="M_FORBIDDEN"
    )
    for version, shape in (("12", _V12_ROOM_ID), ("11", re.compile(r"^![A-Za-z]{18}:localhost$"))):
        answer = await c.ok(bob, "POST", f"/rooms/{q(own)}/upgrade", {"new_version": version})
        replacement = answer["replacement_room"]
        assert shape.match(replacement)
        assert await env.hs.server.storage.get_room_version(replacement) is None
    assert ("m.room.tombstone", "") not in await c.state(bob, own)


async def _typing_in(env: Env, viewer: TestUser) -> list[str]:
    answer = await env.client.ok(viewer, "GET", "/sync")
    for event in answer["rooms"]["join"][env.room_id]["ephemeral"]["events"]:
        if event["type"] == "m.typing":
            users: list[str] = event["content"]["user_ids"]
            return users
    return []


async def test_typing_is_answered_and_dropped(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await env.shadow_ban(bob)
    typing = f"{env.room}/typing/{q(bob.user_id)}"
    assert await c.ok(bob, "PUT", typing, {"typing": True, "timeout": 30_000}) == {}
    await c.ok(alice, "PUT", f"{env.room}/typing/{q(alice.user_id)}", {"typing": True})
    assert await _typing_in(env, alice) == [alice.user_id]
    assert env.hs.server.typing_notices.typing_in(env.room_id) == [alice.user_id]
    await env.shadow_ban(bob, banned=False)
    await c.ok(bob, "PUT", typing, {"typing": True})
    assert sorted(await _typing_in(env, alice)) == sorted([alice.user_id, bob.user_id])


# --- The pause ------------------------------------------------------------------------


async def test_a_faked_answer_waits_while_rate_limits_are_on(tmp_path: Path) -> None:
    # A limit high enough that only the pause holds the requests up.
    async for env in _open(tmp_path, enabled=True, shadow_ban_delay_seconds=(0.3, 0.4)):
        await env.shadow_ban(env.bob)
        started = trio.current_time()
        await env.send(env.bob, "slow", "t1")
        assert trio.current_time() - started >= 0.3
        # The same transaction is answered from its record, at once.
        started = trio.current_time()
        await env.send(env.bob, "slow", "t1")
        assert trio.current_time() - started < 0.3
