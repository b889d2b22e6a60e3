"""What ``/event`` and ``/messages`` show a user of a room's history, under
each ``m.room.history_visibility`` setting, over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser

_TXN = itertools.count()
_HELLO = {"msgtype": "m.text", "body": "hello world"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _room(env: SharedRoom, visibility: str) -> str:
    return await env.client.create_room(
        env.alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": visibility},
            }
        ],
    )


async def _say(env: SharedRoom, room_id: str) -> str:
    sent = await env.client.ok(
        env.alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/h{next(_TXN)}", _HELLO
    )
    event_id: str = sent["event_id"]
    return event_id


async def _join(env: SharedRoom, user: TestUser, room_id: str) -> None:
    await env.client.ok(user, "POST", f"/rooms/{q(room_id)}/join", {})


async def _invite(env: SharedRoom, user: TestUser, room_id: str) -> None:
    await env.client.ok(env.alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": user.user_id})


async def _shown(env: SharedRoom, user: TestUser, room_id: str, event_id: str) -> None:
    """``event_id`` is given to ``user`` whole by ``/event`` and is among the
    messages ``/messages`` pages back through."""
    event = await env.client.ok(user, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
    assert event["content"] == _HELLO
    assert (event["type"], event["room_id"]) == ("m.room.message", room_id)
    assert (event["sender"], event["event_id"]) == (env.alice.user_id, event_id)
    assert isinstance(event["origin_server_ts"], int)
    assert event_id in await _messages(env, user, room_id)


async def _hidden(env: SharedRoom, user: TestUser, room_id: str, event_id: str) -> None:
    """``event_id`` is a 404 to ``user`` and missing from their ``/messages``
    (which, for a user who never joined, may be refused outright)."""
    await env.client.refused(
        user,
        "GET",
        f"/rooms/{q(room_id)}/event/{q(event_id)}",
        status=404,
        errcode="M_NOT_FOUND",
    )
    status, answer = await env.client.call(
        user, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": 50}
    )
    if status == 200:
        assert event_id not in [event["event_id"] for event in answer["chunk"]]
    else:
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")


async def _messages(env: SharedRoom, user: TestUser, room_id: str) -> list[str]:
    answer: dict[str, Any] = await env.client.ok(
        user, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": 50}
    )
    return [event["event_id"] for event in answer["chunk"]]


async def test_a_member_fetches_an_event_sent_while_joined(env: SharedRoom) -> None:
    room_id = await _room(env, "shared")
    await _join(env, env.bob, room_id)
    event_id = await _say(env, room_id)
    await _shown(env, env.bob, room_id, event_id)


async def test_joined_visibility_hides_what_came_before_the_join(env: SharedRoom) -> None:
    room_id = await _room(env, "joined")
    event_id = await _say(env, room_id)
    await _join(env, env.bob, room_id)
    await _hidden(env, env.bob, room_id, event_id)
    after = await _say(env, room_id)
    await _shown(env, env.bob, room_id, after)


async def test_shared_visibility_shows_what_came_before_the_join(env: SharedRoom) -> None:
    room_id = await _room(env, "shared")
    event_id = await _say(env, room_id)
    await _join(env, env.bob, room_id)
    await _shown(env, env.bob, room_id, event_id)


async def test_invited_visibility_shows_what_came_after_the_invite(env: SharedRoom) -> None:
    room_id = await _room(env, "invited")
    await _invite(env, env.bob, room_id)
    event_id = await _say(env, room_id)
    await _join(env, env.bob, room_id)
    await _shown(env, env.bob, room_id, event_id)


async def test_invited_visibility_hides_what_came_before_the_invite(env: SharedRoom) -> None:
    room_id = await _room(env, "invited")
    event_id = await _say(env, room_id)
    await _invite(env, env.bob, room_id)
    await _join(env, env.bob, room_id)
    await _hidden(env, env.bob, room_id, event_id)


async def test_a_shared_room_is_hidden_from_those_never_in_it(env: SharedRoom) -> None:
    room_id = await _room(env, "shared")
    event_id = await _say(env, room_id)
    await _hidden(env, env.bob, room_id, event_id)


async def test_a_world_readable_room_is_shown_to_those_never_in_it(env: SharedRoom) -> None:
    room_id = await _room(env, "world_readable")
    event_id = await _say(env, room_id)
    await _shown(env, env.bob, room_id, event_id)


async def _set(env: SharedRoom, room_id: str, visibility: str) -> str:
    sent = await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/state/m.room.history_visibility/",
        {"history_visibility": visibility},
    )
    event_id: str = sent["event_id"]
    return event_id


async def test_a_change_of_visibility_is_seen_where_either_side_of_it_allows(
    env: SharedRoom,
) -> None:
    room_id = await _room(env, "shared")
    to_joined = await _set(env, room_id, "joined")
    during_joined = await _say(env, room_id)
    to_invited = await _set(env, room_id, "invited")
    during_invited = await _say(env, room_id)
    to_shared = await _set(env, room_id, "shared")
    during_shared = await _say(env, room_id)
    await _join(env, env.carol, room_id)

    # Carol joined last: what she may see ends with the change back to
    # shared, which the setting it makes lets her see though the one before
    # it did not; the change to invited neither side lets her see.
    timeline = (await env.sync(env.carol))["rooms"]["join"][room_id]["timeline"]["events"]
    seen = [event["event_id"] for event in timeline]
    assert seen[-4:-1] == [to_joined, to_shared, during_shared]
    for hidden in (during_joined, to_invited, during_invited):
        assert hidden not in seen
        await _hidden(env, env.carol, room_id, hidden)
    paged = await _messages(env, env.carol, room_id)
    assert paged[1:4] == [during_shared, to_shared, to_joined]
    for shown in (to_joined, to_shared):
        event = await env.client.ok(env.carol, "GET", f"/rooms/{q(room_id)}/event/{q(shown)}")
        assert event["type"] == "m.room.history_visibility"


async def test_a_visibility_not_understood_counts_as_shared(env: SharedRoom) -> None:
    room_id = await _room(env, "joined")
    await _set(env, room_id, "org.example.unknown")
    event_id = await _say(env, room_id)
    await _join(env, env.carol, room_id)
    await _shown(env, env.carol, room_id, event_id)
    timeline = (await env.sync(env.carol))["rooms"]["join"][room_id]["timeline"]["events"]
    assert event_id in [event["event_id"] for event in timeline]
