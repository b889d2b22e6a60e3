"""``GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`` over real
HTTP on one server: the nearest event either way, ties, before the first
and after the last event, bad parameters, and who may see what.

The server's event clock is set by the test, so that events land at the
times a case needs (several at one millisecond for the ties).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser

#: Far after the room's creation, which is stamped with the real time.
T = 4_000_000_000_000


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


def _clock_at(env: SharedRoom, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """A setter of the time the server stamps its next events with."""
    now = [T]
    monkeypatch.setattr(env.hs.server.event_creator, "_clock", lambda: now[0])

    def set_to(ms: int) -> None:
        now[0] = ms

    return set_to


async def _say(env: SharedRoom, user: TestUser, body: str, room_id: str | None = None) -> str:
    room = room_id or env.room_id
    answer = await env.client.ok(
        user, "PUT", f"/rooms/{q(room)}/send/m.room.message/{body}", {"body": body}
    )
    event_id: str = answer["event_id"]
    return event_id


async def _lookup(
    env: SharedRoom, user: TestUser, params: dict[str, Any], room_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    room = room_id or env.room_id
    response = await env.client.http.get(
        f"/_matrix/client/v1/rooms/{q(room)}/timestamp_to_event",
        params=params,
        headers={"Authorization": f"Bearer {user.access_token}"},
    )
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


async def _found(env: SharedRoom, user: TestUser, ts: int, direction: str) -> str:
    status, answer = await _lookup(env, user, {"ts": ts, "dir": direction})
    assert status == 200, answer
    event_id: str = answer["event_id"]
    return event_id


async def test_the_nearest_event_either_way(
    env: SharedRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock = _clock_at(env, monkeypatch)
    ids = {}
    for body, at in (("m1", 100), ("m2", 200), ("m3", 300)):
        set_clock(T + at)
        ids[body] = await _say(env, env.alice, body)

    assert await _found(env, env.bob, T + 250, "b") == ids["m2"]
    assert await _found(env, env.bob, T + 250, "f") == ids["m3"]
    # An event at the very time is found both ways.
    assert await _found(env, env.bob, T + 200, "b") == ids["m2"]
    assert await _found(env, env.bob, T + 200, "f") == ids["m2"]
    status, answer = await _lookup(env, env.bob, {"ts": T + 150, "dir": "f"})
    assert (status, answer) == (200, {"event_id": ids["m2"], "origin_server_ts": T + 200})


async def test_ties_take_the_last_written_backwards_and_the_first_forwards(
    env: SharedRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock = _clock_at(env, monkeypatch)
    set_clock(T + 500)
    first, second, third = [await _say(env, env.alice, f"tie{n}") for n in range(3)]

    assert await _found(env, env.bob, T + 500, "b") == third
    assert await _found(env, env.bob, T + 500, "f") == first
    assert await _found(env, env.bob, T + 600, "b") == third
    assert await _found(env, env.bob, T + 400, "f") == first
    assert second not in (first, third)


async def test_before_the_first_and_after_the_last_event(
    env: SharedRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock = _clock_at(env, monkeypatch)
    set_clock(T + 100)
    last = await _say(env, env.alice, "last")
    state = await env.client.state(env.alice, env.room_id)
    create_id = state[("m.room.create", "")]["event_id"]

    assert await _found(env, env.bob, 0, "f") == create_id
    assert await _found(env, env.bob, T + 10**9, "b") == last
    for params in ({"ts": 0, "dir": "b"}, {"ts": T + 10**9, "dir": "f"}):
        status, answer = await _lookup(env, env.bob, params)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), params
        assert answer["error"]


async def test_bad_or_missing_parameters_are_refused(env: SharedRoom) -> None:
    cases = [
        ({"dir": "b"}, "M_MISSING_PARAM"),
        ({"ts": "1"}, "M_MISSING_PARAM"),
        ({"ts": "soon", "dir": "b"}, "M_INVALID_PARAM"),
        ({"ts": "-5", "dir": "b"}, "M_INVALID_PARAM"),
        ({"ts": "1.5", "dir": "f"}, "M_INVALID_PARAM"),
        ({"ts": "1", "dir": "x"}, "M_INVALID_PARAM"),
        ({"ts": "1", "dir": ""}, "M_INVALID_PARAM"),
    ]
    for params, errcode in cases:
        status, answer = await _lookup(env, env.bob, params)
        assert (status, answer["errcode"]) == (400, errcode), params


async def test_a_user_who_may_not_read_the_room_is_refused(
    env: SharedRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock = _clock_at(env, monkeypatch)
    await _say(env, env.alice, "members only")

    status, answer = await _lookup(env, env.carol, {"ts": T, "dir": "b"})
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    status, answer = await _lookup(env, env.bob, {"ts": T, "dir": "b"}, room_id="!nowhere:x")
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")

    # A world-readable room is open to her.
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/state/m.room.history_visibility",
        {"history_visibility": "world_readable"},
    )
    set_clock(T + 100)
    for_all = await _say(env, env.alice, "for all")
    assert await _found(env, env.carol, T + 100, "b") == for_all


async def test_a_user_who_left_finds_nothing_after_the_leave(
    env: SharedRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock = _clock_at(env, monkeypatch)
    set_clock(T + 100)
    await _say(env, env.alice, "seen")
    set_clock(T + 200)
    await env.client.ok(env.bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    set_clock(T + 300)
    unseen = await _say(env, env.alice, "unseen")

    assert await _found(env, env.alice, T + 400, "b") == unseen
    found = await _found(env, env.bob, T + 400, "b")
    bob_leave = (await env.client.state(env.alice, env.room_id))[("m.room.member", env.bob.user_id)]
    assert bob_leave["content"]["membership"] == "leave"
    assert found == bob_leave["event_id"]
    status, answer = await _lookup(env, env.bob, {"ts": T + 250, "dir": "f"})
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")


async def test_events_the_history_visibility_hides_are_passed_over(
    env: SharedRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock = _clock_at(env, monkeypatch)
    set_clock(T + 50)
    switch = await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/state/m.room.history_visibility",
        {"history_visibility": "joined"},
    )
    set_clock(T + 100)
    hidden = await _say(env, env.alice, "before carol")
    set_clock(T + 200)
    await env.client.ok(env.carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    carol_join = (await env.client.state(env.alice, env.room_id))[
        ("m.room.member", env.carol.user_id)
    ]["event_id"]
    set_clock(T + 300)
    after = await _say(env, env.alice, "after carol")

    # What was said while only those joined might read it is not hers: the
    # search goes on past it, to her join forwards, to the switch backwards.
    assert await _found(env, env.carol, T + 60, "f") == carol_join
    assert await _found(env, env.carol, T + 150, "b") == switch["event_id"]
    assert await _found(env, env.carol, T + 250, "f") == after
    # Bob, joined all along, sees it.
    assert await _found(env, env.bob, T + 150, "b") == hidden
