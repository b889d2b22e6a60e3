"""A destination that is backing off and makes a request of ours is back:
its queue tries it again then, not when the backoff runs out, though never
within a second of the attempt that failed; the stored retry state stays
until a delivery clears it. Cleared in storage (an admin's reset), the
backoff ends as soon as the destination is heard of, floor or not."""

from __future__ import annotations

import functools
import random

from trio.testing import MockClock

from ranvier.federation.sender import BackoffPolicy, DestinationStatus, FederationSender
from ranvier.testing import Canned

from .conftest import World, caught_up, send, settle, until

# Ten minutes: a test that passes has not waited for it.
LONG = BackoffPolicy(initial_ms=600_000, multiplier=2.0, max_ms=3_600_000, jitter=0.2)
RESTARTING = Canned(503, b'{"errcode": "M_UNKNOWN", "error": "restarting"}')


def _status(sender: FederationSender, destination: str) -> DestinationStatus:
    status = sender.status(destination)
    assert status is not None, f"{destination} has no queue"
    return status


def _failed(sender: FederationSender, destination: str, attempts: int) -> bool:
    return _status(sender, destination).failed_attempts == attempts


async def test_a_destination_heard_from_is_retried_and_caught_up_at_once(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    destination = remote.server_name
    remote.answer = RESTARTING
    running = await world.start_sender(backoff=LONG, rng=random.Random(2))
    first = await world.events("!r:origin.test", 1)
    send(running, first, destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    later = await world.events("!r:origin.test", 3)
    send(running, later, destination)
    remote.answer = None
    mock_clock.jump(5)
    await settle(world.storage)
    assert len(remote.received) == 1, "retried before the backoff ran out, unprompted"

    running.sender.heard_from(destination)

    await until(lambda: len(remote.received) == 3, "the retry and the catch-up")
    await caught_up(world, destination)
    await settle(world.storage)
    failed, retried, caught = remote.received
    assert retried.transaction_id == failed.transaction_id
    assert retried.event_ids == [first[0].event_id]
    assert caught.event_ids == [later[-1].event_id]
    assert len(remote.received) == 3
    status = _status(running.sender, destination)
    assert status.retry_at is None
    assert status.retry_interval_ms is None
    assert await world.storage.get_destination_retry(destination) is None


async def test_an_early_retry_waits_a_second_after_the_failure_and_a_failure_grows_the_backoff(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    destination = remote.server_name
    remote.answer = RESTARTING
    running = await world.start_sender(backoff=LONG, rng=random.Random(4))
    send(running, await world.events("!r:origin.test", 1), destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    first_interval = _status(running.sender, destination).retry_interval_ms
    assert first_interval is not None

    # Heard from at once: the retry comes a second after the failure, not sooner.
    running.sender.heard_from(destination)
    mock_clock.jump(0.99)
    await settle(world.storage)
    assert len(remote.received) == 1
    mock_clock.jump(0.02)
    await until(lambda: len(remote.received) == 2, "the early retry")
    # It failed again: the backoff grows from where it was, and is stored.
    await until(lambda: _status(running.sender, destination).failed_attempts == 2, "a failure")
    second_interval = _status(running.sender, destination).retry_interval_ms
    assert second_interval is not None
    assert second_interval >= first_interval * 1.6 - 1
    await settle(world.storage)
    stored = await world.storage.get_destination_retry(destination)
    assert stored is not None
    assert stored.retry_interval_ms == second_interval

    # Heard from again, later: retried at once.
    mock_clock.jump(30)
    await settle(world.storage)
    assert len(remote.received) == 2
    running.sender.heard_from(destination)
    await until(lambda: len(remote.received) == 3, "the second early retry")


async def test_hearing_from_a_destination_not_backing_off_sends_nothing(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    destination = remote.server_name
    running = await world.start_sender(backoff=LONG)
    # No queue at all yet.
    running.sender.heard_from(destination)
    await settle(world.storage)
    assert running.sender.status(destination) is None
    # A queue that delivered what it had.
    send(running, await world.events("!r:origin.test", 1), destination)
    await until(lambda: len(remote.received) == 1, "the delivery")
    await caught_up(world, destination)
    running.sender.heard_from(destination)
    await settle(world.storage)
    assert len(remote.received) == 1
    assert _status(running.sender, destination).retry_at is None


async def test_a_backoff_cleared_in_storage_ends_when_heard_from_and_a_failure_starts_anew(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    destination = remote.server_name
    remote.answer = RESTARTING
    running = await world.start_sender(backoff=LONG, rng=random.Random(6))
    send(running, await world.events("!r:origin.test", 1), destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    # Twice more, so that the interval kept has grown past the first.
    for attempt in (2, 3):
        running.sender.heard_from(destination)
        mock_clock.jump(1.01)
        await until(functools.partial(_failed, running.sender, destination, attempt), "a failure")
    grown = _status(running.sender, destination).retry_interval_ms
    assert grown is not None
    assert grown > LONG.initial_ms * (1 + LONG.jitter)

    # The stored state is cleared (an admin's reset), then the queue hears
    # of the destination within the second after its last failure: it
    # sends at once, without waiting for that second.
    await settle(world.storage)
    await world.storage.store_destination_retry(destination, None)
    running.sender.heard_from(destination)
    await until(lambda: len(remote.received) == 4, "the retry after the reset")
    # That failed too: the new backoff starts from the first interval.
    await until(lambda: _status(running.sender, destination).failed_attempts == 4, "a failure")
    fresh = _status(running.sender, destination).retry_interval_ms
    assert fresh is not None
    assert fresh <= LONG.initial_ms * (1 + LONG.jitter)
    await settle(world.storage)
    stored = await world.storage.get_destination_retry(destination)
    assert stored is not None
    assert stored.retry_interval_ms == fresh


async def test_heard_from_with_the_backoff_still_stored_keeps_it(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    destination = remote.server_name
    remote.answer = RESTARTING
    running = await world.start_sender(backoff=LONG, rng=random.Random(8))
    send(running, await world.events("!r:origin.test", 1), destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    kept = _status(running.sender, destination).retry_interval_ms
    # Heard from at once: the stored state is read again and found, so
    # the floor holds and the interval is kept.
    running.sender.heard_from(destination)
    mock_clock.jump(0.5)
    await settle(world.storage)
    assert len(remote.received) == 1
    assert _status(running.sender, destination).retry_interval_ms == kept
