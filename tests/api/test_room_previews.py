"""Room previews over HTTP: ``/rooms/{roomId}/initialSync`` and the peeking
``/events?room_id=...``, for members and for users never in the room."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser

_TXN = itertools.count()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _room(env: SharedRoom, history: str, **body: Any) -> str:
    return await env.client.create_room(
        env.alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": history},
            }
        ],
        **body,
    )


async def _say(env: SharedRoom, room_id: str, body: str, user: TestUser | None = None) -> str:
    sent = await env.client.ok(
        user or env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/p{next(_TXN)}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = sent["event_id"]
    return event_id


async def _set_visibility(env: SharedRoom, room_id: str, visibility: str) -> None:
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/state/m.room.history_visibility/",
        {"history_visibility": visibility},
    )


async def _initial_sync(
    env: SharedRoom, user: TestUser, room_id: str, **params: Any
) -> dict[str, Any]:
    answer: dict[str, Any] = await env.client.ok(
        user, "GET", f"/rooms/{q(room_id)}/initialSync", params=params
    )
    return answer


async def _events(env: SharedRoom, user: TestUser, room_id: str, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await env.client.ok(
        user, "GET", "/events", params={"room_id": room_id, **params}
    )
    return answer


def _bodies(events: list[dict[str, Any]]) -> list[str]:
    return [event["content"]["body"] for event in events if event["type"] == "m.room.message"]


async def test_a_non_member_previews_a_world_readable_room(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable", visibility="public", name="Lobby")
    for body in ("one", "two", "three"):
        await _say(env, room_id, body)
    preview = await _initial_sync(env, env.carol, room_id, limit=2)
    assert preview["room_id"] == room_id
    assert "membership" not in preview
    assert preview["visibility"] == "public"
    assert (preview["account_data"], preview["presence"], preview["receipts"]) == ([], [], [])
    state = {(event["type"], event["state_key"]): event for event in preview["state"]}
    assert state[("m.room.name", "")]["content"] == {"name": "Lobby"}
    assert state[("m.room.history_visibility", "")]["content"] == {
        "history_visibility": "world_readable"
    }
    assert ("m.room.member", env.alice.user_id) in state
    assert ("m.room.member", env.carol.user_id) not in state
    messages = preview["messages"]
    assert _bodies(messages["chunk"]) == ["two", "three"]
    assert all(event["room_id"] == room_id for event in messages["chunk"])
    # Carol was never in the room: her membership at each event is none.
    assert {event["unsigned"]["membership"] for event in messages["chunk"]} == {"leave"}
    # Paging back from the snapshot's start goes on with what came before it.
    older = await env.client.ok(
        env.carol,
        "GET",
        f"/rooms/{q(room_id)}/messages",
        params={"dir": "b", "from": messages["start"], "limit": 50},
    )
    assert _bodies(older["chunk"]) == ["one"]
    # The room's first events came before its history was world-readable.
    types = [event["type"] for event in older["chunk"]]
    assert "m.room.name" in types
    assert "m.room.create" not in types


async def test_events_wakes_when_a_message_is_sent(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable")
    await _say(env, room_id, "before")
    end = (await _initial_sync(env, env.carol, room_id))["messages"]["end"]
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await _events(env, env.carol, room_id, **{"from": end, "timeout": 60_000}))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while env.hs.server.stream_notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            # A message in another room does not answer the poll.
            await _say(env, env.room_id, "elsewhere")
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert answers == []
            sent = await _say(env, room_id, "after")
    (answer,) = answers
    assert [event["event_id"] for event in answer["chunk"]] == [sent]
    assert _bodies(answer["chunk"]) == ["after"]
    assert answer["chunk"][0]["unsigned"]["membership"] == "leave"
    assert answer["start"] == end
    assert answer["end"] != end
    # Following on from its end: nothing new, at once with no wait.
    quiet = await _events(env, env.carol, room_id, **{"from": answer["end"], "timeout": 0})
    assert quiet == {"chunk": [], "start": answer["end"], "end": answer["end"]}


async def test_events_hands_over_what_came_while_not_polling(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable")
    end = (await _initial_sync(env, env.carol, room_id))["messages"]["end"]
    for body in ("a", "b", "c"):
        await _say(env, room_id, body)
    first = await _events(env, env.carol, room_id, **{"from": end, "limit": 2, "timeout": 0})
    assert _bodies(first["chunk"]) == ["a", "b"]
    rest = await _events(env, env.carol, room_id, **{"from": first["end"], "timeout": 0})
    assert _bodies(rest["chunk"]) == ["c"]


@pytest.mark.parametrize("visibility", ["shared", "joined", "invited"])
async def test_a_room_not_world_readable_is_refused_to_a_non_member(
    env: SharedRoom, visibility: str
) -> None:
    room_id = await _room(env, visibility)
    await _say(env, room_id, "members only")
    await env.client.refused(
        env.carol,
        "GET",
        f"/rooms/{q(room_id)}/initialSync",
        status=403,
        errcode="M_FORBIDDEN",
    )
    await env.client.refused(
        env.carol,
        "GET",
        "/events",
        params={"room_id": room_id, "timeout": 0},
        status=403,
        errcode="M_FORBIDDEN",
    )


async def test_a_room_that_stops_being_world_readable_is_refused(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable")
    end = (await _initial_sync(env, env.carol, room_id))["messages"]["end"]
    await _set_visibility(env, room_id, "shared")
    await env.client.refused(
        env.carol,
        "GET",
        "/events",
        params={"room_id": room_id, "from": end, "timeout": 0},
        status=403,
        errcode="M_FORBIDDEN",
    )


async def test_a_preview_holds_its_limit_past_an_ignored_users_messages(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable")
    await env.client.ok(env.bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await env.client.ok(
        env.carol,
        "PUT",
        f"/user/{q(env.carol.user_id)}/account_data/m.ignored_user_list",
        {"ignored_users": {env.bob.user_id: {}}},
    )
    await _say(env, room_id, "one")
    await _say(env, room_id, "two")
    for n in range(20):
        await _say(env, room_id, f"flood {n}", env.bob)
    await _say(env, room_id, "three")
    (everything,) = await env.client.pages(env.carol, room_id, None, limit=1000)
    visible = [event["event_id"] for event in everything]
    preview = await _initial_sync(env, env.carol, room_id, limit=3)
    chunk = preview["messages"]["chunk"]
    assert _bodies(chunk) == ["one", "two", "three"]
    assert [event["event_id"] for event in chunk] == visible[:3][::-1]
    pages = await env.client.pages(env.carol, room_id, preview["messages"]["start"], limit=4)
    assert [[event["event_id"] for event in page] for page in pages] == [
        visible[start : start + 4] for start in range(3, len(visible), 4)
    ]


async def test_events_from_before_the_room_became_world_readable_stay_hidden(
    env: SharedRoom,
) -> None:
    room_id = await _room(env, "shared")
    await _say(env, room_id, "secret")
    await _set_visibility(env, room_id, "world_readable")
    await _say(env, room_id, "public")
    preview = await _initial_sync(env, env.carol, room_id, limit=50)
    assert _bodies(preview["messages"]["chunk"]) == ["public"]
    # A member still sees both.
    joined = await _initial_sync(env, env.alice, room_id, limit=50)
    assert _bodies(joined["messages"]["chunk"]) == ["secret", "public"]
    # Streaming from the very start shows the non-member no more.
    everything = await _events(env, env.carol, room_id, **{"from": "t0", "limit": 50, "timeout": 0})
    assert _bodies(everything["chunk"]) == ["public"]


async def test_a_member_sees_their_membership_and_account_data(env: SharedRoom) -> None:
    room_id, bob = env.room_id, env.bob
    await _say(env, room_id, "hello bob")
    await env.client.ok(
        bob,
        "PUT",
        f"/user/{q(bob.user_id)}/rooms/{q(room_id)}/tags/u.work",
        {"order": 0.5},
    )
    await env.client.ok(
        bob,
        "PUT",
        f"/user/{q(bob.user_id)}/rooms/{q(room_id)}/account_data/org.example.note",
        {"text": "remember"},
    )
    preview = await _initial_sync(env, bob, room_id)
    assert preview["membership"] == "join"
    assert preview["visibility"] == "private"
    assert sorted(preview["account_data"], key=lambda event: event["type"]) == [
        {"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}},
        {"type": "org.example.note", "content": {"text": "remember"}},
    ]
    assert _bodies(preview["messages"]["chunk"]) == ["hello bob"]
    nothing = await _initial_sync(env, bob, room_id, limit=0)
    assert nothing["messages"]["chunk"] == []
    assert nothing["membership"] == "join"
    state = {(event["type"], event["state_key"]) for event in preview["state"]}
    assert ("m.room.member", bob.user_id) in state
    # Nobody else's account data of the room.
    assert (await _initial_sync(env, env.alice, room_id))["account_data"] == []
    end = preview["messages"]["end"]
    quiet = await _events(env, bob, room_id, **{"from": end, "timeout": 20})
    assert quiet == {"chunk": [], "start": end, "end": end}


async def test_a_member_who_left_sees_the_room_up_to_their_leave(env: SharedRoom) -> None:
    room_id, bob = env.room_id, env.bob
    await _say(env, room_id, "while bob was here")
    await env.client.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
    await _say(env, room_id, "after bob left")
    await env.client.ok(
        env.alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic/", {"topic": "new"}
    )
    preview = await _initial_sync(env, bob, room_id, limit=50)
    assert preview["membership"] == "leave"
    assert _bodies(preview["messages"]["chunk"]) == ["while bob was here"]
    assert preview["messages"]["chunk"][-1]["type"] == "m.room.member"
    state = {(event["type"], event["state_key"]): event for event in preview["state"]}
    assert ("m.room.topic", "") not in state
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "leave"
    # Nothing after the leave reaches them, and they are not kept waiting.
    end = preview["messages"]["end"]
    later = await _events(env, bob, room_id, **{"from": end, "timeout": 60_000})
    assert later == {"chunk": [], "start": end, "end": end}


async def test_bad_requests_get_clear_errors(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable")
    client, carol = env.client, env.carol
    for token in ("garbage", "t", "s1_x", "t12345678901234567890"):
        await client.refused(
            carol,
            "GET",
            "/events",
            params={"room_id": room_id, "from": token, "timeout": 0},
            status=400,
            errcode="M_INVALID_PARAM",
        )
    for name, value in (("timeout", "-1"), ("limit", "ten")):
        await client.refused(
            carol,
            "GET",
            "/events",
            params={"room_id": room_id, name: value},
            status=400,
            errcode="M_INVALID_PARAM",
        )
    await client.refused(
        carol, "GET", "/events", params={"timeout": 0}, status=400, errcode="M_MISSING_PARAM"
    )
    for path, params in (
        ("/rooms/not-a-room/initialSync", None),
        ("/events", {"room_id": "not-a-room", "timeout": 0}),
    ):
        await client.refused(
            carol, "GET", path, params=params, status=400, errcode="M_INVALID_PARAM"
        )
    unknown = "!nowhere:localhost"
    await client.refused(
        carol, "GET", f"/rooms/{q(unknown)}/initialSync", status=403, errcode="M_FORBIDDEN"
    )
    await client.refused(
        carol,
        "GET",
        "/events",
        params={"room_id": unknown, "timeout": 0},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await client.refused(
        None, "GET", f"/rooms/{q(room_id)}/initialSync", status=401, errcode="M_MISSING_TOKEN"
    )
    await client.refused(
        None,
        "GET",
        "/events",
        params={"room_id": room_id, "timeout": 0},
        status=401,
        errcode="M_MISSING_TOKEN",
    )


async def _set_presence(env: SharedRoom, user: TestUser, presence: str, status: str) -> None:
    await env.client.ok(
        user,
        "PUT",
        f"/presence/{q(user.user_id)}/status",
        {"presence": presence, "status_msg": status},
    )


async def _receipt(env: SharedRoom, user: TestUser, room_id: str, kind: str, event_id: str) -> None:
    await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/receipt/{kind}/{q(event_id)}", {})


def _presence_of(events: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """Each ``m.presence`` event's user, as ``sender`` and as the content's
    ``user_id`` say it (they must agree), with its presence and status."""
    shown: dict[str, tuple[str, str | None]] = {}
    for event in events:
        if event["type"] != "m.presence":
            continue
        assert event["content"]["user_id"] == event["sender"]
        shown[event["sender"]] = (event["content"]["presence"], event["content"].get("status_msg"))
    return shown


def _receipts_of(events: list[dict[str, Any]], room_id: str) -> dict[str, dict[str, set[str]]]:
    """Event ID -> receipt type -> the users with that receipt on it."""
    found: dict[str, dict[str, set[str]]] = {}
    for event in events:
        if event["type"] != "m.receipt":
            continue
        assert event["room_id"] == room_id
        for event_id, kinds in event["content"].items():
            for kind, users in kinds.items():
                for user_id, data in users.items():
                    assert isinstance(data["ts"], int)
                    found.setdefault(event_id, {}).setdefault(kind, set()).add(user_id)
    return found


async def test_a_snapshot_shows_the_members_presence_and_public_receipts(
    env: SharedRoom,
) -> None:
    alice, bob, carol = env.alice, env.bob, env.carol
    room_id = await _room(env, "world_readable")
    await env.client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    # Dave shares another room with Alice, Bob and Carol, not this one;
    # Erin was in it and left.
    dave = await env.hs.register_user("dave")
    erin = await env.hs.register_user("erin")
    for user in (dave, carol):
        await env.client.ok(user, "POST", f"/rooms/{q(env.room_id)}/join", {})
    await env.client.ok(erin, "POST", f"/rooms/{q(room_id)}/join", {})
    await env.client.ok(erin, "POST", f"/rooms/{q(room_id)}/leave", {})
    await _set_presence(env, alice, "online", "at work")
    await _set_presence(env, bob, "unavailable", "lunch")
    await _set_presence(env, dave, "online", "elsewhere")
    await _set_presence(env, erin, "online", "gone")
    first = await _say(env, room_id, "first")
    second = await _say(env, room_id, "second", bob)
    await _receipt(env, bob, room_id, "m.read", first)
    await _receipt(env, alice, room_id, "m.read.private", second)
    await _receipt(env, bob, room_id, "m.read.private", second)
    members = {
        alice.user_id: ("online", "at work"),
        bob.user_id: ("unavailable", "lunch"),
    }
    for viewer, own_private in ((alice, alice), (bob, bob), (carol, None)):
        preview = await _initial_sync(env, viewer, room_id)
        assert _presence_of(preview["presence"]) == members, viewer.user_id
        expected: dict[str, dict[str, set[str]]] = {first: {"m.read": {bob.user_id}}}
        if own_private is not None:
            expected[second] = {"m.read.private": {own_private.user_id}}
        assert _receipts_of(preview["receipts"], room_id) == expected, viewer.user_id
    # Who left shares the room no more: the room as they left it, alone.
    left = await _initial_sync(env, erin, room_id)
    assert left["membership"] == "leave"
    assert (left["presence"], left["receipts"]) == ([], [])


async def test_events_hands_over_new_receipts_and_presence_to_a_peeker(
    env: SharedRoom,
) -> None:
    alice, bob, carol = env.alice, env.bob, env.carol
    room_id = await _room(env, "world_readable")
    await env.client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    dave = await env.hs.register_user("dave")
    await env.client.ok(dave, "POST", f"/rooms/{q(env.room_id)}/join", {})
    message = await _say(env, room_id, "read me")
    end = (await _initial_sync(env, carol, room_id))["messages"]["end"]
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await _events(env, carol, room_id, **{"from": end, "timeout": 60_000}))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while env.hs.server.stream_notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            # Neither a private receipt nor the presence of a user outside
            # the room answers the poll.
            await _receipt(env, alice, room_id, "m.read.private", message)
            await _set_presence(env, dave, "online", "not here")
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert answers == []
            await _receipt(env, bob, room_id, "m.read", message)
    (answer,) = answers
    assert answer["start"] == end
    assert [event["type"] for event in answer["chunk"]] == ["m.receipt"]
    assert _receipts_of(answer["chunk"], room_id) == {message: {"m.read": {bob.user_id}}}
    # A member's change of presence comes next, once; Dave's never.
    await _set_presence(env, bob, "unavailable", "brb")
    changed = await _events(env, carol, room_id, **{"from": answer["end"], "timeout": 10_000})
    assert _presence_of(changed["chunk"]) == {bob.user_id: ("unavailable", "brb")}
    assert [event["type"] for event in changed["chunk"]] == ["m.presence"]
    quiet = await _events(env, carol, room_id, **{"from": changed["end"], "timeout": 0})
    assert quiet == {"chunk": [], "start": changed["end"], "end": changed["end"]}
    # Members following on from the same token: Alice sees her own private
    # receipt, Bob does not.
    for viewer, kinds in ((alice, {"m.read", "m.read.private"}), (bob, {"m.read"})):
        since = await _events(env, viewer, room_id, **{"from": end, "timeout": 0})
        assert set(_receipts_of(since["chunk"], room_id)[message]) == kinds, viewer.user_id
        assert bob.user_id in _presence_of(since["chunk"])


async def test_events_from_a_messages_token_takes_receipts_after_it(env: SharedRoom) -> None:
    """A ``/messages`` token has no receipts position: ``/events`` from it
    answers one that has, so a receipt between two requests is not lost."""
    room_id = await _room(env, "world_readable")
    await env.client.ok(env.bob, "POST", f"/rooms/{q(room_id)}/join", {})
    before = (await _initial_sync(env, env.carol, room_id))["messages"]["end"]
    message = await _say(env, room_id, "read me")
    # The same events position as a /messages token (a sync token's first).
    messages_token = "t" + before[1:].split("_")[0]
    latest = await _events(env, env.carol, room_id, **{"from": messages_token, "timeout": 0})
    assert [event["event_id"] for event in latest["chunk"]] == [message]
    quiet = await _events(env, env.carol, room_id, **{"from": latest["end"], "timeout": 0})
    assert quiet["chunk"] == []
    await _receipt(env, env.bob, room_id, "m.read", message)
    after = await _events(env, env.carol, room_id, **{"from": quiet["end"], "timeout": 0})
    assert _receipts_of(after["chunk"], room_id) == {message: {"m.read": {env.bob.user_id}}}
