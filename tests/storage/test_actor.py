"""The storage actor's contract: group commit, failures that stay with their
request, the partial-state race, cancellation, and fatal errors.

Every interleaving here is forced, not hoped for: a gate write holds the
writer thread while other requests queue up behind it in a known order
(each caller is started only once the one before is blocked).
"""

import functools
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from ranvier.errors import (
    MatrixError,
    PartialStateConflictError,
    PartialStateEventsRemainError,
    StorageUnavailableError,
)
from ranvier.storage import EventToPersist, Storage, StorageActor, is_fatal_database_error

ROOM = "!room:example.org"
CREATE = ("m.room.create", "")
EventFactory = Callable[..., EventToPersist]


class Gate:
    """A write that holds the writer thread until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> str:
        self.entered.set()
        if not self.opened.wait(timeout=20):
            raise AssertionError("the gate was never opened")
        return "through"

    async def wait_entered(self) -> None:
        await trio.to_thread.run_sync(self.entered.wait)

    def open(self) -> None:
        self.opened.set()


class Calls:
    """Callers started one after another, so their requests queue in order;
    each one's result or exception is kept by name.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.results: dict[str, Any] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, name: str, call: Callable[[], Awaitable[Any]]) -> None:
        scope = trio.CancelScope()
        self.scopes[name] = scope

        async def caller() -> None:
            with scope:
                try:
                    self.results[name] = await call()
                except Exception as exc:
                    self.results[name] = exc
            if scope.cancelled_caught:
                self.results[name] = "cancelled"

        self.nursery.start_soon(caller)
        await wait_all_tasks_blocked()


async def _base(storage: Storage) -> int:
    return await storage.store_state_group(ROOM, None, {CREATE: "$create"})


async def _partial_room(storage: Storage, make_event: EventFactory) -> int:
    """A room joined with partial state whose join event is already resolved,
    so only events written from now on have partial state.
    """
    base = await _base(storage)
    await storage.store_partial_join(ROOM, "10", "$join", "hs.example", ["hs.example"])
    await storage.persist_events([make_event("$join", before=base, partial=True)])
    await storage.update_state_for_partial_event("$join", base, None)
    return base


