"""Invites, joins, leaves, kicks, bans and forgetting, and what a departed
member may still read of a room, over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser

_TXN = itertools.count()
_MADE_UP = "org.example.made_up"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _say(env: SharedRoom, user: TestUser, room_id: str, body: str) -> None:
    await env.client.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t{next(_TXN)}",
        {"msgtype": "m.text", "body": body},
    )


async def _put(env: SharedRoom, user: TestUser, room_id: str, path: str, content: Any) -> None:
    await env.client.ok(user, "PUT", f"/rooms/{q(room_id)}/state/{path}", content)


async def _post(env: SharedRoom, user: TestUser, room_id: str, what: str, body: Any) -> None:
    await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/{what}", body)


async def _content(env: SharedRoom, user: TestUser, room_id: str, path: str) -> Any:
    return await env.client.ok(user, "GET", f"/rooms/{q(room_id)}/state/{path}")


async def test_a_departed_member_reads_the_room_as_it_was_when_they_left(
    env: SharedRoom,
) -> None:
    alice, bob, carol = env.alice, env.bob, env.carol
    room_id = await env.client.create_room(
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
    await _post(env, bob, room_id, "join", {})
    await _put(env, alice, room_id, "m.room.name", {"name": "name before"})
    await _put(env, alice, room_id, _MADE_UP, {"body": "state before"})
    await _say(env, alice, room_id, "message one")
    await _say(env, alice, room_id, "message two")
    await _post(env, bob, room_id, "leave", {})
    since = (await env.sync(bob, timeout=0))["next_batch"]
    await _put(env, alice, room_id, "m.room.name", {"name": "name after"})
    await _put(env, alice, room_id, _MADE_UP, {"body": "state after"})
    await _say(env, alice, room_id, "message three")
    await _post(env, carol, room_id, "join", {})

    assert (await _content(env, bob, room_id, _MADE_UP))["body"] == "state before"
    assert (await _content(env, alice, room_id, _MADE_UP))["body"] == "state after"
    assert (await _content(env, bob, room_id, "m.room.name"))["name"] == "name before"
    assert (await _content(env, alice, room_id, "m.room.name"))["name"] == "name after"

    members = await env.client.ok(bob, "GET", f"/rooms/{q(room_id)}/members")
    seen = {(event["state_key"], event["content"]["membership"]) for event in members["chunk"]}
    assert seen == {(alice.user_id, "join"), (bob.user_id, "leave")}

    back = await env.client.ok(
        bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": 3, "from": since}
    )
    assert [
        (event["type"], event["content"].get("body"), event.get("state_key"))
        for event in back["chunk"]
    ] == [
        ("m.room.member", None, bob.user_id),
        ("m.room.message", "message two", None),
        ("m.room.message", "message one", None),
    ]
    forward = await env.client.ok(
        bob,
        "GET",
        f"/rooms/{q(room_id)}/messages",
        params={"dir": "f", "limit": 100, "from": since},
    )
    assert forward["chunk"] == []


async def test_invites_to_an_invite_only_room(env: SharedRoom) -> None:
    alice, bob = env.alice, env.carol
    room_id = await env.client.create_room(alice, preset="private_chat", name="Invites room")
    await env.client.refused(
        bob, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN"
    )
    await env.client.refused(
        alice,
        "POST",
        f"/rooms/{q(room_id)}/invite",
        {"user_id": alice.user_id},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await _post(env, alice, room_id, "invite", {"user_id": bob.user_id})
    invite = (await env.sync(bob))["rooms"]["invite"][room_id]["invite_state"]["events"]
    stripped = {event["type"]: event["content"] for event in invite}
    assert stripped["m.room.name"] == await _content(env, alice, room_id, "m.room.name")
    assert stripped["m.room.join_rules"] == await _content(env, alice, room_id, "m.room.join_rules")
    await _post(env, bob, room_id, "join", {})
    assert room_id in (await env.sync(bob))["rooms"]["join"]
    state = await env.client.state(alice, room_id)
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
    await env.client.refused(
        alice,
        "POST",
        f"/rooms/{q(room_id)}/invite",
        {"user_id": bob.user_id},
        status=403,
        errcode="M_FORBIDDEN",
    )


async def test_an_invite_can_be_rejected_even_when_the_room_emptied(env: SharedRoom) -> None:
    alice, bob = env.alice, env.carol
    for leaves_first in (False, True):
        room_id = await env.client.create_room(alice, preset="private_chat")
        alice_since = (await env.sync(alice))["next_batch"]
        await _post(env, alice, room_id, "invite", {"user_id": bob.user_id})
        bob_since = (await env.sync(bob))["next_batch"]
        if leaves_first:
            await _post(env, alice, room_id, "leave", {})
        await _post(env, bob, room_id, "leave", {})
        left = await env.sync(bob, since=bob_since)
        assert room_id in left["rooms"]["leave"]
        after = await env.sync(bob, since=left["next_batch"])
        assert room_id not in after["rooms"]["invite"]
        if not leaves_first:
            seen = await env.sync(alice, since=alice_since)
            members = [
                event
                for event in seen["rooms"]["join"][room_id]["timeline"]["events"]
                if event["type"] == "m.room.member" and event["state_key"] == bob.user_id
            ]
            assert members[-1]["content"]["membership"] == "leave"


async def test_a_creator_who_left_can_be_invited_back(env: SharedRoom) -> None:
    alice, bob = env.alice, env.carol
    room_id = await env.client.create_room(alice, preset="private_chat")
    await _post(env, alice, room_id, "invite", {"user_id": bob.user_id})
    await _post(env, bob, room_id, "join", {})
    levels = await _content(env, alice, room_id, "m.room.power_levels")
    levels["users"][bob.user_id] = 100
    await _put(env, alice, room_id, "m.room.power_levels", levels)
    await _post(env, alice, room_id, "leave", {})
    await _post(env, bob, room_id, "invite", {"user_id": alice.user_id})
    assert room_id in (await env.sync(alice))["rooms"]["invite"]
    await _post(env, alice, room_id, "join", {})
    state = await env.client.state(bob, room_id)
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"


async def test_joining_by_id_or_alias(env: SharedRoom) -> None:
    alice, carol = env.alice, env.carol
    room_id = await env.client.create_room(alice, preset="public_chat", room_alias_name="custom")
    alias = "#custom:localhost"
    for path, user in ((f"/rooms/{q(room_id)}/join", env.bob), (f"/join/{q(room_id)}", carol)):
        answer = await env.client.ok(user, "POST", path, {"reason": "hello"})
        assert answer["room_id"] == room_id
        member = await _content(env, user, room_id, f"m.room.member/{q(user.user_id)}")
        assert (member["membership"], member["reason"]) == ("join", "hello")
    await _post(env, carol, room_id, "leave", {})
    answer = await env.client.ok(carol, "POST", f"/join/{q(alias)}", {})
    assert answer["room_id"] == room_id
    member = await _content(env, carol, room_id, f"m.room.member/{q(carol.user_id)}")
    assert member["membership"] == "join"


async def test_ban_invite_and_leave_write_the_membership(env: SharedRoom) -> None:
    alice, bob, carol = env.alice, env.bob, env.carol
    await _post(env, alice, env.room_id, "ban", {"user_id": bob.user_id, "reason": "testing"})
    banned = await _content(env, alice, env.room_id, f"m.room.member/{q(bob.user_id)}")
    assert (banned["membership"], banned["reason"]) == ("ban", "testing")
    await _post(env, alice, env.room_id, "invite", {"user_id": carol.user_id})
    invited = await _content(env, alice, env.room_id, f"m.room.member/{q(carol.user_id)}")
    assert invited["membership"] == "invite"
    await _post(env, carol, env.room_id, "join", {})
    await _post(env, carol, env.room_id, "leave", {})
    left = await _content(env, alice, env.room_id, f"m.room.member/{q(carol.user_id)}")
    assert left["membership"] == "leave"
    # A banned user must be unbanned first: neither invited nor kicked.
    for what in ("invite", "kick"):
        await env.client.refused(
            alice,
            "POST",
            f"/rooms/{q(env.room_id)}/{what}",
            {"user_id": bob.user_id},
            status=403,
            errcode="M_FORBIDDEN",
        )
    still = await _content(env, alice, env.room_id, f"m.room.member/{q(bob.user_id)}")
    assert (still["membership"], still["reason"]) == ("ban", "testing")


async def test_kicks_and_bans_need_the_kicker_present_and_the_target_there(
    env: SharedRoom,
) -> None:
    alice, bob, carol = env.alice, env.bob, env.carol
    room_id = await env.client.create_room(alice, preset="public_chat")
    # Carol was never in the room: she can neither kick nor ban.
    await _post(env, bob, room_id, "join", {})
    for what in ("kick", "ban"):
        await env.client.refused(
            carol,
            "POST",
            f"/rooms/{q(room_id)}/{what}",
            {"user_id": bob.user_id},
            status=403,
            errcode="M_FORBIDDEN",
        )
    # Nobody can kick a user who never joined, or who already left.
    await env.client.refused(
        alice,
        "POST",
        f"/rooms/{q(room_id)}/kick",
        {"user_id": carol.user_id},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await _post(env, bob, room_id, "leave", {})
    await env.client.refused(
        alice,
        "POST",
        f"/rooms/{q(room_id)}/kick",
        {"user_id": bob.user_id},
        status=403,
        errcode="M_FORBIDDEN",
    )


async def test_a_room_still_joined_cannot_be_forgotten(env: SharedRoom) -> None:
    await env.client.refused(
        env.bob, "POST", f"/rooms/{q(env.room_id)}/forget", {}, status=400, errcode="M_UNKNOWN"
    )
    await _post(env, env.bob, env.room_id, "leave", {})
    await _post(env, env.bob, env.room_id, "forget", {})


# --- Memberships sent as member events through /state ---------------------------


async def _put_member(
    env: SharedRoom, user: TestUser, room_id: str, target: TestUser, content: Any
) -> str:
    """``user`` sends ``target``'s member event through /state; the event's ID."""
    answer = await env.client.ok(
        user, "PUT", f"/rooms/{q(room_id)}/state/m.room.member/{q(target.user_id)}", content
    )
    event_id: str = answer["event_id"]
    return event_id


async def _member_event(env: SharedRoom, room_id: str, user: TestUser) -> Any:
    """``user``'s member event in the room's current state, as Alice reads it."""
    return (await env.client.state(env.alice, room_id))[("m.room.member", user.user_id)]


async def test_each_membership_is_made_through_the_state_api(env: SharedRoom) -> None:
    """Each membership a client may set, sent as a member event through
    /state: the event named by the answer is the room's current member
    event, with every key of the content sent."""
    alice, bob, carol = env.alice, env.bob, env.carol
    dave = await env.hs.register_user("dave")
    room = env.room_id

    # Carol joins a room she was never in, with a per-room name and a key
    # of her client's own; her profile's fields fill in what she left out.
    await env.client.ok(
        carol,
        "PUT",
        "/profile/" + q(carol.user_id) + "/avatar_url",
        {"avatar_url": "mxc://localhost/carol"},
    )
    sent = {"membership": "join", "displayname": "Caz", _MADE_UP: {"n": 1}, "reason": "hi"}
    joined = await _put_member(env, carol, room, carol, sent)
    event = await _member_event(env, room, carol)
    assert event["event_id"] == joined
    assert (event["sender"], event["content"]) == (
        carol.user_id,
        {**sent, "avatar_url": "mxc://localhost/carol"},
    )
    assert room in (await env.client.ok(carol, "GET", "/joined_rooms"))["joined_rooms"]

    # Alice invites Dave, who declines.
    invite = {"membership": "invite", "reason": "come along", "is_direct": True}
    invited = await _put_member(env, alice, room, dave, invite)
    event = await _member_event(env, room, dave)
    assert (event["event_id"], event["sender"], event["content"]) == (
        invited,
        alice.user_id,
        invite,
    )
    assert room in (await env.sync(dave))["rooms"]["invite"]
    declined = await _put_member(env, dave, room, dave, {"membership": "leave", "reason": "no"})
    event = await _member_event(env, room, dave)
    assert (event["event_id"], event["sender"]) == (declined, dave.user_id)
    assert event["content"] == {"membership": "leave", "reason": "no"}

    # Alice bans Carol, then lifts the ban: a leave of another banned user.
    banned = await _put_member(env, alice, room, carol, {"membership": "ban", "reason": "spam"})
    event = await _member_event(env, room, carol)
    assert (event["event_id"], event["content"]) == (
        banned,
        {"membership": "ban", "reason": "spam"},
    )
    unbanned = await _put_member(env, alice, room, carol, {"membership": "leave"})
    event = await _member_event(env, room, carol)
    assert (event["event_id"], event["sender"], event["content"]) == (
        unbanned,
        alice.user_id,
        {"membership": "leave"},
    )

    # Alice kicks Bob: a leave of another user in the room.
    kicked = await _put_member(env, alice, room, bob, {"membership": "leave", "reason": "bye"})
    event = await _member_event(env, room, bob)
    assert (event["event_id"], event["sender"], event["content"]) == (
        kicked,
        alice.user_id,
        {"membership": "leave", "reason": "bye"},
    )

    # Bob joins again and leaves of his own accord.
    await _put_member(env, bob, room, bob, {"membership": "join"})
    left = await _put_member(env, bob, room, bob, {"membership": "leave"})
    event = await _member_event(env, room, bob)
    assert (event["event_id"], event["sender"], event["content"]["membership"]) == (
        left,
        bob.user_id,
        "leave",
    )
    assert room not in (await env.client.ok(bob, "GET", "/joined_rooms"))["joined_rooms"]


async def test_a_member_event_through_the_state_api_is_checked_as_its_endpoint_checks(
    env: SharedRoom,
) -> None:
    """Refusals of member events sent through /state, each before anything
    is written: the room's state is as it was."""
    alice, bob, carol = env.alice, env.bob, env.carol
    room = env.room_id

    async def state_ids() -> dict[tuple[str, str], str]:
        state = await env.client.state(alice, room)
        return {key: event["event_id"] for key, event in state.items()}

    before = await state_ids()
    path = f"/rooms/{q(room)}/state/m.room.member"

    async def refused(user: TestUser, target: str, body: Any, status: int, errcode: str) -> None:
        await env.client.refused(
            user, "PUT", f"{path}/{q(target)}", body, status=status, errcode=errcode
        )

    # A membership the spec does not have, or none.
    for body in (
        {"membership": "joined"},
        {"membership": "JOIN"},
        {"membership": 1},
        {"membership": None},
        {"displayname": "no membership"},
    ):
        await refused(alice, alice.user_id, body, 400, "M_BAD_JSON")
    # A reason that is not a string, as the membership endpoints refuse it.
    await refused(carol, carol.user_id, {"membership": "join", "reason": 5}, 400, "M_BAD_JSON")
    # A state key that is no user.
    await refused(alice, "not a user", {"membership": "invite"}, 400, "M_INVALID_PARAM")
    # Nobody joins, knocks or leaves for someone else.
    for membership in ("join", "knock"):
        await refused(bob, carol.user_id, {"membership": membership}, 403, "M_FORBIDDEN")
    # Bob may not kick Alice, nor ban her: he has no power to.
    await refused(bob, alice.user_id, {"membership": "leave"}, 403, "M_FORBIDDEN")
    await refused(bob, alice.user_id, {"membership": "ban"}, 403, "M_FORBIDDEN")
    # Carol is not in the room: there is no one to kick.
    await refused(alice, carol.user_id, {"membership": "leave"}, 403, "M_FORBIDDEN")
    # Carol, not in the room, may neither invite nor ban.
    dave = await env.hs.register_user("dave")
    await refused(carol, dave.user_id, {"membership": "invite"}, 403, "M_FORBIDDEN")
    await refused(carol, bob.user_id, {"membership": "ban"}, 403, "M_FORBIDDEN")
    assert await state_ids() == before
