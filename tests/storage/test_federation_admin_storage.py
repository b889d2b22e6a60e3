"""The federation admin API's storage on a real SQLite file: destinations
known from either table, sorted, filtered, paged and counted; their rooms;
and a backoff cleared, run twice."""

from __future__ import annotations

from pathlib import Path

from _twice import run_twice, write_call

from ranvier.storage import Storage
from ranvier.storage import admin_federation as module
from ranvier.storage.admin_federation import DestinationQuery, DestinationRoomRow, DestinationRow
from ranvier.storage.records import DestinationRetry

ROOM = "!room:example.org"  # made by the storage fixture
OTHER_ROOM = "!other:example.org"


async def _destinations(storage: Storage) -> None:
    """b.test failing since 100 (last try 400, every 9 s), d.test failing
    since 50 (last try 700, every 3 s), a.test and c%_.test well with rooms."""
    await storage.store_room(OTHER_ROOM, "10")
    for name, failure_ts, last_ts, interval in (
        ("b.test", 100, 400, 9_000),
        ("d.test", 50, 700, 3_000),
    ):
        await storage.store_destination_retry(
            name,
            DestinationRetry(
                destination=name,
                failure_ts=failure_ts,
                retry_last_ts=last_ts,
                retry_interval_ms=interval,
            ),
        )
    await storage.store_destination_rooms("a.test", {ROOM: 7, OTHER_ROOM: 9})
    await storage.mark_destination_rooms_sent("a.test", {ROOM: 5, OTHER_ROOM: 3})
    await storage.store_destination_rooms("c%_.test", {ROOM: 4})
    await storage.store_destination_rooms("b.test", {ROOM: 2})


async def _names(storage: Storage, **query: object) -> tuple[list[str], int]:
    rows, total = await storage.federation_admin.list_destinations(DestinationQuery(**query))  # type: ignore[arg-type]
    return [row.destination for row in rows], total


async def test_destinations_of_either_table_are_listed_sorted_and_counted(storage: Storage) -> None:
    await _destinations(storage)
    everyone = ["a.test", "b.test", "c%_.test", "d.test"]
    assert await _names(storage) == (everyone, 4)
    assert await _names(storage, backwards=True) == (everyone[::-1], 4)
    # Those that are well (0) first, ties by name.
    assert await _names(storage, order_by="retry_last_ts") == (
        ["a.test", "c%_.test", "b.test", "d.test"],
        4,
    )
    assert await _names(storage, order_by="retry_interval", backwards=True) == (
        ["b.test", "d.test", "c%_.test", "a.test"],
        4,
    )
    assert await _names(storage, order_by="failure_ts") == (
        ["a.test", "c%_.test", "d.test", "b.test"],
        4,
    )
    assert await _names(storage, order_by="last_successful_stream_ordering", backwards=True) == (
        ["a.test", "d.test", "c%_.test", "b.test"],
        4,
    )
    assert await _names(storage, offset=1, limit=2) == (["b.test", "c%_.test"], 4)
    assert await _names(storage, offset=9) == ([], 4)


async def test_the_name_filter_matches_parts_and_takes_wildcards_literally(
    storage: Storage,
) -> None:
    await _destinations(storage)
    assert await _names(storage, name_contains="B.TE") == (["b.test"], 1)
    assert await _names(storage, name_contains="%_") == (["c%_.test"], 1)
    assert await _names(storage, name_contains="_") == (["c%_.test"], 1)
    assert await _names(storage, name_contains="nowhere") == ([], 0)


async def test_one_destination_and_its_rooms(storage: Storage) -> None:
    await _destinations(storage)
    admin = storage.federation_admin
    assert await admin.destination("a.test") == DestinationRow(
        destination="a.test",
        failure_ts=None,
        retry_last_ts=0,
        retry_interval_ms=0,
        last_sent_stream_ordering=5,
    )
    assert await admin.destination("b.test") == DestinationRow(
        destination="b.test",
        failure_ts=100,
        retry_last_ts=400,
        retry_interval_ms=9_000,
        last_sent_stream_ordering=None,
    )
    assert await admin.destination("nowhere.test") is None
    rooms = sorted([ROOM, OTHER_ROOM])
    expected = {
        ROOM: DestinationRoomRow(ROOM, 7, 5),
        OTHER_ROOM: DestinationRoomRow(OTHER_ROOM, 9, 3),
    }
    assert await admin.destination_rooms("a.test", offset=0, limit=10, backwards=False) == (
        [expected[room] for room in rooms],
        2,
    )
    assert await admin.destination_rooms("a.test", offset=0, limit=1, backwards=True) == (
        [expected[rooms[1]]],
        2,
    )
    assert await admin.destination_rooms("b.test", offset=0, limit=10, backwards=False) == (
        [DestinationRoomRow(ROOM, 2, None)],
        1,
    )
    assert await admin.destination_rooms("nowhere.test", offset=0, limit=10, backwards=False) == (
        [],
        0,
    )


async def test_clearing_a_backoff_keeps_the_destination_known_by_its_rooms(
    storage: Storage, db_path: Path
) -> None:
    await _destinations(storage)
    await run_twice(
        storage,
        db_path,
        write_call(module.clear_destination_backoff, name="b.test"),
        ["destinations"],
    )
    assert await storage.get_destination_retry("b.test") is None
    assert await storage.get_destination_retry("d.test") is not None
    row = await storage.federation_admin.destination("b.test")
    assert row is not None
    assert (row.failure_ts, row.retry_last_ts, row.retry_interval_ms) == (None, 0, 0)
