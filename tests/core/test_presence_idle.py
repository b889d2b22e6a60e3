"""Presence following activity, on a stepped mock clock over a real test
homeserver: a syncing user who does nothing stops being currently active,
then becomes unavailable; activity brings them back; what they chose
themselves stays.

The clock moves only when a test jumps it, so the reads in threads that a
change makes cannot let time run on under them (see _stepped_presence).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _stepped_presence import changed_after, nothing_after
from trio.testing import MockClock

from ranvier.core.notifier import StreamNotifier
from ranvier.core.presence import CURRENTLY_ACTIVE_S, IDLE_AFTER_S, Presence
from ranvier.testing.homeserver import open_test_homeserver

#: A long-poll longer than any wait here, so that nobody lapses to offline.
LONG_POLL_MS = 3600_000


async def test_a_syncing_user_who_does_nothing_idles_and_activity_brings_them_back(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        notifier = hs.server.stream_notifier
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        start = await presence.position()

        await presence.on_sync(alice, "online", LONG_POLL_MS)
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "online", "last_active_ago": 0, "currently_active": True}
        assert await presence.position() == start + 1

        # Active for a minute: a sync within it changes nothing.
        await nothing_after(mock_clock, CURRENTLY_ACTIVE_S / 2)
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        assert await presence.position() == start + 1
        said = await presence.get_presence(alice, alice)
        assert said["last_active_ago"] == CURRENTLY_ACTIVE_S / 2 * 1000
        assert said["currently_active"] is True

        # Then no longer currently active, a change of its own.
        await changed_after(mock_clock, notifier, CURRENTLY_ACTIVE_S / 2)
        assert await presence.position() == start + 2
        said = await presence.get_presence(alice, alice)
        assert said == {
            "presence": "online",
            "last_active_ago": CURRENTLY_ACTIVE_S * 1000,
            "currently_active": False,
        }

        # Syncing on is no activity: idle after five minutes, unavailable.
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        await nothing_after(mock_clock, IDLE_AFTER_S - CURRENTLY_ACTIVE_S - 1)
        assert await presence.position() == start + 2
        await changed_after(mock_clock, notifier, 1)
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
        await nothing_after(mock_clock, 10)
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

        # Activity while currently active changes nothing, but counts.
        await nothing_after(mock_clock, CURRENTLY_ACTIVE_S / 2)
        await presence.user_active(alice)
        assert await presence.position() == start + 4
        await nothing_after(mock_clock, CURRENTLY_ACTIVE_S / 2)
        assert (await presence.get_presence(alice, alice))["currently_active"] is True
        await changed_after(mock_clock, notifier, CURRENTLY_ACTIVE_S / 2)
        assert await presence.position() == start + 5
        assert (await presence.get_presence(alice, alice))["currently_active"] is False

        # Activity after that minute is a change, and moves idling on.
        await nothing_after(mock_clock, IDLE_AFTER_S - CURRENTLY_ACTIVE_S - 10)
        assert (await presence.get_presence(alice, alice))["presence"] == "online"
        await presence.user_active(alice)
        assert await presence.position() == start + 6
        assert (await presence.get_presence(alice, alice))["currently_active"] is True
        await changed_after(mock_clock, notifier, CURRENTLY_ACTIVE_S)
        await nothing_after(mock_clock, IDLE_AFTER_S - CURRENTLY_ACTIVE_S - 1)
        assert (await presence.get_presence(alice, alice))["presence"] == "online"
        await changed_after(mock_clock, notifier, 1)
        assert (await presence.get_presence(alice, alice))["presence"] == "unavailable"
        assert await presence.position() == start + 8


async def test_unavailable_chosen_by_the_user_stays_through_activity_and_time(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)

        await presence.set_presence(alice, alice, {"presence": "online"})
        await nothing_after(mock_clock, 20)
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
        await nothing_after(mock_clock, 5)
        await presence.user_active(alice)
        said = await presence.get_presence(alice, alice)
        assert said["presence"] == "unavailable"
        assert said["last_active_ago"] == 0
        assert said["currently_active"] is False
        # Nor does idling past the threshold change anything.
        await nothing_after(mock_clock, IDLE_AFTER_S * 2)
        assert (await presence.get_presence(alice, alice))["presence"] == "unavailable"
        assert await presence.position() == chosen

        # Setting online is activity, and ends the choice.
        await presence.set_presence(alice, alice, {"presence": "online"})
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "online", "last_active_ago": 0, "currently_active": True}


async def test_activity_of_a_user_never_online_leaves_them_offline(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        start = await presence.position()

        await presence.user_active(alice)
        await nothing_after(mock_clock, 3)
        assert await presence.get_presence(alice, alice) == {"presence": "offline"}
        assert await presence.position() == start
        # Coming online by a sync is activity of its own.
        await presence.on_sync(alice, "online", LONG_POLL_MS)
        said = await presence.get_presence(alice, alice)
        assert said == {"presence": "online", "last_active_ago": 0, "currently_active": True}


async def test_the_idle_threshold_is_the_components_to_choose(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        notifier = StreamNotifier()
        presence = Presence(rooms=hs.server.room_reader, notifier=notifier, idle_after=30)
        async with trio.open_nursery() as nursery:
            await nursery.start(presence.run)
            await presence.on_sync(alice, "online", LONG_POLL_MS)
            await nothing_after(mock_clock, 29)
            assert (await presence.get_presence(alice, alice))["presence"] == "online"
            await changed_after(mock_clock, notifier, 1)
            said = await presence.get_presence(alice, alice)
            assert said == {
                "presence": "unavailable",
                "last_active_ago": 30_000,
                "currently_active": False,
            }
            nursery.cancel_scope.cancel()
        with pytest.raises(ValueError, match="idle_after"):
            Presence(rooms=hs.server.room_reader, idle_after=0)
