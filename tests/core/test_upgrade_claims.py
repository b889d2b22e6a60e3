"""One upgrade of a room at a time across processes: two upgraders over
one database, each with its own in-process lock as the main process and a
client_reader worker have, make one new room between them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from ranvier.core.upgrade import CLAIM_STALE_AFTER_MS, RoomUpgrader
from ranvier.errors import MatrixError
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_NOW = 1_800_000_000_000


class _RecordingCreator:
    """The server's event creator, noting the rooms it makes and able to
    hold room creation until released.
    """

    def __init__(self, hs: TestHomeserver) -> None:
        self._creator = hs.server.event_creator
        self.made: list[str] = []
        self.creating = trio.Event()
        self.hold: trio.Event | None = None

    async def create_room(self, creator: str, **kwargs: Any) -> str:
        self.creating.set()
        if self.hold is not None:
            await self.hold.wait()
        room_id = await self._creator.create_room(creator, **kwargs)
        self.made.append(room_id)
        return room_id

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
    ) -> str:
        return await self._creator.send_event(
            sender, room_id, event_type, content, state_key=state_key
        )


def _upgrader(hs: TestHomeserver, events: _RecordingCreator, **kwargs: Any) -> RoomUpgrader:
    storage = hs.server.storage
    kwargs.setdefault("claims", storage.room_upgrades)
    return RoomUpgrader(events=events, store=storage, directory=storage.room_upgrades, **kwargs)


async def _room(hs: TestHomeserver) -> tuple[str, str]:
    alice = (await hs.register_user("alice")).user_id
    room_id = await hs.server.create_room(alice, preset="public_chat", room_version="10")
    await hs.server.room_directory.create_alias(alice, "#old:localhost", room_id)
    return alice, room_id


async def _replacement(hs: TestHomeserver, room_id: str) -> object:
    """The room the old room's tombstone names; None if it has none."""
    state = await hs.server.storage.get_current_state_ids(room_id)
    event_id = state.get(("m.room.tombstone", ""))
    if event_id is None:
        return None
    rows = await hs.server.storage.get_events([event_id])
    return json.loads(rows[event_id].json)["content"]["replacement_room"]


async def _upgrade_both(
    first: RoomUpgrader, second: RoomUpgrader, user_id: str, room_id: str, versions: list[str]
) -> list[str | MatrixError]:
    """Both upgrades at once; each one's new room or Matrix error."""
    results: list[str | MatrixError] = ["", ""]

    async def run(index: int, upgrader: RoomUpgrader) -> None:
        try:
            results[index] = await upgrader.upgrade(user_id, room_id, versions[index])
        except MatrixError as error:
            results[index] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, first)
        nursery.start_soon(run, 1, second)
    return results


