"""``/rooms/{roomId}/context/{eventId}`` over real HTTP on a started
homeserver: the events around an event, tokens that /messages takes, the
state, the filter, and who may see what.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _say(env: SharedRoom, user: Any, body: str, room_id: str | None = None) -> str:
    room = room_id or env.room_id
    answer = await env.client.ok(
        user,
        "PUT",
        f"/rooms/{q(room)}/send/m.room.message/{body}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


def _bodies(events: list[dict[str, Any]]) -> list[str | None]:
    return [event["content"].get("body") for event in events]


async def _context(env: SharedRoom, user: Any, event_id: str, **params: Any) -> Any:
    return await env.client.ok(
        user, "GET", f"/rooms/{q(env.room_id)}/context/{q(event_id)}", params=params
    )


async def test_events_before_and_after_split_the_limit(env: SharedRoom) -> None:
    ids = [await _say(env, env.alice, f"m{i}") for i in range(8)]

    answer = await _context(env, env.bob, ids[4], limit=5)

    assert answer["event"]["event_id"] == ids[4]
    assert answer["event"]["content"]["body"] == "m4"
    # Newest first before the event, oldest first after it.
    assert _bodies(answer["events_before"]) == ["m3", "m2"]
    assert _bodies(answer["events_after"]) == ["m5", "m6", "m7"]
    assert isinstance(answer["start"], str)
    assert isinstance(answer["end"], str)


async def test_the_filters_limit_stands_in_for_a_missing_limit(env: SharedRoom) -> None:
    ids = [await _say(env, env.alice, f"m{i}") for i in range(6)]

    answer = await _context(env, env.bob, ids[3], filter=json.dumps({"limit": 2}))

    assert _bodies(answer["events_before"]) == ["m2"]
    assert _bodies(answer["events_after"]) == ["m4"]


async def test_limit_zero_returns_the_event_alone(env: SharedRoom) -> None:
    ids = [await _say(env, env.alice, f"m{i}") for i in range(3)]

    answer = await _context(env, env.bob, ids[1], limit=0)

    assert answer["event"]["event_id"] == ids[1]
    assert answer["events_before"] == []
    assert answer["events_after"] == []


async def test_tokens_page_on_with_messages(env: SharedRoom) -> None:
    ids = [await _say(env, env.alice, f"m{i}") for i in range(9)]
    answer = await _context(env, env.bob, ids[4], limit=2)
    assert _bodies(answer["events_before"]) == ["m3"]
    assert _bodies(answer["events_after"]) == ["m5"]
    messages = f"/rooms/{q(env.room_id)}/messages"

    back = await env.client.ok(
        env.bob, "GET", messages, params={"dir": "b", "from": answer["start"], "limit": 2}
    )
    forward = await env.client.ok(
        env.bob, "GET", messages, params={"dir": "f", "from": answer["end"], "limit": 3}
    )

    assert _bodies(back["chunk"]) == ["m2", "m1"]
    assert _bodies(forward["chunk"]) == ["m6", "m7", "m8"]


async def test_state_is_the_rooms_and_lazy_loading_keeps_senders_members(
    env: SharedRoom,
) -> None:
    await env.client.ok(env.carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    target = await _say(env, env.bob, "from bob")
    await _say(env, env.bob, "again")

    full = await _context(env, env.alice, target, limit=2)
    lazy = await _context(
        env,
        env.alice,
        target,
        limit=2,
        filter=json.dumps({"lazy_load_members": True}),
    )

    def members(answer: Any) -> set[str]:
        return {e["state_key"] for e in answer["state"] if e["type"] == "m.room.member"}

    assert members(full) == {env.alice.user_id, env.bob.user_id, env.carol.user_id}
    # Carol's join is the event before, so her member event stays: she sent it.
    assert members(lazy) == {env.bob.user_id, env.carol.user_id}
    assert {"m.room.create", "m.room.power_levels"} <= {e["type"] for e in lazy["state"]}


async def test_the_filter_applies_around_the_event_not_to_it(env: SharedRoom) -> None:
    first = await _say(env, env.alice, "alice 1")
    await _say(env, env.bob, "bob 1")
    await _say(env, env.alice, "alice 2")
    only_bob = json.dumps({"senders": [env.bob.user_id]})

    answer = await _context(env, env.bob, first, limit=4, filter=only_bob)

    assert answer["event"]["content"]["body"] == "alice 1"
    assert _bodies(answer["events_after"]) == ["bob 1"]
    assert {e["sender"] for e in answer["events_before"]} <= {env.bob.user_id}
    assert {e["sender"] for e in answer["state"]} == {env.bob.user_id}


async def test_own_events_carry_their_transaction_id(env: SharedRoom) -> None:
    target = await _say(env, env.alice, "mine")

    mine = await _context(env, env.alice, target)
    theirs = await _context(env, env.bob, target)

    assert mine["event"]["unsigned"]["transaction_id"] == "mine"
    assert "transaction_id" not in theirs["event"].get("unsigned", {})


async def test_a_room_never_joined_is_forbidden(env: SharedRoom) -> None:
    target = await _say(env, env.alice, "hello")

    await env.client.refused(
        env.carol,
        "GET",
        f"/rooms/{q(env.room_id)}/context/{q(target)}",
        status=403,
        errcode="M_FORBIDDEN",
    )


async def test_unknown_and_foreign_events_are_not_found(env: SharedRoom) -> None:
    other_room = await env.client.create_room(env.carol)
    foreign = await _say(env, env.carol, "elsewhere", room_id=other_room)
    path = f"/rooms/{q(env.room_id)}/context/"

    for event_id in ("$nothing", foreign):
        await env.client.refused(
            env.bob, "GET", path + q(event_id), status=404, errcode="M_NOT_FOUND"
        )


async def test_events_before_a_join_under_joined_visibility_are_hidden(
    env: SharedRoom,
) -> None:
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/state/m.room.history_visibility/",
        {"history_visibility": "joined"},
    )
    early = await _say(env, env.alice, "early")
    await env.client.ok(env.carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    late = await _say(env, env.alice, "late")

    await env.client.refused(
        env.carol,
        "GET",
        f"/rooms/{q(env.room_id)}/context/{q(early)}",
        status=404,
        errcode="M_NOT_FOUND",
    )
    answer = await _context(env, env.carol, late, limit=10)
    seen = _bodies(answer["events_before"])
    assert "early" not in seen
    # Bob, joined since before, sees it.
    bob_view = await _context(env, env.bob, late, limit=10)
    assert "early" in _bodies(bob_view["events_before"])


async def test_events_around_reach_past_an_ignored_users_messages(env: SharedRoom) -> None:
    alice, bob, client = env.alice, env.bob, env.client
    await client.ok(
        alice,
        "PUT",
        f"/user/{q(alice.user_id)}/account_data/m.ignored_user_list",
        {"ignored_users": {bob.user_id: {}}},
    )
    for body in ("b0", "b1", *(f"x{n}" for n in range(20))):
        await _say(env, bob if body.startswith("x") else alice, body)
    target = await _say(env, alice, "target")
    for body in (*(f"y{n}" for n in range(20)), "c0", "c1"):
        await _say(env, bob if body.startswith("y") else alice, body)
    (everything,) = await client.pages(alice, env.room_id, None, limit=1000)
    visible = [event["event_id"] for event in everything]
    context = await _context(env, alice, target, limit=4)
    assert _bodies(context["events_before"]) == ["b1", "b0"]
    assert _bodies(context["events_after"]) == ["c0", "c1"]
    # Paging on from the tokens: the rest, none skipped or repeated.
    older = visible[visible.index(context["events_before"][-1]["event_id"]) + 1 :]
    pages = await client.pages(alice, env.room_id, context["start"], limit=3)
    assert [[event["event_id"] for event in page] for page in pages] == [
        older[start : start + 3] for start in range(0, len(older), 3)
    ]
    assert await client.pages(alice, env.room_id, context["end"], limit=3, direction="f") == [[]]


async def test_events_after_a_leave_are_not_shown(env: SharedRoom) -> None:
    before = await _say(env, env.alice, "before")
    await env.client.ok(env.bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    after = await _say(env, env.alice, "after")

    answer = await _context(env, env.bob, before, limit=10)

    assert "after" not in _bodies(answer["events_after"])
    await env.client.refused(
        env.bob,
        "GET",
        f"/rooms/{q(env.room_id)}/context/{q(after)}",
        status=404,
        errcode="M_NOT_FOUND",
    )


async def test_bad_parameters_are_refused(env: SharedRoom) -> None:
    target = await _say(env, env.alice, "x")
    path = f"/rooms/{q(env.room_id)}/context/{q(target)}"

    for params in ({"limit": "-1"}, {"limit": "many"}, {"filter": "{nope"}):
        await env.client.refused(
            env.bob, "GET", path, params=params, status=400, errcode="M_INVALID_PARAM"
        )
