"""Transaction de-duplication against the real storage actor on a SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from ranvier.errors import LimitExceededError
from ranvier.federation.persistence import ReceivedTransactions, Recorded
from ranvier.storage import Storage

NOW = 1_700_000_000_000


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "txn.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


class Handler:
    """A transaction's handling: counts its runs, and can be held up."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.runs = 0
        self.started = trio.Event()
        self.release = trio.Event()
        self.release.set()

    async def __call__(self) -> Any:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        return self.answer


async def test_the_answer_is_recorded_and_repeated(storage: Storage) -> None:
    transactions = ReceivedTransactions(storage, clock=lambda: NOW)
    handler = Handler({"pdus": {"$a": {}}})
    assert await transactions.run_once("remote.test", "t1", handler) == {"pdus": {"$a": {}}}
    recorded = await storage.get_received_transaction("remote.test", "t1")
    assert recorded is not None
    assert msgspec.json.decode(recorded.response_json) == {"pdus": {"$a": {}}}
    assert (recorded.response_code, recorded.received_ts) == (200, NOW)

    other = Handler({"pdus": {"$b": {}}})
    assert await transactions.run_once("remote.test", "t1", other) == {"pdus": {"$a": {}}}
    assert other.runs == 0
    # The record outlives this object: a restarted server answers alike.
    again = ReceivedTransactions(storage)
    assert await again.run_once("remote.test", "t1", other) == {"pdus": {"$a": {}}}
    assert other.runs == 0


async def test_an_answer_the_handler_recorded_is_given_and_not_written_again(
    storage: Storage,
) -> None:
    transactions = ReceivedTransactions(storage, clock=lambda: NOW)
    writes: list[Any] = []
    record_transaction = storage.record_transaction

    async def counted(transaction: Any) -> None:
        writes.append(transaction)
        await record_transaction(transaction)

    storage.record_transaction = counted  # type: ignore[method-assign]

    async def handle() -> Recorded:
        # As a handler does that records its answer with its own writes.
        await record_transaction(transactions.record_of("remote.test", "t1", {"pdus": {"$a": {}}}))
        return Recorded({"pdus": {"$a": {}}})

    assert await transactions.run_once("remote.test", "t1", handle) == {"pdus": {"$a": {}}}
    assert writes == []
    recorded = await storage.get_received_transaction("remote.test", "t1")
    assert recorded is not None
    assert (recorded.response_code, recorded.received_ts) == (200, NOW)
    other = Handler({"pdus": {"$b": {}}})
    assert await transactions.run_once("remote.test", "t1", other) == {"pdus": {"$a": {}}}
    assert other.runs == 0


async def test_ids_are_per_origin(storage: Storage) -> None:
    transactions = ReceivedTransactions(storage)
    first, second = Handler({"n": 1}), Handler({"n": 2})
    assert await transactions.run_once("a.test", "t1", first) == {"n": 1}
    assert await transactions.run_once("b.test", "t1", second) == {"n": 2}
    assert (first.runs, second.runs) == (1, 1)


async def test_a_repeat_in_flight_waits_for_the_first(storage: Storage) -> None:
    transactions = ReceivedTransactions(storage)
    handler = Handler({"pdus": {}})
    handler.release = trio.Event()
    answers: list[Any] = []

    async def send() -> None:
        answers.append(await transactions.run_once("remote.test", "t1", handler))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await handler.started.wait()
        nursery.start_soon(send)
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert transactions.in_flight() == 1
        handler.release.set()
    assert handler.runs == 1
    assert answers == [{"pdus": {}}] * 3
    assert transactions.in_flight() == 0


async def test_a_refusal_is_not_recorded(storage: Storage) -> None:
    transactions = ReceivedTransactions(storage)

    async def refuse() -> Any:
        await trio.lowlevel.checkpoint()
        raise LimitExceededError(retry_after_ms=10)

    with pytest.raises(LimitExceededError):
        await transactions.run_once("remote.test", "t1", refuse)
    assert await storage.get_received_transaction("remote.test", "t1") is None
    handler = Handler({"pdus": {}})
    assert await transactions.run_once("remote.test", "t1", handler) == {"pdus": {}}
    assert handler.runs == 1


async def test_a_cancelled_first_run_leaves_the_repeat_to_run_it(storage: Storage) -> None:
    transactions = ReceivedTransactions(storage)
    stuck = Handler({"from": "first"})
    stuck.release = trio.Event()
    second = Handler({"from": "second"})
    answers: list[Any] = []

    async def repeat() -> None:
        answers.append(await transactions.run_once("remote.test", "t1", second))

    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()

        async def first() -> None:
            with first_scope:
                await transactions.run_once("remote.test", "t1", stuck)

        nursery.start_soon(first)
        await stuck.started.wait()
        nursery.start_soon(repeat)
        await trio.testing.wait_all_tasks_blocked()
        assert second.runs == 0
        first_scope.cancel()
    assert answers == [{"from": "second"}]
    assert (stuck.runs, second.runs) == (1, 1)
    recorded = await storage.get_received_transaction("remote.test", "t1")
    assert recorded is not None
    assert msgspec.json.decode(recorded.response_json) == {"from": "second"}
