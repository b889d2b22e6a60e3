"""Moving a stepped mock clock under :class:`ranvier.core.presence.Presence`
and waiting for what its task does then.

The clock moves only when a test jumps it. A change of presence reads the
user's rooms (and servers) in threads, which Trio counts as blocked, so
waiting for every task to block is not waiting for a change to be done;
these helpers also give the threads real time, bounded, to finish.
"""

from __future__ import annotations

import time

import trio
import trio.testing
from trio.testing import MockClock

from ranvier.core.notifier import StreamNotifier

#: How many times, a hundredth of a second of real time apart, to look.
_LOOKS = 500


async def settle() -> None:
    """Let the tasks woken run, and the threads they started finish."""
    await trio.testing.wait_all_tasks_blocked()
    await trio.to_thread.run_sync(time.sleep, 0.02)
    await trio.testing.wait_all_tasks_blocked()


async def nothing_after(clock: MockClock, seconds: float) -> None:
    """Jump ``seconds`` ahead and let the presence task look."""
    clock.jump(seconds)
    await settle()


async def changed_after(clock: MockClock, notifier: StreamNotifier, seconds: float) -> None:
    """Jump ``seconds`` ahead and wait for the presence change that brings,
    until the task has moved on from it.
    """
    before = notifier.position.presence
    clock.jump(seconds)
    for _ in range(_LOOKS):
        await settle()
        if notifier.position.presence > before:
            await settle()
            return
    raise AssertionError(f"no change of presence {seconds} s on")
