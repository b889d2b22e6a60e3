"""Device-list updates remembered while a room's state is partial: kept
only for a room still partial, bounded per room, forgotten by number, and
found again after the room was completed without them being sent on."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from _twice import run_twice, write_call

from conftest import ROOM, VERSION
from ranvier.storage import Storage
from ranvier.storage.partial_state_device_updates import _remember

OTHER = "!other:example.org"
ALICE = "@alice:example.org"


def _update(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [("m.device_list_update", {"user_id": ALICE, "device_id": "D", "stream_id": n})]


async def _partial(storage: Storage, room_id: str) -> None:
    await storage.store_room(room_id, VERSION)
    await storage.writer.submit(
        lambda conn: conn.execute(
            "INSERT INTO partial_state_rooms VALUES (?, '$join', 'a.example')", (room_id,)
        )
    )


async def _clear(storage: Storage, room_id: str) -> None:
    await storage.writer.submit(
        lambda conn: conn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (room_id,))
    )


async def test_updates_are_kept_for_partial_rooms_only_and_read_back_in_order(
    storage: Storage,
) -> None:
    updates = storage.partial_state_device_updates
    await _partial(storage, ROOM)
    complete = await updates.remember(
        [(ROOM, ["$b", "$a"], ["b.example", "a.example"]), (OTHER, ["$c"], [])],
        user_id=ALICE,
        position=5,
        edus=_update(5),
        keep=10,
    )
    assert complete == [OTHER]
    await updates.remember(
        [(ROOM, ["$d"], ["a.example"])], user_id=ALICE, position=6, edus=_update(6), keep=10
    )

    remembered = await updates.remembered(ROOM)
    assert [(u.point, u.sent_to, u.edus) for u in remembered] == [
        (["$a", "$b"], ["a.example", "b.example"], _update(5)),
        (["$d"], ["a.example"], _update(6)),
    ]
    assert await updates.remembered(OTHER) == []
    # The same update again (a write repeated) adds nothing.
    await updates.remember(
        [(ROOM, ["$d"], ["a.example"])], user_id=ALICE, position=6, edus=_update(6), keep=10
    )
    assert len(await updates.remembered(ROOM)) == 2


async def test_the_oldest_updates_of_a_room_go_beyond_the_bound(storage: Storage) -> None:
    updates = storage.partial_state_device_updates
    await _partial(storage, ROOM)
    await _partial(storage, OTHER)
    await updates.remember([(OTHER, [], [])], user_id=ALICE, position=1, edus=_update(1), keep=3)
    for n in range(2, 8):
        await updates.remember(
            [(ROOM, [f"${n}"], [])], user_id=ALICE, position=n, edus=_update(n), keep=3
        )
    assert [u.point for u in await updates.remembered(ROOM)] == [["$5"], ["$6"], ["$7"]]
    # Another room's are its own.
    assert len(await updates.remembered(OTHER)) == 1


async def test_forgetting_goes_up_to_a_number_and_leftovers_are_found(
    storage: Storage,
) -> None:
    updates = storage.partial_state_device_updates
    await _partial(storage, ROOM)
    await _partial(storage, OTHER)
    for n in (1, 2):
        await updates.remember(
            [(ROOM, [], []), (OTHER, [], [])], user_id=ALICE, position=n, edus=_update(n), keep=9
        )
    assert await updates.rooms_completed_with_updates() == []
    await _clear(storage, ROOM)
    assert await updates.rooms_completed_with_updates() == [ROOM]
    first, second = await updates.remembered(ROOM)
    assert await updates.forget(ROOM, first.number) == 1
    assert await updates.remembered(ROOM) == [second]
    assert await updates.forget(ROOM, second.number) == 1
    assert await updates.rooms_completed_with_updates() == []
    assert len(await updates.remembered(OTHER)) == 2


async def test_remembering_twice_through_replication_changes_nothing_more(
    storage: Storage, db_path: Path
) -> None:
    await _partial(storage, ROOM)
    answer = await run_twice(
        storage,
        db_path,
        write_call(
            _remember,
            rooms=[(ROOM, ["$a"], ["a.example"]), (OTHER, ["$a"], [])],
            user_id=ALICE,
            position=3,
            edus=b"[]",
            keep=5,
        ),
        ["partial_state_device_updates"],
    )
    assert answer == [OTHER]
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM partial_state_device_updates").fetchone() == (1,)
    finally:
        conn.close()
