"""/sync across joins, leaves, rejected invites and re-joins: which section a
room lands in, and what its timeline and state hold there, over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

_INCLUDE_LEAVE = json.dumps({"room": {"include_leave": True}})
_MADE_UP = "org.example.made_up"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


_TXN = iter(range(1_000_000))


async def _say(env: SharedRoom, user: Any, room_id: str, body: str) -> str:
    answer = await env.client.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t{next(_TXN)}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _put_state(env: SharedRoom, user: Any, room_id: str, kind: str, content: Any) -> None:
    await env.client.ok(user, "PUT", f"/rooms/{q(room_id)}/state/{kind}", content)


async def _join(env: SharedRoom, user: Any, room_id: str) -> None:
    await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/join", {})


async def _leave(env: SharedRoom, user: Any, room_id: str) -> None:
    await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/leave", {})


async def _filter(env: SharedRoom, user: Any, definition: Any) -> str:
    answer = await env.client.ok(user, "POST", f"/user/{q(user.user_id)}/filter", definition)
    filter_id: str = answer["filter_id"]
    return filter_id


async def test_join_leave_join_since_before_shows_the_room_joined_not_left(
    env: SharedRoom,
) -> None:
    room_id = await env.client.create_room(env.bob, preset="public_chat")
    before = (await env.sync(env.carol, timeout=0))["next_batch"]
    await _join(env, env.carol, room_id)
    await _leave(env, env.carol, room_id)
    await _join(env, env.carol, room_id)
    answer = await env.sync(env.carol, since=before, timeout=0)
    assert room_id in answer["rooms"]["join"]
    assert room_id not in answer["rooms"].get("leave", {})


async def test_a_rejected_invite_is_left_in_full_state_sync_until_the_user_joins(
    env: SharedRoom,
) -> None:
    since = (await env.sync(env.carol, timeout=0))["next_batch"]
    await env.client.ok(
        env.alice, "POST", f"/rooms/{q(env.room_id)}/invite", {"user_id": env.carol.user_id}
    )
    invited = await env.sync(env.carol, since=since, timeout=0)
    assert env.room_id in invited["rooms"]["invite"]
    await _leave(env, env.carol, env.room_id)
    rejected = await env.sync(env.carol, since=invited["next_batch"], full_state="true", timeout=0)
    assert env.room_id in rejected["rooms"]["leave"]
    await _join(env, env.carol, env.room_id)
    joined = await env.sync(env.carol, since=rejected["next_batch"], full_state="true", timeout=0)
    assert env.room_id not in joined["rooms"].get("leave", {})
    assert env.room_id in joined["rooms"]["join"]


async def test_a_created_room_syncs_with_timeline_and_state_and_only_once_incrementally(
    env: SharedRoom,
) -> None:
    filter_id = await _filter(env, env.carol, {"room": {"timeline": {"limit": 10}}})
    since = (await env.sync(env.carol, filter=filter_id))["next_batch"]
    room_id = await env.client.create_room(env.carol)
    fresh = await env.sync(env.carol, filter=filter_id, since=since)
    room = fresh["rooms"]["join"][room_id]
    assert isinstance(room["timeline"]["events"], list)
    assert isinstance(room["timeline"]["limited"], bool)
    assert isinstance(room["state"]["events"], list)
    again = await env.sync(env.carol, filter=filter_id, since=fresh["next_batch"])
    assert room_id not in again["rooms"]["join"]
    full = await env.sync(env.carol, filter=filter_id, full_state="true", since=again["next_batch"])
    assert room_id in full["rooms"]["join"]
    initial = await env.sync(env.carol, filter=filter_id)
    assert room_id in initial["rooms"]["join"]


async def test_a_newly_joined_rooms_filtered_timeline_is_limited_unless_complete(
    env: SharedRoom,
) -> None:
    filter_id = await _filter(
        env,
        env.carol,
        {"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}, "state": {"types": []}}},
    )
    for n in range(4):
        await _say(env, env.alice, env.room_id, f"first {n}")
    since = (await env.sync(env.carol, filter=filter_id))["next_batch"]
    for n in range(4):
        await _say(env, env.alice, env.room_id, f"second {n}")
    await _join(env, env.carol, env.room_id)
    answer = await env.sync(env.carol, filter=filter_id, since=since)
    timeline = answer["rooms"]["join"][env.room_id]["timeline"]
    assert {event["type"] for event in timeline["events"]} == {"m.room.message"}
    assert len(timeline["events"]) == 8
    # The room's state events came before these messages: they are not all.
    assert timeline["limited"] is True
    small = await _filter(
        env, env.bob, {"room": {"timeline": {"limit": 3, "types": ["m.room.message"]}}}
    )
    bob_view = await env.sync(env.bob, filter=small)
    bob_timeline = bob_view["rooms"]["join"][env.room_id]["timeline"]
    assert len(bob_timeline["events"]) == 3
    assert bob_timeline["limited"] is True


async def test_joining_brings_presence_of_the_new_room_mates_once(env: SharedRoom) -> None:
    await env.client.ok(
        env.alice, "PUT", f"/presence/{q(env.alice.user_id)}/status", {"presence": "online"}
    )
    since = (await env.sync(env.carol))["next_batch"]
    alice_since = (await env.sync(env.alice))["next_batch"]
    await _join(env, env.carol, env.room_id)
    for user, token, other in ((env.carol, since, env.alice), (env.alice, alice_since, env.carol)):
        joined = await env.sync(user, since=token)
        senders = {event["sender"] for event in joined["presence"]["events"]}
        assert other.user_id in senders
        again = await env.sync(user, since=joined["next_batch"])
        assert again["presence"]["events"] == []
        # The join itself, for the newcomer and those already there.
        room = joined["rooms"]["join"][env.room_id]
        joins = [
            event
            for event in room["timeline"]["events"] + room["state"]["events"]
            if event["type"] == "m.room.member" and event["state_key"] == env.carol.user_id
        ]
        assert [event["content"]["membership"] for event in joins] == ["join"]


async def test_presence_of_members_of_different_rooms_reaches_a_shared_member(
    env: SharedRoom,
) -> None:
    with_bob = await env.client.create_room(env.alice)
    with_carol = await env.client.create_room(env.alice)
    for user, room_id in ((env.bob, with_bob), (env.carol, with_carol)):
        await env.client.ok(
            env.alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": user.user_id}
        )
        await _join(env, user, room_id)
    since = (await env.sync(env.alice))["next_batch"]
    for user in (env.bob, env.carol):
        await env.client.ok(
            user, "PUT", f"/presence/{q(user.user_id)}/status", {"presence": "online"}
        )
    answer = await env.sync(env.alice, since=since)
    online = {
        event["sender"]
        for event in answer["presence"]["events"]
        if event["content"]["presence"] == "online"
    }
    assert {env.bob.user_id, env.carol.user_id} <= online


async def test_a_leaver_is_in_device_lists_left_with_lazy_loading(env: SharedRoom) -> None:
    lazy = json.dumps(
        {"room": {"timeline": {"lazy_load_members": True}, "state": {"lazy_load_members": True}}}
    )
    room_id = await env.client.create_room(env.alice, preset="public_chat")
    since = (await env.sync(env.alice, filter=lazy))["next_batch"]
    await _join(env, env.carol, room_id)
    joined = await env.sync(env.alice, filter=lazy, since=since)
    assert env.carol.user_id in joined["device_lists"]["changed"]
    await _say(env, env.carol, room_id, "bye")
    await _leave(env, env.carol, room_id)
    for _ in range(2):
        left = await env.sync(env.alice, filter=lazy, since=joined["next_batch"])
        assert env.carol.user_id in left["device_lists"]["left"]


async def test_summary_counts_invited_then_joined_members(env: SharedRoom) -> None:
    room_id = await env.client.create_room(
        env.alice, preset="public_chat", invite=[env.carol.user_id]
    )
    summary = (await env.sync(env.alice))["rooms"]["join"][room_id]["summary"]
    assert (summary["m.joined_member_count"], summary["m.invited_member_count"]) == (1, 1)
    await _join(env, env.carol, room_id)
    for user in (env.alice, env.carol):
        summary = (await env.sync(user))["rooms"]["join"][room_id]["summary"]
        assert (summary["m.joined_member_count"], summary["m.invited_member_count"]) == (2, 0)


async def test_a_left_room_is_in_the_leave_section_of_every_kind_of_sync(
    env: SharedRoom,
) -> None:
    room_id = await env.client.create_room(env.carol)
    full_since = (await env.sync(env.carol, filter=_INCLUDE_LEAVE, timeout=0))["next_batch"]
    plain_since = (await env.sync(env.carol, timeout=0))["next_batch"]
    await _leave(env, env.carol, room_id)
    initial = await env.sync(env.carol, filter=_INCLUDE_LEAVE)
    assert room_id in initial["rooms"]["leave"]
    full = await env.sync(env.carol, filter=_INCLUDE_LEAVE, since=full_since, full_state="true")
    assert room_id in full["rooms"]["leave"]
    incremental = await env.sync(env.carol, since=plain_since)
    assert room_id in incremental["rooms"]["leave"]


async def test_a_left_room_is_in_the_leave_section_of_a_gappy_sync(env: SharedRoom) -> None:
    gappy = await _filter(
        env, env.carol, {"room": {"timeline": {"limit": 1}, "include_leave": True}}
    )
    to_leave = await env.client.create_room(env.carol)
    to_spam = await env.client.create_room(env.carol)
    since = (await env.sync(env.carol, filter=gappy, timeout=0))["next_batch"]
    await _leave(env, env.carol, to_leave)
    for n in range(20):
        await _say(env, env.carol, to_spam, f"spam {n}")
    answer = await env.sync(env.carol, filter=gappy, since=since)
    assert to_leave in answer["rooms"]["leave"]


async def _archive(env: SharedRoom) -> tuple[str, str]:
    """Bob's filter and a token from before Alice said and set "before",
    Bob left, and Alice said and set "after"."""
    bob_filter = await _filter(
        env,
        env.bob,
        {
            "room": {
                "timeline": {"types": ["m.room.message", _MADE_UP]},
                "state": {"types": [_MADE_UP]},
                "include_leave": True,
            }
        },
    )
    since = (await env.sync(env.bob, filter=bob_filter, timeout=0))["next_batch"]
    await _say(env, env.alice, env.room_id, "before")
    await _put_state(env, env.alice, env.room_id, _MADE_UP, {"my_key": "before"})
    await _leave(env, env.bob, env.room_id)
    await _say(env, env.alice, env.room_id, "after")
    await _put_state(env, env.alice, env.room_id, _MADE_UP, {"my_key": "after"})
    return bob_filter, since


async def test_a_left_rooms_timeline_stops_at_the_leave(env: SharedRoom) -> None:
    bob_filter, since = await _archive(env)
    for answer in (
        await env.sync(env.bob, filter=bob_filter),
        await env.sync(env.bob, filter=bob_filter, since=since),
    ):
        room = answer["rooms"]["leave"][env.room_id]
        assert room.get("state", {}).get("events", []) == []
        events = room["timeline"]["events"]
        assert [
            event.get("content", {}).get("my_key", event["content"].get("body")) for event in events
        ] == [
            "before",
            "before",
        ]


async def test_an_older_left_room_is_not_in_a_later_leave_section(env: SharedRoom) -> None:
    carol_filter = await _filter(
        env, env.carol, {"room": {"timeline": {"limit": 1}, "include_leave": True}}
    )
    to_leave = await env.client.create_room(env.bob, preset="public_chat")
    to_spam = await env.client.create_room(env.bob, preset="public_chat")
    await _join(env, env.carol, to_leave)
    await _join(env, env.carol, to_spam)
    since = (await env.sync(env.carol, filter=carol_filter, timeout=0))["next_batch"]
    await _leave(env, env.carol, to_leave)
    left = await env.sync(env.carol, filter=carol_filter, since=since)
    assert to_leave in left["rooms"]["leave"]
    await _put_state(
        env,
        env.bob,
        to_leave,
        f"m.room.member/{q(env.bob.user_id)}",
        {"membership": "join", "filler": "again"},
    )
    for n in range(20):
        await _say(env, env.bob, to_spam, f"spam {n}")
    later = await env.sync(env.carol, filter=carol_filter, since=left["next_batch"])
    assert later["rooms"].get("leave", {}) == {}


async def test_a_leave_under_joined_visibility_shows_only_the_leave(env: SharedRoom) -> None:
    room_id = await env.client.create_room(
        env.carol,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    await _join(env, env.bob, room_id)
    since = (await env.sync(env.carol, filter=_INCLUDE_LEAVE))["next_batch"]
    await _leave(env, env.carol, room_id)
    room = (await env.sync(env.carol, filter=_INCLUDE_LEAVE, since=since, timeout=0))["rooms"][
        "leave"
    ][room_id]
    assert room.get("state", {}).get("events", []) == []
    (event,) = room["timeline"]["events"]
    assert (event["type"], event["sender"], event["content"]["membership"]) == (
        "m.room.member",
        env.carol.user_id,
        "leave",
    )


async def test_a_rejected_invite_to_a_joined_visibility_room_is_left(env: SharedRoom) -> None:
    room_id = await env.client.create_room(
        env.bob,
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    since = (await env.sync(env.carol, filter=_INCLUDE_LEAVE, timeout=0))["next_batch"]
    await env.client.ok(
        env.bob, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": env.carol.user_id}
    )
    invited = await env.sync(env.carol, filter=_INCLUDE_LEAVE, since=since)
    assert room_id in invited["rooms"]["invite"]
    await _leave(env, env.carol, room_id)
    left = await env.sync(env.carol, filter=_INCLUDE_LEAVE, since=invited["next_batch"])
    assert room_id in left["rooms"]["leave"]


async def test_a_left_room_with_no_timeline_wanted_still_shows_the_leave(
    env: SharedRoom,
) -> None:
    _, since = await _archive(env)
    # A timeline of none of the room's events (a limit of 0, which the spec
    # does not allow, is refused).
    no_timeline = json.dumps(
        {"room": {"timeline": {"types": ["org.example.none"]}, "include_leave": True}}
    )
    initial = (await env.sync(env.bob, filter=no_timeline))["rooms"]["leave"][env.room_id]
    assert initial["timeline"]["events"] == []
    state = {(e["type"], e["state_key"]): e["content"] for e in initial["state"]["events"]}
    assert state[(_MADE_UP, "")] == {"my_key": "before"}
    assert state[("m.room.member", env.bob.user_id)]["membership"] == "leave"
    # Since before the leave: the room is left, and the leave says so.
    answer = await env.sync(env.bob, filter=no_timeline, since=since)
    room = answer["rooms"]["leave"][env.room_id]
    shown = room["timeline"]["events"] + room["state"]["events"]
    assert [(e["state_key"], e["content"]["membership"]) for e in shown] == [
        (env.bob.user_id, "leave")
    ]
    zero = json.dumps({"room": {"timeline": {"limit": 0}}})
    await env.client.refused(
        env.bob, "GET", "/sync", params={"filter": zero}, status=400, errcode="M_BAD_JSON"
    )


async def test_a_room_joined_and_left_between_syncs_is_left_with_its_whole_state(
    env: SharedRoom,
) -> None:
    """The client never had the room: its leave section carries the state as
    a newly joined room's would, not just what changed since the token."""
    no_timeline = json.dumps(
        {"room": {"timeline": {"types": []}, "state": {"types": [_MADE_UP]}, "include_leave": True}}
    )
    await _put_state(env, env.alice, env.room_id, _MADE_UP, {"my_key": 1})
    since = (await env.sync(env.carol, filter=no_timeline))["next_batch"]
    await _join(env, env.carol, env.room_id)
    await _leave(env, env.carol, env.room_id)
    room = (await env.sync(env.carol, filter=no_timeline, since=since))["rooms"]["leave"][
        env.room_id
    ]
    assert [(e["type"], e["content"]) for e in room["state"]["events"]] == [
        (_MADE_UP, {"my_key": 1})
    ]
    # Bob was in the room at the token: his leave sends no state.
    bob_since = (await env.sync(env.bob, filter=no_timeline))["next_batch"]
    await _leave(env, env.bob, env.room_id)
    room = (await env.sync(env.bob, filter=no_timeline, since=bob_since))["rooms"]["leave"][
        env.room_id
    ]
    assert room["state"]["events"] == []


