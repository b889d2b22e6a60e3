"""When a destination last took a transaction, as the sender notes it for
the federation admin API: once a minute at most while all is well, and at
once when the destination comes back from a backoff."""

from __future__ import annotations

import random

from trio.testing import MockClock

from ranvier.federation.sender import BackoffPolicy
from ranvier.testing import Canned

from .conftest import Running, TransactionSink, World, clock_ms, send, settle, until

POLICY = BackoffPolicy(initial_ms=5_000, multiplier=2.0, max_ms=60_000, jitter=0.0)
UNWELL = Canned(503, b'{"errcode": "M_UNKNOWN", "error": "down for maintenance"}')


async def _noted(world: World, destination: str) -> int | None:
    await settle(world.storage)
    row = await world.storage.federation_admin.destination(destination)
    assert row is not None
    return row.last_success_ts


async def _deliver(world: World, running: Running, remote: TransactionSink, taken: int) -> None:
    """Send an event to ``remote`` and wait until it has had ``taken``
    transactions."""
    send(running, await world.events("!r:origin.test", 1), remote.server_name)
    await until(lambda: len(remote.received) == taken, f"transaction {taken}")


async def test_deliveries_are_noted_once_a_minute_and_a_return_at_once(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    destination = remote.server_name
    running = await world.start_sender(
        backoff=POLICY,
        rng=random.Random(1),
        deliveries=world.storage.federation_admin,
        idle_timeout=3600.0,
    )
    await _deliver(world, running, remote, 1)
    first = clock_ms()
    assert await _noted(world, destination) == first
    # Within the minute: taken, not written again.
    mock_clock.jump(30)
    await _deliver(world, running, remote, 2)
    assert await _noted(world, destination) == first
    # A minute after the last note: written.
    mock_clock.jump(31)
    await _deliver(world, running, remote, 3)
    second = clock_ms()
    assert second - first >= 60_000
    assert await _noted(world, destination) == second
    # It fails, backs off five seconds, and is back: noted at once, though
    # within the minute.
    remote.answer = UNWELL
    await _deliver(world, running, remote, 4)
    remote.answer = None
    mock_clock.jump(POLICY.initial_ms / 1000 + 0.01)
    await until(lambda: len(remote.received) == 5, "the retry")
    back = clock_ms()
    assert back - second < 60_000
    assert await _noted(world, destination) == back
