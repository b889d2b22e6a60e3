"""The order of a room upgrade on a real server: a failure before the
tombstone leaves the old room as it was, with its aliases and listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ranvier.core.upgrade import RoomUpgrader
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver


class _Broken(Exception):
    pass


class _FailingMover:
    """A directory whose move fails after the new room has been made."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def move_directory_entries(self, old_room_id: str, new_room_id: str) -> list[str]:
        self.asked.append((old_room_id, new_room_id))
        raise _Broken("the directory could not be moved")


class _FailingCreation:
    """The server's event creator, except that it cannot make rooms."""

    def __init__(self, hs: TestHomeserver) -> None:
        self._creator = hs.server.event_creator

    async def create_room(self, creator: str, **kwargs: Any) -> str:
        raise _Broken("no room could be made")

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Any,
        *,
        state_key: str | None = None,
    ) -> str:
        return await self._creator.send_event(
            sender, room_id, event_type, content, state_key=state_key
        )


async def _state_ids(hs: TestHomeserver, room_id: str) -> dict[tuple[str, str], str]:
    return dict(await hs.server.storage.get_current_state_ids(room_id))


async def _old_room(hs: TestHomeserver) -> tuple[str, str]:
    alice = (await hs.register_user("alice")).user_id
    room_id = await hs.server.create_room(alice, preset="public_chat", room_version="10")
    await hs.server.room_directory.create_alias(alice, "#old:localhost", room_id)
    await hs.server.storage.client_data.set_room_listed(room_id, True, 1)
    return alice, room_id


async def test_a_failed_directory_move_sends_no_tombstone(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _old_room(hs)
        before = await _state_ids(hs, room_id)
        mover = _FailingMover()
        upgrader = RoomUpgrader(
            events=hs.server.event_creator,
            store=hs.server.storage,
            directory=mover,
            claims=hs.server.storage.room_upgrades,
        )

        with pytest.raises(_Broken):
            await upgrader.upgrade(alice, room_id, "11")

        ((old, new),) = mover.asked
        assert old == room_id
        # The new room was made whole; the old one did not hear of it.
        assert await hs.server.storage.get_room_version(new) == "11"
        assert await _state_ids(hs, room_id) == before
        assert await hs.server.storage.aliases.get_room_aliases(room_id) == ["#old:localhost"]
        assert await hs.server.storage.client_data.is_room_listed(room_id)


async def test_a_room_that_cannot_be_made_leaves_the_old_one_alone(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _old_room(hs)
        before = await _state_ids(hs, room_id)
        upgrader = RoomUpgrader(
            events=_FailingCreation(hs),
            store=hs.server.storage,
            directory=hs.server.storage.room_upgrades,
            claims=hs.server.storage.room_upgrades,
        )

        with pytest.raises(_Broken):
            await upgrader.upgrade(alice, room_id, "12")

        assert await _state_ids(hs, room_id) == before
        assert await hs.server.storage.aliases.get_room_aliases(room_id) == ["#old:localhost"]
        # Nothing stands in the way of trying again.
        working = RoomUpgrader(
            events=hs.server.event_creator,
            store=hs.server.storage,
            directory=hs.server.storage.room_upgrades,
            claims=hs.server.storage.room_upgrades,
        )
        new = await working.upgrade(alice, room_id, "12")
        assert await hs.server.storage.aliases.get_room_aliases(new) == ["#old:localhost"]