async def test_a_member_back_after_a_private_gap_sees_who_joined_in_it(env: SharedRoom) -> None:
    """Carol joined while Bob was out of a room whose history is for members
    only. Bob may not read the events of the gap, but the join is the room's
    state now, and his incremental sync carries it in the timeline, with
    the message of the gap left out."""
    room_id = await env.client.create_room(
        env.alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    await _join(env, env.bob, room_id)
    since = (await env.sync(env.bob))["next_batch"]
    await _leave(env, env.bob, room_id)
    await _join(env, env.carol, room_id)
    hidden = await _say(env, env.alice, room_id, "while Bob was away")
    await _put_state(env, env.alice, room_id, _MADE_UP, {"my_key": "old"})
    await _put_state(env, env.alice, room_id, _MADE_UP, {"my_key": "new"})
    await _join(env, env.bob, room_id)
    timeline = (await env.sync(env.bob, since=since))["rooms"]["join"][room_id]["timeline"]
    shown = [(e["type"], e["state_key"], e["content"]) for e in timeline["events"]]
    assert shown == [
        ("m.room.member", env.bob.user_id, {"membership": "leave"}),
        ("m.room.member", env.carol.user_id, {"membership": "join"}),
        (_MADE_UP, "", {"my_key": "new"}),
        ("m.room.member", env.bob.user_id, {"membership": "join"}),
    ]
    assert hidden not in [e["event_id"] for e in timeline["events"]]
    # Events of the gap stay unreadable on their own.
    await env.client.refused(
        env.bob, "GET", f"/rooms/{q(room_id)}/event/{q(hidden)}", status=404, errcode="M_NOT_FOUND"
    )
