"""The queries' sharing of work between requests in flight at once."""

from __future__ import annotations

import pytest
import trio

from ranvier.federation.queries import _InFlight


async def test_overlapping_calls_share_one_answer() -> None:
    shared: _InFlight[str, int] = _InFlight()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await trio.sleep(0.1)
        return runs

    answers: list[int] = []

    async def call() -> None:
        answers.append(await shared.run("key", work))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(call)
    assert (runs, answers) == (1, [1, 1, 1])
    assert await shared.run("key", work) == 2


async def test_a_failed_or_cancelled_first_call_leaves_the_others_to_work() -> None:
    shared: _InFlight[str, str] = _InFlight()
    first_started = trio.Event()

    async def failing() -> str:
        first_started.set()
        await trio.sleep(0.1)
        raise RuntimeError("the first call's work failed")

    async def working() -> str:
        await trio.lowlevel.checkpoint()
        return "done by the waiter"

    async def first() -> None:
        with pytest.raises(RuntimeError):
            await shared.run("key", failing)

    answers: list[str] = []

    async def second() -> None:
        await first_started.wait()
        answers.append(await shared.run("key", working))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        nursery.start_soon(second)
    assert answers == ["done by the waiter"]

    async def slow() -> str:
        first_started.set()
        await trio.sleep(10)
        return "never"

    async def cancelled_first() -> None:
        # Cancelled as a request is when its client goes away.
        with trio.move_on_after(0.1):
            await shared.run("key", slow)

    first_started = trio.Event()
    answers.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancelled_first)
        nursery.start_soon(second)
    assert answers == ["done by the waiter"]
