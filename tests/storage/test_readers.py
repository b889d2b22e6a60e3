import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from ranvier.errors import MatrixError, StorageUnavailableError
from ranvier.storage import EventToPersist, ReaderPool, Storage

ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]


async def test_a_long_read_does_not_block_writes(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    await storage.persist_events([make_event("$a", before=base)])
    reading = threading.Event()
    finish = threading.Event()

    def long_read(conn: sqlite3.Connection) -> tuple[int, int]:
        first = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        reading.set()
        if not finish.wait(timeout=20):
            raise AssertionError("the read was never let go")
        second = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return first, second

    results: dict[str, Any] = {}

    async def reader() -> None:
        results["counts"] = await storage.readers.read(long_read)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.to_thread.run_sync(reading.wait)
        # The read transaction is open; the writer commits anyway, and a
        # fresh read sees the commit.
        await storage.persist_events([make_event("$b", before=base, prev=("$a",))])
        assert await storage.have_seen_events(["$a", "$b"]) == {"$a", "$b"}
        finish.set()
    # The long read kept the snapshot it started with.
    assert results["counts"] == (1, 1)


async def test_reads_run_at_most_size_at_a_time_on_reused_connections(
    storage: Storage,
) -> None:
    pool = ReaderPool(storage.path, size=2)
    inside = threading.Semaphore(0)
    finish = threading.Event()

    def blocking_read(conn: sqlite3.Connection) -> int:
        inside.release()
        finish.wait(timeout=20)
        return id(conn)

    used: list[int] = []

    async def reader() -> None:
        used.append(await pool.read(blocking_read))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(reader)
        for _ in range(2):
            await trio.to_thread.run_sync(inside.acquire)
        await wait_all_tasks_blocked()
        assert pool.limiter.statistics().tasks_waiting == 1
        finish.set()
    again = await pool.read(lambda conn: id(conn))
    pool.close()
    assert len(used) == 3
    assert len(set(used) | {again}) == 2


async def test_readers_cannot_write_and_survive_errors(storage: Storage) -> None:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO rooms VALUES ('!x:example.org', '10')")

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await storage.readers.read(write)
    with pytest.raises(MatrixError, match="does not exist"):
        await storage.get_state_ids(999)
    assert await storage.get_room_version(ROOM) == "10"


async def test_a_closed_pool_refuses_reads(storage: Storage) -> None:
    pool = ReaderPool(storage.path, size=1)
    assert await pool.read(lambda conn: 1) == 1
    pool.close()
    with pytest.raises(StorageUnavailableError, match="reader pool is closed"):
        await pool.read(lambda conn: 1)


def test_a_pool_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ReaderPool("unused.db", size=0)
