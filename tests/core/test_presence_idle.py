"""Presence following activity, on a mock clock over a real test
homeserver: a syncing user who does nothing stops being currently active,
then becomes unavailable; activity brings them back; what they chose
themselves stays.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from ranvier.core.notifier import StreamNotifier
from ranvier.core.presence import CURRENTLY_ACTIVE_S, IDLE_AFTER_S, Presence
from ranvier.testing.homeserver import open_test_homeserver

#: A long-poll longer than any wait here, so that nobody lapses to offline.
LONG_POLL_MS = 3600_000


async def _next_change(notifier: StreamNotifier) -> None:
    """Wait for the next change of presence, which reads the user's rooms
    in a thread, which the autojumping clock may not overtake in a sleep.
    """
    await notifier.wait_beyond(notifier.position)


async def test_a_syncing_user_who_does_nothing_idles_and_activity_brings_them_back(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        notifier = hs.server.stream_notifier
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        start = await presence.position()

        await presence.on_sync(alice, "online", LONG_POLL_MS)
        came = trio.current_time()
        now = await presence.get_presence(alice, alice)
        assert now == {"presence": "online", "last_active_ago": 0, "currently_active": True}
        assert await presence.position() == start + 1

        # Active for a minute: a sync within it changes nothing.
        await trio.sleep(CURRENTLY_ACTIVE_S / 2)
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        assert await presence.position() == start + 1
        said = await presence.get_presence(alice, alice)
        assert said["last_active_ago"] == CURRENTLY_ACTIVE_S / 2 * 1000
        assert said["currently_active"] is True

        # Then no longer currently active, a change of its own.
        await _next_change(notifier)
        assert trio.current_time() == came + CURRENTLY_ACTIVE_S
        assert await presence.position() == start + 2
        said = await presence.get_presence(alice, alice)
        assert said == {
            "presence": "online",
            "last_active_ago": CURRENTLY_ACTIVE_S * 1000,
            "currently_active": False,
        }

        # Syncing on is no activity: idle after five minutes, unavailable.
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        await _next_change(notifier)
        assert trio.current_time() == came + IDLE_AFTER_S
        assert await presence.position() == start + 3
        said = await presence.get_presence(alice, alice)
        assert said == {
            "presence": "unavailable",
            "last_active_ago": IDLE_AFTER_S * 1000,
            "currently_active": False,
        }
        idled = await presence.for_sync(alice, start + 2, start + 3)
        assert [(e["sender"], e["content"]["presence"]) for e in idled] == [(alice, "unavailable")]

        # A sync asking for online does not wake an idle user...
        await trio.sleep(10)
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        assert (await presence.get_presence(alice, alice))["presence"] == "unavailable"
        assert await presence.position() == start + 3

        # ...activity does, at once.
        await presence.user_active(alice)
        assert await presence.position() == start + 4
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "online", "last_active_ago": 0, "currently_active": True}
        back = await presence.for_sync(alice, start + 3, start + 4)
        assert [e["content"]["presence"] for e in back] == ["online"]

        # Activity while currently active changes nothing.
        await trio.sleep(CURRENTLY_ACTIVE_S / 2)
        await presence.user_active(alice)
        assert await presence.position() == start + 4
        # After that minute, activity makes them currently active again, and
        # moves idling on.
        await _next_change(notifier)
        assert await presence.position() == start + 5
        assert (await presence.get_presence(alice, alice))["currently_active"] is False
        await trio.sleep(IDLE_AFTER_S - CURRENTLY_ACTIVE_S - 10)
        assert (await presence.get_presence(alice, alice))["presence"] == "online"
        await presence.user_active(alice)
        active_again = trio.current_time()
        assert await presence.position() == start + 6
        assert (await presence.get_presence(alice, alice))["currently_active"] is True
        await _next_change(notifier)
        assert trio.current_time() == active_again + CURRENTLY_ACTIVE_S
        await _next_change(notifier)
        assert trio.current_time() == active_again + IDLE_AFTER_S
        assert (await presence.get_presence(alice, alice))["presence"] == "unavailable"


async def test_unavailable_chosen_by_the_user_stays_through_activity_and_time(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)

        await presence.set_presence(alice, alice, {"presence": "online"})
        await trio.sleep(20)
        await presence.set_presence(alice, alice, {"presence": "unavailable", "status_msg": "out"})
        await presence.on_sync(alice, "unavailable", LONG_POLL_MS)
        chosen = await presence.position()
        said = await presence.get_presence(alice, alice)
        assert said == {
            "presence": "unavailable",
            "status_msg": "out",
            "last_active_ago": 20_000,
            "currently_active": False,
        }

        # Activity is seen, but leaves the choice alone.
        await trio.sleep(5)
        await presence.user_active(alice)
        said = await presence.get_presence(alice, alice)
        assert said["presence"] == "unavailable"
        assert said["last_active_ago"] == 0
        assert said["currently_active"] is False
        # Nor does idling past the threshold change anything.
        await trio.sleep(IDLE_AFTER_S * 2)
        assert (await presence.get_presence(alice, alice))["presence"] == "unavailable"
        assert await presence.position() == chosen

        # Setting online is activity, and ends the choice.
        await presence.set_presence(alice, alice, {"presence": "online"})
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "online", "last_active_ago": 0, "currently_active": True}


async def test_activity_of_a_user_never_online_leaves_them_offline(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        start = await presence.position()

        await presence.user_active(alice)
        await trio.sleep(3)
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "offline", "last_active_ago": 3000, "currently_active": False}
        assert await presence.position() == start
        # Coming online by a sync is activity of its own.
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "online", "last_active_ago": 0, "currently_active": True}


async def test_the_idle_threshold_is_the_components_to_choose(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        notifier = StreamNotifier()
        presence = Presence(rooms=hs.server.room_reader, notifier=notifier, idle_after=30)
        async with trio.open_nursery() as nursery:
            await nursery.start(presence.run)
            await presence.on_sync(alice, "online", LONG_POLL_MS)
            came = trio.current_time()
            await _next_change(notifier)
            assert trio.current_time() == came + 30
            said = await presence.get_presence(alice, alice)
            assert said["presence"] == "unavailable"
            nursery.cancel_scope.cancel()
        with pytest.raises(ValueError, match="idle_after"):
            Presence(rooms=hs.server.room_reader, idle_after=0)
