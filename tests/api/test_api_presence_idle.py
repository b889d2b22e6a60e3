"""Presence following activity over real HTTP: a syncing user who does
nothing for five minutes shows as unavailable to another user's long-poll
and to another server, and sending, typing, a receipt or a read marker
brings them back; a user who chose unavailable stays so.

The clock runs at real time's pace, so HTTP and storage go as they would,
and the tests jump it ahead by the minutes presence counts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _client import Client, SharedRoom, open_shared_room, q
from _federation import eventually, share_a_room, two_servers
from trio.testing import MockClock

from ranvier.core.notifier import StreamNotifier
from ranvier.core.presence import CURRENTLY_ACTIVE_S, IDLE_AFTER_S
from ranvier.testing.homeserver import TestUser

#: Less than the 30 s a user stays online after a sync, and a client's timeout.
STEP_S = 20.0


@pytest.fixture
def paced_clock() -> MockClock:
    """Trio's clock for the test: real time's pace, and jumps."""
    return MockClock(rate=1)


def _presence_of(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    (content,) = [
        event["content"] for event in body["presence"]["events"] if event["sender"] == user_id
    ]
    assert isinstance(content, dict)
    return content


async def _jump(clock: MockClock, seconds: float) -> None:
    """Jump ``seconds`` ahead, and let what that wakes run: the servers close
    the connections idle past their keep-alive, which a request sent at
    once could meet half closed.
    """
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)


async def _step(clock: MockClock, client: Client, user: TestUser, steps: int) -> None:
    """Let ``steps`` steps of time pass, ``user`` syncing (with no long-poll)
    after each, as an open, untouched client does.
    """
    for _ in range(steps):
        await _jump(clock, STEP_S)
        await client.ok(user, "GET", "/sync", params={"timeout": "0"})


async def _after_a_change(clock: MockClock, notifier: StreamNotifier, seconds: float) -> None:
    """Jump ``seconds`` ahead and wait for the presence change that brings."""
    before = notifier.position
    await _jump(clock, seconds)
    with trio.fail_after(30):
        await notifier.wait_beyond(before)


#: The steps of syncing that take an untouched user to a step short of idle.
STEPS_SHORT_OF_IDLE = int(IDLE_AFTER_S // STEP_S) - 1


async def _woken(
    env: SharedRoom,
    user: TestUser,
    since: str,
    *,
    quiet: Callable[[], Awaitable[object]],
    wake: Callable[[], Awaitable[object]],
) -> dict[str, Any]:
    """``user``'s long-poll from ``since``, which leaves their own presence
    alone: asleep through ``quiet``, answered once ``wake`` has acted.
    """
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        params = {"since": since, "timeout": "50000", "set_presence": "offline"}
        answers.append(await env.client.ok(user, "GET", "/sync", params=params))

    with trio.fail_after(STEP_S * 1.4):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            while env.hs.server.stream_notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            await quiet()
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert answers == []
            await wake()
    (answer,) = answers
    return answer


async def test_an_idle_syncing_user_shows_unavailable_until_they_act(
    tmp_path: Path, paced_clock: MockClock
) -> None:
    async with open_shared_room(tmp_path, SharedRoom) as env:
        c, alice, bob, room = env.client, env.alice, env.bob, env.room_id
        alice_status = f"/presence/{q(alice.user_id)}/status"
        notifier = env.hs.server.stream_notifier

        await c.ok(alice, "GET", "/sync", params={"timeout": "0"})
        first = await c.ok(bob, "GET", "/sync", params={"set_presence": "offline"})
        came = _presence_of(first, alice.user_id)
        assert (came["presence"], came["currently_active"]) == ("online", True)
        assert came["last_active_ago"] < CURRENTLY_ACTIVE_S * 1000

        # A minute on, no longer currently active: a change of its own.
        before = notifier.position
        steps_to_a_minute = int(CURRENTLY_ACTIVE_S // STEP_S)
        await _step(paced_clock, c, alice, steps_to_a_minute)
        with trio.fail_after(30):
            await notifier.wait_beyond(before)
        seen = await c.ok(bob, "GET", alice_status)
        assert (seen["presence"], seen["currently_active"]) == ("online", False)
        assert seen["last_active_ago"] >= CURRENTLY_ACTIVE_S * 1000

        # Syncing on, untouched, for five minutes: unavailable, which wakes
        # Bob's long-poll; Alice's own sync just before does not.
        await _step(paced_clock, c, alice, STEPS_SHORT_OF_IDLE - steps_to_a_minute)
        since = (await c.ok(bob, "GET", "/sync", params={"set_presence": "offline"}))["next_batch"]

        async def alice_syncs() -> None:
            await c.ok(alice, "GET", "/sync", params={"timeout": "0"})

        async def time_passes() -> None:
            await _jump(paced_clock, STEP_S)

        woken = await _woken(env, bob, since, quiet=alice_syncs, wake=time_passes)
        idle = _presence_of(woken, alice.user_id)
        assert (idle["presence"], idle["currently_active"]) == ("unavailable", False)
        assert idle["last_active_ago"] >= IDLE_AFTER_S * 1000
        assert (await c.ok(bob, "GET", alice_status))["presence"] == "unavailable"

        # A message brings her back at once.
        async def alice_sends() -> None:
            await c.ok(alice, "PUT", f"/rooms/{q(room)}/send/m.room.message/1", {"body": "hi"})

        woken = await _woken(env, bob, woken["next_batch"], quiet=alice_syncs, wake=alice_sends)
        back = _presence_of(woken, alice.user_id)
        assert (back["presence"], back["currently_active"]) == ("online", True)
        assert back["last_active_ago"] < CURRENTLY_ACTIVE_S * 1000


async def test_typing_a_receipt_and_a_read_marker_are_activity_and_a_choice_stays(
    tmp_path: Path, paced_clock: MockClock
) -> None:
    async with open_shared_room(tmp_path, SharedRoom) as env:
        c, alice, bob, room = env.client, env.alice, env.bob, env.room_id
        alice_status = f"/presence/{q(alice.user_id)}/status"
        notifier = env.hs.server.stream_notifier
        sent = await c.ok(alice, "PUT", f"/rooms/{q(room)}/send/m.room.message/1", {"body": "x"})
        event_id = sent["event_id"]
        await c.ok(alice, "GET", "/sync", params={"timeout": "0"})

        for path, method, body in (
            (f"/rooms/{q(room)}/typing/{q(alice.user_id)}", "PUT", {"typing": True}),
            (f"/rooms/{q(room)}/receipt/m.read/{q(event_id)}", "POST", {}),
            (f"/rooms/{q(room)}/read_markers", "POST", {"m.fully_read": event_id}),
        ):
            await _step(paced_clock, c, alice, STEPS_SHORT_OF_IDLE)
            await _after_a_change(paced_clock, notifier, STEP_S)
            # Her client syncs on, which leaves her idle.
            await c.ok(alice, "GET", "/sync", params={"timeout": "0"})
            assert (await c.ok(bob, "GET", alice_status))["presence"] == "unavailable"
            await c.ok(alice, method, path, body)
            back = await c.ok(bob, "GET", alice_status)
            assert (back["presence"], back["currently_active"]) == ("online", True), path
            assert back["last_active_ago"] < CURRENTLY_ACTIVE_S * 1000

        # Unavailable by her own choice: a message is seen, the choice kept.
        await c.ok(alice, "PUT", alice_status, {"presence": "unavailable"})
        await _jump(paced_clock, STEP_S)
        await c.ok(alice, "PUT", f"/rooms/{q(room)}/send/m.room.message/2", {"body": "y"})
        kept = await c.ok(bob, "GET", alice_status)
        assert (kept["presence"], kept["currently_active"]) == ("unavailable", False)
        assert kept["last_active_ago"] < STEP_S * 1000


async def test_an_idle_user_is_sent_to_other_servers_as_unavailable(
    tmp_path: Path, paced_clock: MockClock
) -> None:
    async with two_servers(tmp_path) as servers:
        a, _, ca, cb, alice, bob = servers
        await share_a_room(servers)
        alice_status = f"/presence/{q(alice.user_id)}/status"
        await ca.ok(alice, "GET", "/sync", params={"timeout": "0"})

        async def online_at_b() -> bool:
            said = await cb.ok(bob, "GET", alice_status)
            return bool(said["presence"] == "online")

        await eventually(online_at_b, "Alice online at B")
        await _step(paced_clock, ca, alice, STEPS_SHORT_OF_IDLE)
        await _after_a_change(paced_clock, a.server.stream_notifier, STEP_S)

        async def unavailable_at_b() -> bool:
            said = await cb.ok(bob, "GET", alice_status)
            return bool(said["presence"] == "unavailable")

        await eventually(unavailable_at_b, "Alice unavailable at B")
        at_b = await cb.ok(bob, "GET", alice_status)
        assert at_b["currently_active"] is False
        assert at_b["last_active_ago"] >= IDLE_AFTER_S * 1000
