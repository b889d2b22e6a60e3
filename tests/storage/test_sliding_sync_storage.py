"""Sliding sync connections in a real SQLite file: positions, what each
holds of each room, retries, the per-device bound, and every write run
twice through the replication encoding."""

from __future__ import annotations

from pathlib import Path

from _twice import run_twice, write_call

from ranvier.storage import Storage
from ranvier.storage import sliding_sync as module
from ranvier.storage.sliding_sync import MAX_CONNECTIONS_PER_DEVICE

ALICE = "@alice:example.org"
TABLES = ("sliding_sync_connections", "sliding_sync_positions", "sliding_sync_rooms")


async def _open(storage: Storage, conn_id: str = "", nonce: str = "n0", **rooms: int) -> int:
    return await storage.sliding_sync.open_connection(
        ALICE,
        "DEV",
        conn_id,
        nonce=nonce,
        token="s1_0",
        now_ms=1000,
        rooms=tuple((f"!{name}:x", upto, "c") for name, upto in rooms.items()),
    )


async def test_a_position_holds_the_newest_row_of_each_room(storage: Storage) -> None:
    sliding = storage.sliding_sync
    first = await _open(storage, a=1, b=1)
    state = await sliding.connection_at(ALICE, "DEV", "", first)
    assert state is not None
    assert state.rooms == {"!a:x": (1, "c"), "!b:x": (1, "c")}
    assert (state.token, state.made_ms) == ("s1_0", 1000)
    second = await sliding.advance_connection(
        state.conn_key, first, nonce="n1", token="s5_0", now_ms=2000, rooms=(("!a:x", 5, "d"),)
    )
    assert second is not None
    assert second > first
    later = await sliding.connection_at(ALICE, "DEV", "", second)
    assert later is not None
    assert later.rooms == {"!a:x": (5, "d"), "!b:x": (1, "c")}
    # The first position still answers as it was, until the second is used.
    again = await sliding.connection_at(ALICE, "DEV", "", first)
    assert again is not None
    assert again.rooms == state.rooms
    # A retry from the first drops the second, never received.
    retried = await sliding.advance_connection(
        state.conn_key, first, nonce="n2", token="s6_0", now_ms=3000, rooms=(("!b:x", 6, "c"),)
    )
    assert retried is not None
    assert await sliding.connection_at(ALICE, "DEV", "", second) is None
    now = await sliding.connection_at(ALICE, "DEV", "", retried)
    assert now is not None
    assert now.rooms == {"!a:x": (1, "c"), "!b:x": (6, "c")}
    # Going on from the retried position forgets the first.
    third = await sliding.advance_connection(
        state.conn_key, retried, nonce="n3", token="s7_0", now_ms=4000, rooms=()
    )
    assert third is not None
    assert await sliding.connection_at(ALICE, "DEV", "", first) is None
    assert (
        await sliding.advance_connection(
            state.conn_key, first, nonce="n4", token="s8_0", now_ms=5000, rooms=()
        )
        is None
    )
    kept = await sliding.connection_at(ALICE, "DEV", "", third)
    assert kept is not None
    assert kept.rooms == now.rooms


async def test_a_position_is_its_connections_alone(storage: Storage) -> None:
    sliding = storage.sliding_sync
    pos = await _open(storage, "main", a=1)
    assert await sliding.connection_at(ALICE, "DEV", "other", pos) is None
    assert await sliding.connection_at(ALICE, "DEV2", "main", pos) is None
    assert await sliding.connection_at("@bob:example.org", "DEV", "main", pos) is None
    # Opening the connection again starts it afresh.
    fresh = await _open(storage, "main", nonce="n1", b=2)
    assert await sliding.connection_at(ALICE, "DEV", "main", pos) is None
    state = await sliding.connection_at(ALICE, "DEV", "main", fresh)
    assert state is not None
    assert state.rooms == {"!b:x": (2, "c")}


async def test_a_device_keeps_a_bounded_number_of_connections(storage: Storage) -> None:
    sliding = storage.sliding_sync
    positions = [
        await _open(storage, f"c{index}", nonce=f"n{index}")
        for index in range(MAX_CONNECTIONS_PER_DEVICE + 2)
    ]
    kept = [
        index
        for index, pos in enumerate(positions)
        if await sliding.connection_at(ALICE, "DEV", f"c{index}", pos) is not None
    ]
    assert len(kept) == MAX_CONNECTIONS_PER_DEVICE
    assert kept[-1] == len(positions) - 1


async def test_opening_runs_twice_alike(storage: Storage, db_path: Path) -> None:
    operation = write_call(
        module.open_connection,
        user_id=ALICE,
        device_id="DEV",
        conn_id="",
        nonce="once",
        token="s1_0",
        now_ms=1,
        rooms=(("!a:x", 1, "c"),),
    )
    pos = await run_twice(storage, db_path, operation, TABLES)
    assert isinstance(pos, int)


async def test_advancing_runs_twice_alike(storage: Storage, db_path: Path) -> None:
    first = await _open(storage, a=1)
    state = await storage.sliding_sync.connection_at(ALICE, "DEV", "", first)
    assert state is not None
    operation = write_call(
        module.advance_connection,
        conn_key=state.conn_key,
        from_pos=first,
        nonce="twice",
        token="s2_0",
        now_ms=2,
        rooms=(("!a:x", 2, "c"),),
    )
    second = await run_twice(storage, db_path, operation, TABLES)
    assert second > first