async def test_two_processes_repeating_an_upgrade_make_one_room(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _room(hs)
        main, worker = _RecordingCreator(hs), _RecordingCreator(hs)

        results = await _upgrade_both(
            _upgrader(hs, main), _upgrader(hs, worker), alice, room_id, ["11", "11"]
        )

        made = main.made + worker.made
        assert len(made) == 1
        assert results == [made[0], made[0]]
        assert await _replacement(hs, room_id) == made[0]
        assert await hs.server.storage.aliases.get_room_aliases(made[0]) == ["#old:localhost"]


async def test_a_different_upgrade_at_the_same_time_is_refused(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _room(hs)
        main, worker = _RecordingCreator(hs), _RecordingCreator(hs)

        results = await _upgrade_both(
            _upgrader(hs, main), _upgrader(hs, worker), alice, room_id, ["11", "12"]
        )

        made = main.made + worker.made
        assert len(made) == 1
        assert made[0] in results
        (refused,) = [result for result in results if isinstance(result, MatrixError)]
        assert refused.errcode == "M_BAD_STATE"
        assert refused.http_status == 400
        assert await _replacement(hs, room_id) == made[0]


async def test_a_claim_held_elsewhere_is_waited_for_then_refused(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _room(hs)
        claims = hs.server.storage.room_upgrades
        young = _NOW - CLAIM_STALE_AFTER_MS + 60_000
        assert await claims.take_upgrade_claim(
            room_id, "@bob:localhost", "11", claim_id="bob", now_ms=young, stale_before_ms=0
        )
        events = _RecordingCreator(hs)
        upgrader = _upgrader(hs, events, clock_ms=lambda: _NOW, claim_wait_s=0.5)

        with pytest.raises(MatrixError) as refused:
            await upgrader.upgrade(alice, room_id, "11")

        assert refused.value.errcode == "M_BAD_STATE"
        assert "being upgraded" in refused.value.message
        assert events.made == []
        assert await _replacement(hs, room_id) is None
        # The other process's claim is still its own.
        assert not await claims.take_upgrade_claim(
            room_id, "@carol:localhost", "11", claim_id="carol", now_ms=_NOW, stale_before_ms=young
        )


async def test_a_stale_claim_is_taken_over(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _room(hs)
        claims = hs.server.storage.room_upgrades
        stale = _NOW - CLAIM_STALE_AFTER_MS - 1
        assert await claims.take_upgrade_claim(
            room_id, "@dead:localhost", "11", claim_id="dead", now_ms=stale, stale_before_ms=0
        )
        events = _RecordingCreator(hs)
        upgrader = _upgrader(hs, events, clock_ms=lambda: _NOW, claim_wait_s=0)

        new_room = await upgrader.upgrade(alice, room_id, "11")

        assert events.made == [new_room]
        assert await _replacement(hs, room_id) == new_room
        # Released when done: a fresh claim is free to take.
        assert await claims.take_upgrade_claim(
            room_id, "@carol:localhost", "11", claim_id="carol", now_ms=_NOW, stale_before_ms=0
        )


async def test_a_cancelled_upgrade_releases_its_claim(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _room(hs)
        events = _RecordingCreator(hs)
        events.hold = trio.Event()
        upgrader = _upgrader(hs, events)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upgrader.upgrade, alice, room_id, "11")
            await events.creating.wait()
            nursery.cancel_scope.cancel()

        assert events.made == []
        assert await hs.server.storage.room_upgrades.take_upgrade_claim(
            room_id, "@carol:localhost", "11", claim_id="carol", now_ms=_NOW, stale_before_ms=0
        )


class _UnreleasableClaims:
    """The room's claims as storage keeps them, but a release fails, as one
    through a main process that is down would."""

    def __init__(self, hs: TestHomeserver) -> None:
        self._claims = hs.server.storage.room_upgrades

    async def take_upgrade_claim(
        self, room_id: str, user_id: str, new_version: str, **kw: Any
    ) -> bool:
        return await self._claims.take_upgrade_claim(room_id, user_id, new_version, **kw)

    async def release_upgrade_claim(self, room_id: str, *, claim_id: str) -> None:
        raise MatrixError("the main process is not answering", http_status=502)


async def test_a_failed_release_does_not_hide_how_the_upgrade_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice, room_id = await _room(hs)
        events = _RecordingCreator(hs)
        upgrader = _upgrader(hs, events, claims=_UnreleasableClaims(hs))

        new_room = await upgrader.upgrade(alice, room_id, "11")

        assert events.made == [new_room]
        assert await _replacement(hs, room_id) == new_room
        assert "could not release the upgrade claim" in caplog.text
        # An upgrade refused once claimed is refused as such, not as the
        # release's failure: Bob has no power in Alice's room.
        other = await hs.server.create_room(alice, preset="public_chat", room_version="10")
        bob = (await hs.register_user("bob")).user_id
        await hs.server.join_room(bob, other)
        with pytest.raises(MatrixError) as refused:
            await upgrader.upgrade(bob, other, "11")
        assert (refused.value.errcode, refused.value.http_status) == ("M_FORBIDDEN", 403)
        assert events.made == [new_room]
