"""The order of a room upgrade on a real server: a failure before the
tombstone leaves the old room as it was, with its aliases and listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from ranvier.core.upgrade import RoomUpgrader
from ranvier.errors import MatrixError
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


async def _state_contents(hs: TestHomeserver, room_id: str) -> dict[tuple[str, str], Any]:
    ids = await _state_ids(hs, room_id)
    rows = await hs.server.storage.get_events(list(ids.values()))
    events = {key: msgspec.json.decode(rows[event_id].json) for key, event_id in ids.items()}
    return {key: (event["sender"], event["content"]) for key, event in events.items()}


def _upgrader(hs: TestHomeserver) -> RoomUpgrader:
    return RoomUpgrader(
        events=hs.server.event_creator,
        store=hs.server.storage,
        directory=hs.server.storage.room_upgrades,
        claims=hs.server.storage.room_upgrades,
    )


@pytest.mark.parametrize("new_version", ["11", "12"])
async def test_bans_follow_the_room_with_their_reasons(tmp_path: Path, new_version: str) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        server = hs.server
        alice = (await hs.register_user("alice")).user_id
        room_id = await server.create_room(alice, preset="public_chat", room_version="10")
        await server.join_room("@bob:localhost", room_id)
        await server.event_creator.ban(alice, room_id, "@bob:localhost", reason="spam")
        # A ban of a user of another server who never came, with a field of
        # the banning user's own, and no reason.
        await server.send_event(
            alice,
            room_id,
            "m.room.member",
            {"membership": "ban", "org.example.note": "seen elsewhere"},
            state_key="@mallory:elsewhere.example",
        )

        new = await _upgrader(hs).upgrade(alice, room_id, new_version)

        state = await _state_contents(hs, new)
        members = {key[1]: value for key, value in state.items() if key[0] == "m.room.member"}
        assert members == {
            alice: (alice, {"membership": "join"}),
            "@bob:localhost": (alice, {"membership": "ban", "reason": "spam"}),
            "@mallory:elsewhere.example": (alice, {"membership": "ban"}),
        }
        with pytest.raises(MatrixError) as refused:
            await server.join_room("@bob:localhost", new)
        assert refused.value.errcode == "M_FORBIDDEN"


async def test_a_requester_below_the_ban_level_is_raised_to_copy_the_bans(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        server = hs.server
        alice = (await hs.register_user("alice")).user_id
        bob = "@bob:localhost"
        room_id = await server.create_room(alice, preset="public_chat", room_version="10")
        await server.join_room(bob, room_id)
        await server.event_creator.ban(alice, room_id, "@mallory:elsewhere.example")
        # Bob, at 50, may upgrade and send every copied state event, but
        # banning takes 75.
        levels = {
            "users": {alice: 100, bob: 50},
            "users_default": 0,
            "events_default": 0,
            "state_default": 50,
            "ban": 75,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "events": {"m.room.tombstone": 50, "m.room.power_levels": 50},
        }
        await server.send_event(alice, room_id, "m.room.power_levels", levels, state_key="")

        new = await _upgrader(hs).upgrade(bob, room_id, "11")

        state = await _state_contents(hs, new)
        assert state[("m.room.member", "@mallory:elsewhere.example")] == (
            bob,
            {"membership": "ban"},
        )
        # Raised for the copy, then put back.
        assert state[("m.room.power_levels", "")] == (bob, levels)


async def test_a_ban_the_new_room_refuses_is_left_out(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        server = hs.server
        alice = (await hs.register_user("alice")).user_id
        room_id = await server.create_room(alice, preset="public_chat", room_version="11")
        await server.event_creator.ban(alice, room_id, "@carol:elsewhere.example")
        await server.event_creator.ban(alice, room_id, "@dan:elsewhere.example")

        # Carol, named a creator of the new room, is above any ban there.
        new = await _upgrader(hs).upgrade(
            alice, room_id, "12", additional_creators=["@carol:elsewhere.example"]
        )

        state = await _state_contents(hs, new)
        assert ("m.room.member", "@carol:elsewhere.example") not in state
        assert state[("m.room.member", "@dan:elsewhere.example")] == (
            alice,
            {"membership": "ban"},
        )
        tombstone = (await _state_contents(hs, room_id))[("m.room.tombstone", "")]
        assert tombstone[1]["replacement_room"] == new
