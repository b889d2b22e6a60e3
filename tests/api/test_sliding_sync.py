"""Simplified sliding sync (MSC4186) over real HTTP against a started
homeserver: lists, ranges, required_state, incremental responses,
subscriptions, filters, invites, unknown positions and long-polls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _client import Client, SharedRoom, open_shared_room, q
from _sliding_sync import all_rooms, bodies, say, slide, slide_call

from ranvier.api.sliding_sync import SLIDING_SYNC_PATH
from ranvier.testing.homeserver import TestUser, open_test_homeserver


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom, name="Shared") as env:
        yield env


def _state(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(event["type"], event["state_key"]) for event in room["required_state"]}


async def test_versions_advertise_simplified_sliding_sync(env: SharedRoom) -> None:
    response = await env.client.http.get("/_matrix/client/versions")
    assert response.json()["unstable_features"]["org.matrix.simplified_msc3575"] is True


async def test_a_list_is_ordered_by_recency_cut_by_ranges_and_counted(env: SharedRoom) -> None:
    http = env.client.http
    second = await env.client.create_room(env.alice, name="Second")
    third = await env.client.create_room(env.alice, name="Third")
    await say(env, env.alice, env.room_id, "newest of all")
    body = {"lists": {"all": all_rooms(ranges=[[0, 1]], required_state=[["m.room.name", ""]])}}
    answer = await slide(http, env.alice, body)
    assert answer["lists"]["all"]["count"] == 3
    assert set(answer["rooms"]) == {env.room_id, third}
    room = answer["rooms"][env.room_id]
    assert room["initial"] is True
    assert room["membership"] == "join"
    assert room["lists"] == ["all"]
    assert room["name"] == "Shared"
    assert _state(room) == {("m.room.name", "")}
    assert bodies(room) == ["newest of all"]
    assert room["limited"] is True
    assert room["prev_batch"].startswith("t")
    assert (room["joined_count"], room["invited_count"]) == (2, 0)
    assert (room["notification_count"], room["highlight_count"]) == (0, 0)
    assert room["bump_stamp"] > answer["rooms"][third]["bump_stamp"]
    # The second range takes the oldest room; a range past the end is cut.
    body = {"lists": {"all": all_rooms(ranges=[[2, 10]])}}
    later = await slide(http, env.alice, body)
    assert set(later["rooms"]) == {second}
    assert later["lists"]["all"]["count"] == 3


async def test_required_state_wildcards_me_and_lazy_members(env: SharedRoom) -> None:
    http, room_id = env.client.http, env.room_id
    await env.client.ok(env.carol, "POST", f"/rooms/{q(room_id)}/join", {})
    await say(env, env.bob, room_id, "from bob")

    async def state_for(required: list[list[str]], limit: int = 1) -> set[tuple[str, str]]:
        answer = await slide(
            http,
            env.alice,
            {"lists": {"l": all_rooms(timeline_limit=limit, required_state=required)}},
        )
        return _state(answer["rooms"][room_id])

    everything = await state_for([["*", "*"]])
    assert {
        ("m.room.create", ""),
        ("m.room.name", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", env.alice.user_id),
        ("m.room.member", env.bob.user_id),
        ("m.room.member", env.carol.user_id),
    } <= everything
    members = {("m.room.member", user.user_id) for user in (env.alice, env.bob, env.carol)}
    assert await state_for([["m.room.member", "*"]]) == members
    assert await state_for([["*", env.carol.user_id]]) == {("m.room.member", env.carol.user_id)}
    assert await state_for([["m.room.member", "$ME"]]) == {("m.room.member", env.alice.user_id)}
    # $LAZY: the members who sent the timeline's events, and no one else.
    lazy = await state_for([["m.room.create", ""], ["m.room.member", "$LAZY"]])
    assert lazy == {("m.room.create", ""), ("m.room.member", env.bob.user_id)}
    lazy = await state_for([["m.room.member", "$LAZY"]], limit=0)
    assert lazy == set()


async def test_a_new_message_comes_alone_and_a_room_entering_the_range_comes_whole(
    env: SharedRoom,
) -> None:
    http = env.client.http
    oldest = await env.client.create_room(env.alice, name="Oldest")
    await say(env, env.alice, oldest, "old news")
    middle = await env.client.create_room(env.alice, name="Middle")
    await say(env, env.alice, env.room_id, "top")
    body = {"lists": {"all": all_rooms(ranges=[[0, 1]], timeline_limit=3)}}
    first = await slide(http, env.alice, body)
    assert set(first["rooms"]) == {env.room_id, middle}
    quiet = await slide(http, env.alice, body, pos=first["pos"])
    assert quiet["rooms"] == {}
    assert quiet["pos"] == first["pos"]
    # A message in the second room: it comes, with that message alone.
    await say(env, env.bob, env.room_id, "hello again")
    await say(env, env.alice, middle, "middle moves up")
    moved = await slide(http, env.alice, body, pos=first["pos"])
    assert set(moved["rooms"]) == {middle, env.room_id}
    room = moved["rooms"][middle]
    assert "initial" not in room
    assert bodies(room) == ["middle moves up"]
    assert room["num_live"] == 1
    assert room["limited"] is False
    assert room["bump_stamp"] > moved["rooms"][env.room_id]["bump_stamp"]
    assert "name" not in room
    # A message in the oldest room brings it into the range, whole.
    await say(env, env.alice, oldest, "oldest is back")
    entering = await slide(http, env.alice, body, pos=moved["pos"])
    assert set(entering["rooms"]) == {oldest}
    room = entering["rooms"][oldest]
    assert room["initial"] is True
    assert room["name"] == "Oldest"
    assert bodies(room) == ["old news", "oldest is back"]
    assert room["num_live"] == 1
    after = await slide(http, env.alice, body, pos=entering["pos"])
    assert after["rooms"] == {}


async def test_a_retried_position_answers_again(env: SharedRoom) -> None:
    http = env.client.http
    body = {"lists": {"all": all_rooms()}}
    first = await slide(http, env.alice, body)
    await say(env, env.bob, env.room_id, "one")
    lost = await slide(http, env.alice, body, pos=first["pos"])
    assert bodies(lost["rooms"][env.room_id]) == ["one"]
    # The client never got that answer and asks again from first.
    again = await slide(http, env.alice, body, pos=first["pos"])
    assert bodies(again["rooms"][env.room_id]) == ["one"]
    await say(env, env.bob, env.room_id, "two")
    later = await slide(http, env.alice, body, pos=again["pos"])
    assert bodies(later["rooms"][env.room_id]) == ["two"]
    # The unreceived answer's position is gone.
    await _refused_pos(http, env.alice, body, lost["pos"])


async def _refused_pos(http: Any, user: TestUser, body: dict[str, Any], pos: str) -> None:
    status, answer = await slide_call(http, user, body, pos=pos)
    assert (status, answer["errcode"]) == (400, "M_UNKNOWN_POS"), answer
    assert answer["error"]


async def test_unknown_positions_are_refused(env: SharedRoom) -> None:
    http = env.client.http
    body = {"lists": {"all": all_rooms()}, "conn_id": "main"}
    first = await slide(http, env.alice, body)
    await _refused_pos(http, env.alice, body, "not a position")
    await _refused_pos(http, env.alice, body, "999999")
    # Another connection's, or another user's, position is not this one's.
    await _refused_pos(http, env.alice, {**body, "conn_id": "other"}, first["pos"])
    await _refused_pos(http, env.bob, body, first["pos"])
    # Starting the connection again drops its old positions.
    await slide(http, env.alice, body)
    await _refused_pos(http, env.alice, body, first["pos"])


async def test_bad_requests_are_refused(env: SharedRoom) -> None:
    http = env.client.http
    bad: dict[str, Any]
    for bad in (
        {"lists": {"l": {"timeline_limit": "ten", "required_state": []}}},
        {"lists": {"l": {"timeline_limit": 1, "required_state": [], "ranges": [[5, 2]]}}},
        {"lists": {"l": {"timeline_limit": -1, "required_state": []}}},
        {"room_subscriptions": []},
        {"lists": {"l": {"timeline_limit": 1, "required_state": [["m.room.name"]]}}},
        {"lists": {f"l{n}": all_rooms() for n in range(101)}},
        {"conn_id": 7},
    ):
        status, answer = await slide_call(http, env.alice, bad)
        assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), bad
    status, answer = await slide_call(http, env.alice, {}, timeout_ms=-1)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    since = {"extensions": {"to_device": {"enabled": True, "since": "yesterday"}}}
    status, answer = await slide_call(http, env.alice, since)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    response = await http.post(
        SLIDING_SYNC_PATH,
        json=["not", "an", "object"],
        headers={"Authorization": f"Bearer {env.alice.access_token}"},
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_NOT_JSON")
    # Nothing was written: no connection was started by a refused request.
    status, answer = await slide_call(http, env.alice, {}, pos="1")
    assert (status, answer["errcode"]) == (400, "M_UNKNOWN_POS")


async def test_room_subscriptions(env: SharedRoom) -> None:
    http = env.client.http
    quiet = await env.client.create_room(env.alice, name="Quiet")
    await say(env, env.alice, env.room_id, "louder")
    private = await env.client.create_room(env.carol, name="Carol's")
    body = {
        "lists": {"top": all_rooms(ranges=[[0, 0]], timeline_limit=1)},
        "room_subscriptions": {
            quiet: {"timeline_limit": 10, "required_state": [["m.room.name", ""]]},
            private: {"timeline_limit": 10, "required_state": [["*", "*"]]},
            "!nowhere:localhost": {"timeline_limit": 1, "required_state": []},
        },
    }
    answer = await slide(http, env.alice, body)
    assert set(answer["rooms"]) == {env.room_id, quiet}
    room = answer["rooms"][quiet]
    assert "lists" not in room
    assert room["name"] == "Quiet"
    assert _state(room) == {("m.room.name", "")}
    assert room["timeline"][0]["type"] == "m.room.create"
    assert room["limited"] is False


async def test_filters(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    direct = await client.create_room(alice, invite=[bob.user_id], is_direct=True)
    await client.ok(bob, "POST", f"/rooms/{q(direct)}/join", {})
    await client.ok(
        alice,
        "PUT",
        f"/user/{q(alice.user_id)}/account_data/m.direct",
        {bob.user_id: [direct]},
    )
    encrypted = await client.create_room(
        alice,
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    space = await client.create_room(alice, creation_content={"type": "m.space"})
    await client.ok(
        alice,
        "PUT",
        f"/rooms/{q(space)}/state/m.space.child/{q(env.room_id)}",
        {"via": ["localhost"]},
    )
    invited = await client.create_room(bob)
    await client.ok(bob, "POST", f"/rooms/{q(invited)}/invite", {"user_id": alice.user_id})
    tagged: list[tuple[str, dict[str, Any]]] = [
        (encrypted, {"m.favourite": {}}),
        (direct, {"u.work": {}}),
    ]
    for room_id, tags in tagged:
        await client.ok(
            alice,
            "PUT",
            f"/user/{q(alice.user_id)}/rooms/{q(room_id)}/account_data/m.tag",
            {"tags": tags},
        )
    lists = {
        "dm": all_rooms(filters={"is_dm": True}),
        "not_dm": all_rooms(filters={"is_dm": False}),
        "encrypted": all_rooms(filters={"is_encrypted": True}),
        "invites": all_rooms(filters={"is_invite": True}),
        "joined": all_rooms(filters={"is_invite": False}),
        "spaces": all_rooms(filters={"room_types": ["m.space"]}),
        "no_spaces": all_rooms(filters={"not_room_types": ["m.space"]}),
        "untyped": all_rooms(filters={"room_types": [None]}),
        "in_space": all_rooms(filters={"spaces": [space]}),
        "favourites": all_rooms(filters={"tags": ["m.favourite", "u.none"]}),
        "not_work": all_rooms(filters={"not_tags": ["u.work"]}),
    }
    answer = await slide(http, alice, {"lists": lists})
    counts = {name: found["count"] for name, found in answer["lists"].items()}
    assert counts == {
        "dm": 1,
        "not_dm": 4,
        "encrypted": 1,
        "invites": 1,
        "joined": 4,
        "spaces": 1,
        "no_spaces": 4,
        "untyped": 4,
        "in_space": 1,
        "favourites": 1,
        "not_work": 4,
    }
    assert answer["rooms"][direct]["lists"] == ["dm", "joined", "no_spaces", "untyped"]
    assert answer["rooms"][encrypted]["lists"][:2] == ["encrypted", "favourites"]
    assert answer["rooms"][direct]["is_dm"] is True
    assert answer["rooms"][env.room_id]["lists"] == [
        "in_space",
        "joined",
        "no_spaces",
        "not_dm",
        "not_work",
        "untyped",
    ]
    assert answer["rooms"][encrypted]["lists"][0] == "encrypted"
    assert answer["rooms"][space]["lists"] == ["joined", "not_dm", "not_work", "spaces"]
    assert answer["rooms"][invited]["lists"][0] == "invites"


async def test_invites_come_with_their_stripped_state(env: SharedRoom) -> None:
    http, client, alice, bob, carol = env.client.http, env.client, env.alice, env.bob, env.carol
    room_id = await client.create_room(alice, name="Come in")
    body = {"lists": {"all": all_rooms(required_state=[["*", "*"]])}}
    first = await slide(http, bob, body)
    assert room_id not in first["rooms"]
    await client.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    answer = await slide(http, bob, body, pos=first["pos"])
    room = answer["rooms"][room_id]
    assert room["membership"] == "invite"
    assert room["initial"] is True
    assert "timeline" not in room
    stripped = {(event["type"], event["state_key"]) for event in room["invite_state"]}
    assert {("m.room.name", ""), ("m.room.create", ""), ("m.room.member", bob.user_id)} <= (
        stripped
    )
    assert "content" in room["invite_state"][0]
    # Joining sends the room whole.
    await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    joined = await slide(http, bob, body, pos=answer["pos"])
    room = joined["rooms"][room_id]
    assert (room["membership"], room["initial"]) == ("join", True)
    assert ("m.room.power_levels", "") in _state(room)
    # An invite from someone Carol ignores is never listed.
    await client.ok(
        carol,
        "PUT",
        f"/user/{q(carol.user_id)}/account_data/m.ignored_user_list",
        {"ignored_users": {alice.user_id: {}}},
    )
    await client.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
    ignoring = await slide(http, carol, body)
    assert room_id not in ignoring["rooms"]
    assert ignoring["lists"]["all"]["count"] == 0


async def test_a_left_room_comes_to_the_leave_then_no_more(env: SharedRoom) -> None:
    http, client = env.client.http, env.client
    body = {"lists": {"all": all_rooms()}}
    first = await slide(http, env.bob, body)
    assert env.room_id in first["rooms"]
    await say(env, env.alice, env.room_id, "before the leave")
    await client.ok(env.bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    await say(env, env.alice, env.room_id, "after the leave")
    answer = await slide(http, env.bob, body, pos=first["pos"])
    room = answer["rooms"][env.room_id]
    assert room["membership"] == "leave"
    assert bodies(room) == ["before the leave"]
    assert room["timeline"][-1]["type"] == "m.room.member"
    # A fresh connection does not list a room left of the user's own will.
    fresh = await slide(http, env.bob, {**body, "conn_id": "fresh"})
    assert fresh["rooms"] == {}
    assert fresh["lists"]["all"]["count"] == 0


async def test_timeline_events_carry_the_readers_membership_at_them(env: SharedRoom) -> None:
    http, client = env.client.http, env.client
    await say(env, env.alice, env.room_id, "before carol")
    await client.ok(
        env.alice, "POST", f"/rooms/{q(env.room_id)}/invite", {"user_id": env.carol.user_id}
    )
    await say(env, env.alice, env.room_id, "while carol is invited")
    await client.ok(env.carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    await say(env, env.alice, env.room_id, "after carol joined")
    answer = await slide(http, env.carol, {"lists": {"all": all_rooms(timeline_limit=10)}})
    timeline = answer["rooms"][env.room_id]["timeline"]
    seen = [
        (event["content"].get("body", event["type"]), event["unsigned"]["membership"])
        for event in timeline
        if event["type"] == "m.room.message" or event.get("state_key") == env.carol.user_id
    ]
    # The room is shared history: Carol sees what came before her too.
    assert seen == [
        ("before carol", "leave"),
        ("m.room.member", "invite"),
        ("while carol is invited", "invite"),
        ("m.room.member", "join"),
        ("after carol joined", "join"),
    ]


async def test_a_kick_is_listed(env: SharedRoom) -> None:
    http, client = env.client.http, env.client
    await client.ok(
        env.alice, "POST", f"/rooms/{q(env.room_id)}/kick", {"user_id": env.bob.user_id}
    )
    answer = await slide(http, env.bob, {"lists": {"all": all_rooms()}})
    assert answer["rooms"][env.room_id]["membership"] == "leave"


async def test_ignored_users_events_are_kept_out(env: SharedRoom) -> None:
    http, client = env.client.http, env.client
    await client.ok(
        env.alice,
        "PUT",
        f"/user/{q(env.alice.user_id)}/account_data/m.ignored_user_list",
        {"ignored_users": {env.bob.user_id: {}}},
    )
    await say(env, env.bob, env.room_id, "unheard")
    await say(env, env.alice, env.room_id, "heard")
    answer = await slide(http, env.alice, {"lists": {"all": all_rooms(timeline_limit=2)}})
    assert bodies(answer["rooms"][env.room_id]) == ["heard"]


async def test_a_timeline_holds_its_limit_past_an_ignored_users_flood(env: SharedRoom) -> None:
    http, client = env.client.http, env.client
    await client.ok(
        env.alice,
        "PUT",
        f"/user/{q(env.alice.user_id)}/account_data/m.ignored_user_list",
        {"ignored_users": {env.bob.user_id: {}}},
    )
    await say(env, env.alice, env.room_id, *(f"a{n}" for n in range(5)))
    await say(env, env.bob, env.room_id, *(f"flood {n}" for n in range(40)))
    await say(env, env.alice, env.room_id, "a5")
    (everything,) = await client.pages(env.alice, env.room_id, None, limit=1000)
    visible = [event["event_id"] for event in everything]
    answer = await slide(http, env.alice, {"lists": {"all": all_rooms(timeline_limit=5)}})
    room = answer["rooms"][env.room_id]
    assert bodies(room) == ["a1", "a2", "a3", "a4", "a5"]
    assert [event["event_id"] for event in room["timeline"]] == visible[:5][::-1]
    assert room["limited"] is True
    # Paging back from prev_batch: the rest, none skipped or repeated.
    pages = await client.pages(env.alice, env.room_id, room["prev_batch"], limit=2)
    assert [[event["event_id"] for event in page] for page in pages] == [
        visible[start : start + 2] for start in range(5, len(visible), 2)
    ]


async def test_a_long_poll_is_woken_by_a_message(env: SharedRoom) -> None:
    http = env.client.http
    body = {"lists": {"all": all_rooms()}}
    first = await slide(http, env.alice, body)
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await slide(http, env.alice, body, pos=first["pos"], timeout_ms=60_000))

    notifier = env.hs.server.stream_notifier
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            # A room Alice is not in does not wake her.
            elsewhere = await env.client.create_room(env.carol)
            await say(env, env.carol, elsewhere, "not for alice")
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert answers == []
            await say(env, env.bob, env.room_id, "wake up")
    (answer,) = answers
    assert bodies(answer["rooms"][env.room_id]) == ["wake up"]
    assert answer["pos"] != first["pos"]


async def test_a_long_poll_times_out_empty(env: SharedRoom) -> None:
    http = env.client.http
    body = {"lists": {"all": all_rooms()}}
    first = await slide(http, env.alice, body)
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await slide(http, env.alice, body, pos=first["pos"], timeout_ms=300))

    notifier = env.hs.server.stream_notifier
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            # It waits on the notifier, then gives up at its timeout.
            while notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    (answer,) = answers
    assert answer["rooms"] == {}
    assert answer["pos"] == first["pos"]
    assert answer["lists"]["all"]["count"] == 1


async def test_a_connection_goes_on_after_a_restart(tmp_path: Path) -> None:
    body = {"lists": {"all": all_rooms()}, "conn_id": "main"}
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        room_id = await Client(hs, http).create_room(alice, name="Kept")
        first = await slide(http, alice, body)
        assert first["rooms"][room_id]["initial"] is True
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        quiet = await slide(http, alice, body, pos=first["pos"])
        assert quiet["rooms"] == {}
        await hs.server.send_event(
            alice.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": "back"}
        )
        later = await slide(http, alice, body, pos=first["pos"])
        room = later["rooms"][room_id]
        assert "initial" not in room
        assert bodies(room) == ["back"]


async def test_heroes_of_an_unnamed_room_and_a_new_name(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    await client.ok(bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob"})
    unnamed = await client.create_room(alice, invite=[bob.user_id], is_direct=True)
    await client.ok(bob, "POST", f"/rooms/{q(unnamed)}/join", {})
    body = {"lists": {"all": all_rooms(required_state=[["m.room.name", ""]])}}
    first = await slide(http, alice, body)
    room = first["rooms"][unnamed]
    assert "name" not in room
    assert room["heroes"] == [{"user_id": bob.user_id, "displayname": "Bob"}]
    assert "heroes" not in first["rooms"][env.room_id]
    await client.ok(alice, "PUT", f"/rooms/{q(unnamed)}/state/m.room.name/", {"name": "Named"})
    renamed = await slide(http, alice, body, pos=first["pos"])
    room = renamed["rooms"][unnamed]
    assert "initial" not in room
    assert room["name"] == "Named"
    assert _state(room) == {("m.room.name", "")}
    assert room["timeline"][-1]["type"] == "m.room.name"


async def test_timeline_events_carry_their_bundled_aggregations(env: SharedRoom) -> None:
    server, alice = env.hs.server, env.alice
    original = await server.send_event(
        alice.user_id, env.room_id, "m.room.message", {"msgtype": "m.text", "body": "tpyo"}
    )
    await server.send_event(
        alice.user_id,
        env.room_id,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* typo",
            "m.new_content": {"msgtype": "m.text", "body": "typo"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    answer = await slide(env.client.http, alice, {"lists": {"all": all_rooms(timeline_limit=2)}})
    first, edit = answer["rooms"][env.room_id]["timeline"]
    assert first["event_id"] == original
    assert first["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit["event_id"]


async def test_a_new_display_name_is_no_new_room(env: SharedRoom) -> None:
    http, client, alice = env.client.http, env.client, env.alice
    body = {"lists": {"all": all_rooms(required_state=[["m.room.member", "$ME"]])}}
    first = await slide(http, alice, body)
    await client.ok(
        alice, "PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": "Alice"}
    )
    answer = await slide(http, alice, body, pos=first["pos"])
    room = answer["rooms"][env.room_id]
    assert "initial" not in room
    (member,) = room["required_state"]
    assert member["content"]["displayname"] == "Alice"
    # The same event, which the timeline sends with Alice's membership at it.
    (in_timeline,) = room["timeline"]
    assert in_timeline["unsigned"]["membership"] == "join"

    def without_unsigned(event: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in event.items() if key != "unsigned"}

    assert without_unsigned(in_timeline) == without_unsigned(member)


async def test_a_room_made_a_dm_says_so(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    body = {"lists": {"all": all_rooms()}}
    first = await slide(http, alice, body)
    assert "is_dm" not in first["rooms"][env.room_id]
    direct = f"/user/{q(alice.user_id)}/account_data/m.direct"
    await client.ok(alice, "PUT", direct, {bob.user_id: [env.room_id]})
    made = await slide(http, alice, body, pos=first["pos"])
    room = made["rooms"][env.room_id]
    assert room["is_dm"] is True
    assert "initial" not in room
    assert "timeline" not in room
    await client.ok(alice, "PUT", direct, {})
    unmade = await slide(http, alice, body, pos=made["pos"])
    assert unmade["rooms"][env.room_id]["is_dm"] is False
    quiet = await slide(http, alice, body, pos=unmade["pos"])
    assert quiet["rooms"] == {}


async def test_a_declined_invite_shows_no_more_than_the_invite_did(env: SharedRoom) -> None:
    http, client, alice, bob = env.client.http, env.client, env.alice, env.bob
    secret = await client.create_room(alice, name="Not for Bob yet")
    await say(env, alice, secret, "private history")
    await client.ok(alice, "POST", f"/rooms/{q(secret)}/invite", {"user_id": bob.user_id})
    body = {"lists": {"all": all_rooms(required_state=[["*", "*"]])}}
    first = await slide(http, bob, body)
    assert first["rooms"][secret]["membership"] == "invite"
    await client.ok(bob, "POST", f"/rooms/{q(secret)}/leave", {})
    declined = await slide(http, bob, body, pos=first["pos"])
    room = declined["rooms"][secret]
    assert room["membership"] == "leave"
    assert "timeline" not in room
    assert "required_state" not in room
    kinds = {(event["type"], event["state_key"]) for event in room["invite_state"]}
    assert ("m.room.member", bob.user_id) in kinds
    assert ("m.room.power_levels", "") not in kinds


async def test_a_ban_is_listed_only_for_a_room_joined(env: SharedRoom) -> None:
    http, client, alice = env.client.http, env.client, env.alice
    for user in (env.bob, env.carol):
        await client.ok(alice, "POST", f"/rooms/{q(env.room_id)}/ban", {"user_id": user.user_id})
    body = {"lists": {"all": all_rooms()}}
    banned = await slide(http, env.bob, body)
    assert banned["rooms"][env.room_id]["membership"] == "ban"
    assert "timeline" in banned["rooms"][env.room_id]
    never_joined = await slide(http, env.carol, body)
    assert never_joined["lists"]["all"]["count"] == 0
    assert never_joined["rooms"] == {}


async def test_a_larger_config_sends_a_room_again_and_a_smaller_one_does_not(
    env: SharedRoom,
) -> None:
    http = env.client.http
    await say(env, env.alice, env.room_id, "one", "two", "three")
    listed = {"lists": {"all": all_rooms(timeline_limit=1)}}
    opened = {
        **listed,
        "room_subscriptions": {
            env.room_id: {"timeline_limit": 3, "required_state": [["m.room.name", ""]]}
        },
    }
    first = await slide(http, env.alice, listed)
    assert bodies(first["rooms"][env.room_id]) == ["three"]
    larger = await slide(http, env.alice, opened, pos=first["pos"])
    room = larger["rooms"][env.room_id]
    # More required_state: the room comes whole again (a longer timeline
    # alone expands it: test_sliding_sync_expanded.py).
    assert room["initial"] is True
    assert "expanded_timeline" not in room
    assert _state(room) == {("m.room.name", "")}
    assert bodies(room) == ["one", "two", "three"]
    smaller = await slide(http, env.alice, listed, pos=larger["pos"])
    assert smaller["rooms"] == {}
    await say(env, env.bob, env.room_id, "four")
    later = await slide(http, env.alice, listed, pos=larger["pos"])
    room = later["rooms"][env.room_id]
    assert "initial" not in room
    assert bodies(room) == ["four"]


async def test_a_knock_comes_with_its_stripped_state(env: SharedRoom) -> None:
    http, client, alice, carol = env.client.http, env.client, env.alice, env.carol
    door = await client.create_room(
        alice,
        name="Door",
        initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ],
    )
    await client.ok(carol, "POST", f"/knock/{q(door)}", {"reason": "let me in"})
    answer = await slide(http, carol, {"lists": {"all": all_rooms(required_state=[["*", "*"]])}})
    room = answer["rooms"][door]
    assert room["membership"] == "knock"
    assert "timeline" not in room
    kinds = {(event["type"], event["state_key"]) for event in room["invite_state"]}
    assert {("m.room.name", ""), ("m.room.join_rules", ""), ("m.room.member", carol.user_id)} <= (
        kinds
    )
    # Events under a room do not repeat its ID.
    joined = (await slide(http, alice, {"lists": {"all": all_rooms()}}))["rooms"][door]
    assert joined["timeline"]
    assert all("room_id" not in event for event in joined["timeline"])


async def test_set_presence_from_the_query_or_the_body(env: SharedRoom) -> None:
    http, client, alice = env.client.http, env.client, env.alice
    status_path = f"/presence/{q(alice.user_id)}/status"
    await slide(http, alice, {"set_presence": "unavailable"})
    assert (await client.ok(alice, "GET", status_path))["presence"] == "unavailable"
    await slide(http, alice, {"conn_id": "again"})
    assert (await client.ok(alice, "GET", status_path))["presence"] == "online"
    status, answer = await slide_call(http, alice, {"set_presence": "asleep"})
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")


async def test_lazy_members_already_sent_are_not_sent_again(env: SharedRoom) -> None:
    http, bob = env.client.http, env.bob
    body = {
        "lists": {"all": all_rooms(timeline_limit=2, required_state=[["m.room.member", "$LAZY"]])}
    }
    await say(env, bob, env.room_id, "first")
    first = await slide(http, env.alice, body)
    assert _state(first["rooms"][env.room_id]) == {("m.room.member", bob.user_id)}
    await say(env, bob, env.room_id, "second")
    second = await slide(http, env.alice, body, pos=first["pos"])
    room = second["rooms"][env.room_id]
    assert bodies(room) == ["second"]
    assert room["required_state"] == []
    # A retry from the first position: the first answer brought it already.
    retried = await slide(http, env.alice, body, pos=first["pos"])
    assert retried["rooms"][env.room_id]["required_state"] == []
    # A gap: the client drops what it held, and is sent it again.
    await say(env, bob, env.room_id, "3", "4", "5")
    gap = await slide(http, env.alice, body, pos=retried["pos"])
    room = gap["rooms"][env.room_id]
    assert room["limited"] is True
    assert _state(room) == {("m.room.member", bob.user_id)}
    # Another connection holds nothing.
    other = await slide(http, env.alice, {**body, "conn_id": "other"})
    assert _state(other["rooms"][env.room_id]) == {("m.room.member", bob.user_id)}
