"""Presence lapsing on a stepped mock clock, over a real test homeserver: a user
online through syncs goes offline once they stop, another server's user
once their server goes quiet, and each lapse is a change of the stream.
"""

from __future__ import annotations

from pathlib import Path

from _stepped_presence import changed_after, nothing_after
from trio.testing import MockClock

from ranvier.core.presence import CURRENTLY_ACTIVE_S, REMOTE_TIMEOUT_MS, SYNC_ONLINE_TIMEOUT_MS
from ranvier.testing.homeserver import open_test_homeserver

REMOTE_USER = "@dana:elsewhere.example"


async def test_syncing_keeps_a_user_online_and_stopping_lets_it_lapse(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        notifier = hs.server.stream_notifier
        alice = (await hs.register_user("alice")).user_id
        await hs.server.create_room(alice)
        long_poll_ms = 10_000
        start = await presence.position()

        await presence.on_sync(alice, "online", long_poll_ms)
        assert (await presence.get_presence(alice, alice))["presence"] == "online"
        assert await presence.position() == start + 1
        # Syncing on, in the same state, moves nothing but keeps it.
        await nothing_after(mock_clock, 30)
        await presence.on_sync(alice, "online", long_poll_ms)
        assert await presence.position() == start + 1
        # Meanwhile, a minute after coming, no longer currently active.
        await changed_after(mock_clock, notifier, CURRENTLY_ACTIVE_S - 30)
        said = await presence.get_presence(alice, alice)
        assert (said["presence"], said["currently_active"]) == ("online", False)
        assert await presence.position() == start + 2
        lapse_s = (long_poll_ms + SYNC_ONLINE_TIMEOUT_MS) / 1000
        await nothing_after(mock_clock, 30 + lapse_s - CURRENTLY_ACTIVE_S - 1)
        assert (await presence.get_presence(alice, alice))["presence"] == "online"
        assert await presence.position() == start + 2
        await changed_after(mock_clock, notifier, 1)
        assert (await presence.get_presence(alice, alice))["presence"] == "offline"
        assert await presence.position() == start + 3
        assert notifier.position.presence == start + 3
        lapsed = await presence.for_sync(alice, start + 2, start + 3)
        assert [(e["sender"], e["content"]["presence"]) for e in lapsed] == [(alice, "offline")]


async def test_another_servers_user_lapses_when_their_server_goes_quiet(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        presence = hs.server.presence
        pushed = [
            {
                "user_id": REMOTE_USER,
                "presence": "online",
                "last_active_ago": 5000,
                "currently_active": True,
            }
        ]
        # Only the user's own server may speak for them.
        assert await presence.on_remote_presence("other.example", pushed) == 0
        assert await presence.on_remote_presence("elsewhere.example", pushed) == 1
        said = await presence.get_presence(REMOTE_USER, REMOTE_USER)
        assert said == {"presence": "online", "last_active_ago": 5000, "currently_active": True}
        await nothing_after(mock_clock, REMOTE_TIMEOUT_MS / 1000 - 1)
        # Renewed just before it would lapse; its last activity as it says.
        assert await presence.on_remote_presence("elsewhere.example", pushed) == 1
        await nothing_after(mock_clock, REMOTE_TIMEOUT_MS / 1000 - 1)
        said = await presence.get_presence(REMOTE_USER, REMOTE_USER)
        assert said["presence"] == "online"
        assert said["last_active_ago"] == 5000 + REMOTE_TIMEOUT_MS - 1000
        await changed_after(mock_clock, hs.server.stream_notifier, 1)
        said = await presence.get_presence(REMOTE_USER, REMOTE_USER)
        assert (said["presence"], said["currently_active"]) == ("offline", False)