async def test_waiting_requests_share_one_transaction(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    base = await _base(storage)
    gate = Gate()
    async with trio.open_nursery() as nursery:
        calls = Calls(nursery)
        await calls.start("gate", lambda: storage.actor.submit(gate))
        await gate.wait_entered()
        before = storage.actor.stats
        for n in range(5):
            event = make_event(f"$e{n}", before=base)
            await calls.start(f"e{n}", functools.partial(storage.persist_events, [event]))
        gate.open()
    stats = storage.actor.stats
    assert stats.batches - before.batches == 2  # the gate's own, then all five
    assert stats.largest_batch == 5
    orderings = [calls.results[f"e{n}"][f"$e{n}"] for n in range(5)]
    assert orderings == sorted(orderings)  # written in the order they were sent


async def test_a_conflicting_request_fails_alone_in_its_batch(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    base = await _base(storage)  # the room never had partial state
    gate = Gate()
    async with trio.open_nursery() as nursery:
        calls = Calls(nursery)
        await calls.start("gate", lambda: storage.actor.submit(gate))
        await gate.wait_entered()
        for name, partial in (("a", False), ("b", True), ("c", False)):
            event = make_event(f"${name}", before=base, partial=partial)
            await calls.start(name, functools.partial(storage.persist_events, [event]))
        gate.open()
    assert isinstance(calls.results["b"], PartialStateConflictError)
    assert set(calls.results["a"]) == {"$a"}
    assert set(calls.results["c"]) == {"$c"}
    assert await storage.have_seen_events(["$a", "$b", "$c"]) == {"$a", "$c"}
    assert storage.actor.stats.largest_batch == 3


async def test_persist_then_clear(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    """The event wins: the clear fails on the foreign key and the room stays
    partial until the new event is resolved too.
    """
    base = await _partial_room(storage, make_event)
    await storage.persist_events([make_event("$new", before=base, partial=True)])
    with pytest.raises(PartialStateEventsRemainError):
        await storage.clear_partial_state(ROOM)
    assert await storage.is_partial_state_room(ROOM)
    assert await storage.get_partial_state_events(ROOM) == ["$new"]
    await storage.update_state_for_partial_event("$new", base, None)
    assert await storage.clear_partial_state(ROOM) is True


async def test_clear_then_persist(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    """The clear wins: the partial-state event fails on the foreign key, is not
    written, and goes through once its context is recomputed.
    """
    base = await _partial_room(storage, make_event)
    assert await storage.clear_partial_state(ROOM) is True
    with pytest.raises(PartialStateConflictError):
        await storage.persist_events([make_event("$new", before=base, partial=True)])
    assert await storage.have_seen_events(["$new"]) == frozenset()
    await storage.persist_events([make_event("$new", before=base, partial=False)])
    assert await storage.have_seen_events(["$new"]) == {"$new"}


@pytest.mark.parametrize("persist_first", [True, False])
async def test_persist_and_clear_in_one_batch(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock, persist_first: bool
) -> None:
    base = await _partial_room(storage, make_event)
    event = make_event("$new", before=base, partial=True)
    gate = Gate()
    async with trio.open_nursery() as nursery:
        calls = Calls(nursery)
        await calls.start("gate", lambda: storage.actor.submit(gate))
        await gate.wait_entered()
        order = ["persist", "clear"] if persist_first else ["clear", "persist"]
        for name in order:
            if name == "persist":
                await calls.start(name, lambda: storage.persist_events([event]))
            else:
                await calls.start(name, lambda: storage.clear_partial_state(ROOM))
        gate.open()
    assert storage.actor.stats.largest_batch == 2
    if persist_first:
        assert calls.results["persist"] == {"$new": calls.results["persist"]["$new"]}
        assert isinstance(calls.results["clear"], PartialStateEventsRemainError)
        assert await storage.is_partial_state_room(ROOM)
        assert await storage.get_partial_state_events(ROOM) == ["$new"]
    else:
        assert calls.results["clear"] is True
        assert isinstance(calls.results["persist"], PartialStateConflictError)
        assert not await storage.is_partial_state_room(ROOM)
        assert await storage.have_seen_events(["$new"]) == frozenset()


async def test_a_caller_cancelled_while_queued_still_gets_its_write(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    base = await _base(storage)
    gate = Gate()
    async with trio.open_nursery() as nursery:
        calls = Calls(nursery)
        await calls.start("gate", lambda: storage.actor.submit(gate))
        await gate.wait_entered()
        event = make_event("$kept", before=base)
        await calls.start("caller", lambda: storage.persist_events([event]))
        calls.scopes["caller"].cancel()
        await wait_all_tasks_blocked()
        assert calls.results["caller"] == "cancelled"
        gate.open()
    # Requests are written in order: once a later one is answered, the
    # cancelled caller's has been committed.
    await storage.store_room(ROOM, "10")
    assert await storage.have_seen_events(["$kept"]) == {"$kept"}


async def test_a_caller_cancelled_mid_transaction_still_gets_its_write(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    base = await _base(storage)
    first, second = Gate(), Gate()
    async with trio.open_nursery() as nursery:
        calls = Calls(nursery)
        await calls.start("first", lambda: storage.actor.submit(first))
        await first.wait_entered()
        event = make_event("$kept", before=base)
        await calls.start("caller", lambda: storage.persist_events([event]))
        await calls.start("second", lambda: storage.actor.submit(second))
        first.open()
        # The caller's write has run; the transaction holding it is open.
        await second.wait_entered()
        calls.scopes["caller"].cancel()
        await wait_all_tasks_blocked()
        assert calls.results["caller"] == "cancelled"
        second.open()
    assert calls.results["second"] == "through"
    assert await storage.have_seen_events(["$kept"]) == {"$kept"}


async def test_errors_stay_with_their_request(
    storage: Storage, make_event: EventFactory, mock_clock: MockClock
) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO rooms VALUES ('!half:example.org', '10')")
        raise ValueError("failed half-way")

    def duplicate(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO rooms VALUES ('!dup:example.org', '10')")
        conn.execute("INSERT INTO rooms VALUES ('!dup:example.org', '10')")

    with pytest.raises(ValueError, match="failed half-way"):
        await storage.actor.submit(half_then_fail)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        await storage.actor.submit(duplicate)
    with pytest.raises(MatrixError, match="does not exist"):
        await storage.persist_events([make_event("$x", before=4242)])
    # Nothing of the failed requests remains, and the actor goes on.
    assert await storage.get_room_version("!half:example.org") is None
    assert await storage.get_room_version("!dup:example.org") is None
    base = await _base(storage)
    assert "$ok" in await storage.persist_events([make_event("$ok", before=base)])


async def test_requests_sent_before_start_are_served(
    db_path: Path, make_event: EventFactory, mock_clock: MockClock
) -> None:
    storage = Storage(db_path)
    async with trio.open_nursery() as nursery:
        calls = Calls(nursery)
        await calls.start("room", lambda: storage.store_room(ROOM, "10"))
        await nursery.start(storage.run)
        # A later write is answered only after the earlier one.
        await storage.store_room(ROOM, "10")
        nursery.cancel_scope.cancel()
    assert calls.results["room"] is None
    assert storage.actor.stats.requests == 2


async def test_a_stopped_actor_finishes_its_batch_and_refuses_the_rest(
    db_path: Path, make_event: EventFactory, mock_clock: MockClock
) -> None:
    storage = Storage(db_path)
    gate = Gate()
    async with trio.open_nursery() as outer:
        calls = Calls(outer)
        async with trio.open_nursery() as inner:
            await inner.start(storage.run)
            await calls.start("gate", lambda: storage.actor.submit(gate))
            await gate.wait_entered()
            await calls.start("queued", lambda: storage.store_room(ROOM, "10"))
            inner.cancel_scope.cancel()
            gate.open()
    # The batch in hand committed and was answered; the queued one was not
    # written and was told so.
    assert calls.results["gate"] == "through"
    assert isinstance(calls.results["queued"], StorageUnavailableError)
    with pytest.raises(StorageUnavailableError, match="has stopped"):
        await storage.store_room(ROOM, "10")
    with pytest.raises(RuntimeError, match="runs once"):
        await storage.actor.run()


async def test_a_full_disk_fails_every_waiting_request_and_the_actor(
    db_path: Path, make_event: EventFactory, mock_clock: MockClock
) -> None:
    # Learn how big the empty database is, then cap it just above that.
    first = Storage(db_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await first.store_room(ROOM, "10")
        base = await _base(first)
        await first.persist_events([make_event("$before", before=base)])
        nursery.cancel_scope.cancel()
    with sqlite3.connect(db_path) as probe:
        (pages,) = probe.execute("PRAGMA page_count").fetchone()
    probe.close()

    storage = Storage(db_path, batch_cap=2, max_page_count=pages + 2)
    gate = Gate()
    big = make_event("$big", before=base, body_size=200_000)
    small = make_event("$small", before=base)
    with pytest.RaisesGroup(pytest.RaisesExc(sqlite3.OperationalError, match="full")):
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            calls = Calls(nursery)
            await calls.start("gate", lambda: storage.actor.submit(gate))
            await gate.wait_entered()
            await calls.start("big", lambda: storage.persist_events([big]))
            await calls.start("small", lambda: storage.persist_events([small]))
            await calls.start("queued", lambda: storage.store_room("!other:example.org", "10"))
            gate.open()
    assert calls.results["gate"] == "through"
    for name in ("big", "small", "queued"):
        assert isinstance(calls.results[name], StorageUnavailableError), name
    assert isinstance(calls.results["big"].__cause__, sqlite3.OperationalError)
    with pytest.raises(StorageUnavailableError):
        await storage.store_room(ROOM, "10")
    # What was committed before is whole.
    with sqlite3.connect(db_path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        events = {e for (e,) in check.execute("SELECT event_id FROM events")}
    check.close()
    assert events == {"$before"}


def test_bad_settings_are_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_cap"):
        StorageActor(db_path, batch_cap=0)
    with pytest.raises(ValueError, match="queue_size"):
        StorageActor(db_path, queue_size=0)
    with pytest.raises(ValueError, match="checkpoint_after_changes"):
        StorageActor(db_path, checkpoint_after_changes=0)


def test_which_errors_are_fatal(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database " * 1_000)
    broken = sqlite3.connect(garbage)
    with pytest.raises(sqlite3.DatabaseError) as not_a_database:
        broken.execute("SELECT * FROM sqlite_master")
    broken.close()
    assert is_fatal_database_error(not_a_database.value)

    memory = sqlite3.connect(":memory:")
    memory.execute("CREATE TABLE t (x PRIMARY KEY)")
    memory.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        memory.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError) as typo:
        memory.execute("SELEC 1")
    memory.close()
    assert not is_fatal_database_error(duplicate.value)
    assert not is_fatal_database_error(typo.value)
    assert not is_fatal_database_error(ValueError("not from SQLite"))


async def test_a_file_that_is_no_database_fails_the_start(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database " * 1_000)
    storage = Storage(garbage)
    with pytest.RaisesGroup(pytest.RaisesExc(sqlite3.DatabaseError, match="not a database")):
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
    with pytest.raises(StorageUnavailableError):
        await storage.store_room(ROOM, "10")


def _rows_in_file_alone(db_path: Path, copy: Path) -> int:
    """The rows of table t that the database file holds without its WAL."""
    copy.write_bytes(db_path.read_bytes())
    with sqlite3.connect(copy) as check:
        tables = {name for (name,) in check.execute("SELECT name FROM sqlite_master")}
        count = check.execute("SELECT count(*) FROM t").fetchone()[0] if "t" in tables else 0
    check.close()
    return int(count)


def _fill(rows: int) -> Callable[[sqlite3.Connection], None]:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(rows)])

    return write


async def test_enough_changes_start_a_checkpoint_beside_the_writer(
    db_path: Path, tmp_path: Path
) -> None:
    actor = StorageActor(db_path, synchronous="NORMAL", checkpoint_after_changes=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.submit(_fill(50))
        assert actor.stats.checkpoints == 0
        assert _rows_in_file_alone(db_path, tmp_path / "copy.db") == 0
        await actor.submit(_fill(60))
        assert actor.stats.checkpoints == 1
        # The checkpoint runs on its own; once it is done (and not before:
        # a copy taken while it writes would be torn), the file alone holds
        # every row.
        with trio.fail_after(10):
            await actor.wait_for_checkpoint()
        assert actor.stats.checkpoints_finished == 1
        assert _rows_in_file_alone(db_path, tmp_path / "copy.db") == 110
        # The count starts again from zero.
        await actor.submit(_fill(50))
        assert actor.stats.checkpoints == 1
        nursery.cancel_scope.cancel()


async def test_the_writer_checkpoints_only_as_a_backstop(db_path: Path) -> None:
    actor = StorageActor(db_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        pages = await actor.submit(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        )
        assert pages == (10_000,)
        nursery.cancel_scope.cancel()


async def test_a_stopping_actor_waits_for_its_checkpoint(db_path: Path) -> None:
    actor = StorageActor(db_path, checkpoint_after_changes=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.submit(_fill(1_000))
        assert actor.stats.checkpoints == 1
        nursery.cancel_scope.cancel()
    # Every connection is closed: the last one folded the WAL in and removed it.
    assert not db_path.with_name(db_path.name + "-wal").exists()
    with sqlite3.connect(db_path) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (1_000,)
    check.close()
