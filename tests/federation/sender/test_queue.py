"""One destination's queue: backoff that grows with jitter and is kept in
the database, catching up on what a destination missed, bounded memory, the
same transaction ID on a retry, and transactions a destination refuses."""

from __future__ import annotations

import logging
import random

import pytest
import trio
from trio.testing import MockClock

from ranvier.federation.sender import BackoffPolicy, DestinationStatus, FederationSender
from ranvier.testing import Canned, free_port

from .conftest import World, caught_up, clock_ms, send, settle, until

POLICY = BackoffPolicy(initial_ms=5_000, multiplier=2.0, max_ms=60_000, jitter=0.2)
UNWELL = Canned(503, b'{"errcode": "M_UNKNOWN", "error": "down for maintenance"}')


def _status(sender: FederationSender, destination: str) -> DestinationStatus:
    status = sender.status(destination)
    assert status is not None, f"{destination} has no queue"
    return status


async def test_backoff_grows_with_jitter_up_to_the_cap_and_nothing_is_sent_early(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    running = await world.start_sender(backoff=POLICY, rng=random.Random(7))
    destination = remote.server_name
    send(running, await world.events("!r:origin.test", 1), destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    intervals: list[int] = []
    first_failure_ms = clock_ms()
    for attempt in range(1, 9):
        status = _status(running.sender, destination)
        assert status.failed_attempts == attempt
        interval = status.retry_interval_ms
        assert interval is not None
        previous = intervals[-1] if intervals else None
        base = POLICY.initial_ms if previous is None else previous * 2
        assert min(base * 0.8, 60_000) <= interval <= min(base * 1.2, 60_000)
        intervals.append(interval)
        # The failure is counted before its retry state is written.
        await settle(world.storage)
        stored = await world.storage.get_destination_retry(destination)
        assert stored is not None
        assert stored.retry_interval_ms == interval
        assert stored.failure_ts == first_failure_ms
        assert stored.retry_last_ts == clock_ms()
        # Just short of the retry time nothing is sent ...
        mock_clock.jump(interval / 1000 - 0.01)
        await settle(world.storage)
        assert len(remote.received) == attempt
        # ... and at it, the same transaction goes again.
        mock_clock.jump(0.02)
        expected = attempt + 1
        await until(lambda: len(remote.received) == expected, f"attempt {expected}")  # noqa: B023
        await until(
            lambda: _status(running.sender, destination).failed_attempts == expected,  # noqa: B023
            f"failure {expected}",
        )
    assert intervals[-1] == 60_000  # capped
    assert len(set(intervals[:3])) == 3  # jittered, and growing
    assert len({txn.transaction_id for txn in remote.received}) == 1


async def test_an_unreachable_destination_is_backed_off_from(
    world: World, mock_clock: MockClock
) -> None:
    destination = f"remote.test:{free_port()}"
    running = await world.start_sender(backoff=POLICY, rng=random.Random(1))
    send(running, await world.events("!r:origin.test", 1), destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    status = _status(running.sender, destination)
    assert status.retry_at is not None
    assert status.pending_transaction is not None
    await settle(world.storage)
    stored = await world.storage.get_destination_retry(destination)
    assert stored is not None
    assert 4_000 <= stored.retry_interval_ms <= 6_000


async def test_backoff_outlives_the_sender(world: World, mock_clock: MockClock) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    first = await world.start_sender(backoff=POLICY, rng=random.Random(3))
    send(first, await world.events("!r:origin.test", 1), destination)
    await until(lambda: _status(first.sender, destination).failed_attempts == 1, "a failure")
    interval = _status(first.sender, destination).retry_interval_ms
    assert interval is not None
    # What outlives the sender is what the database holds, and the failure
    # is counted before its retry state is written.
    await settle(world.storage)
    assert await world.storage.get_destination_retry(destination) is not None
    await first.stop()
    remote.answer = None

    # A new sender on the same database: the destination is still backing
    # off, though this sender never failed to reach it.
    second = await world.start_sender(backoff=POLICY)
    send(second, await world.events("!r:origin.test", 1), destination)
    await settle(world.storage)
    assert len(remote.received) == 1
    status = _status(second.sender, destination)
    assert status.retry_at is not None
    assert status.catching_up
    mock_clock.jump(interval / 1000 + 0.01)
    await until(lambda: len(remote.received) == 2, "the retry")
    await caught_up(world, destination)
    # It came back: the retry state is gone from the database.
    await until(lambda: _status(second.sender, destination).retry_interval_ms is None, "success")
    assert await world.storage.get_destination_retry(destination) is None


async def test_a_destination_back_is_caught_up_with_the_latest_event_of_each_room(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    running = await world.start_sender(backoff=POLICY, rng=random.Random(5))
    a1 = await world.events("!a:origin.test", 1)
    send(running, a1, destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    # While it is down, nothing more is kept in memory for it.
    a_more = await world.events("!a:origin.test", 4)
    b = await world.events("!b:origin.test", 3)
    send(running, a_more + b, destination)
    status = _status(running.sender, destination)
    assert (status.queued_pdus, status.catching_up) == (0, True)

    remote.answer = None
    interval = status.retry_interval_ms
    assert interval is not None
    mock_clock.jump(interval / 1000)
    await until(lambda: len(remote.received) == 4, "the retry and two catch-up transactions")
    await caught_up(world, destination)
    await settle(world.storage)
    failed, retried, room_a, room_b = remote.received
    # The transaction in flight is sent again as it was, ID and all ...
    assert retried.transaction_id == failed.transaction_id
    assert retried.content == failed.content
    assert retried.event_ids == [a1[0].event_id]
    # ... then each room's newest event, one room per transaction, and the
    # destination fetches what lies between.
    assert room_a.event_ids == [a_more[-1].event_id]
    assert room_b.event_ids == [b[-1].event_id]
    assert len(remote.received) == 4
    assert not _status(running.sender, destination).catching_up


async def test_catching_up_sends_every_newer_extremity_of_a_forked_room(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    running = await world.start_sender(backoff=POLICY, rng=random.Random(5))
    base = await world.events("!a:origin.test", 1)
    send(running, base, destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    # Two events on the same parent: the room has two forward extremities.
    fork_one = await world.events("!a:origin.test", 1)
    fork_two = await world.events("!a:origin.test", 1, after=base[0].event_id)
    send(running, fork_one + fork_two, destination)
    assert await world.storage.get_forward_extremities("!a:origin.test") == {
        fork_one[0].event_id,
        fork_two[0].event_id,
    }
    remote.answer = None
    mock_clock.jump(60)
    await until(lambda: len(remote.received) == 3, "the retry and the catch-up")
    await caught_up(world, destination)
    assert remote.received[2].event_ids == [fork_one[0].event_id, fork_two[0].event_id]


async def test_an_overflowing_queue_stays_bounded_then_catches_up(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.gate = trio.Event()
    destination = remote.server_name
    running = await world.start_sender(max_queued_pdus=10)
    first = await world.events("!r:origin.test", 1)
    send(running, first, destination)
    await until(lambda: len(remote.received) == 1, "the first transaction in flight")
    more = await world.events("!r:origin.test", 200)
    sizes = []
    for pdu in more:
        send(running, [pdu], destination)
        sizes.append(_status(running.sender, destination).queued_pdus)
    assert max(sizes) == 10
    assert sizes[:10] == list(range(1, 11))
    status = _status(running.sender, destination)
    assert (status.queued_pdus, status.catching_up) == (0, True)
    remote.gate.set()
    await until(lambda: len(remote.received) == 2, "the catch-up transaction")
    await caught_up(world, destination)
    await settle(world.storage)
    assert remote.received[1].event_ids == [more[-1].event_id]
    assert len(remote.received) == 2


async def test_a_timed_out_transaction_is_sent_again_with_the_same_id(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.gate = trio.Event()
    destination = remote.server_name
    running = await world.start_sender(backoff=POLICY, rng=random.Random(9))
    pdus = await world.events("!r:origin.test", 2)
    send(running, pdus, destination)
    await until(lambda: len(remote.received) == 1, "the transaction in flight")
    mock_clock.jump(world.client.request_timeout + 1)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "the timeout")
    remote.gate.set()
    interval = _status(running.sender, destination).retry_interval_ms
    assert interval is not None
    mock_clock.jump(interval / 1000)
    await until(lambda: len(remote.received) == 2, "the retry")
    await caught_up(world, destination)
    first, again = remote.received
    assert again.transaction_id == first.transaction_id
    assert again.content == first.content
    assert _status(running.sender, destination).transactions_sent == 1


async def test_a_refused_transaction_is_dropped_not_retried(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = Canned(400, b'{"errcode": "M_BAD_JSON", "error": "no"}')
    destination = remote.server_name
    running = await world.start_sender(backoff=POLICY)
    refused = await world.events("!r:origin.test", 1)
    send(running, refused, destination)
    await until(lambda: _status(running.sender, destination).dropped_transactions == 1, "a drop")
    status = _status(running.sender, destination)
    assert (status.retry_at, status.failed_attempts, status.pending_transaction) == (None, 0, None)
    assert await world.storage.get_destination_retry(destination) is None
    # Its room counts as sent, so catching up will not offer it again.
    await caught_up(world, destination)
    remote.answer = None
    later = await world.events("!r:origin.test", 1)
    send(running, later, destination)
    await until(lambda: len(remote.received) == 2, "the next transaction")
    assert remote.received[1].event_ids == [later[0].event_id]
    assert remote.received[1].transaction_id != remote.received[0].transaction_id


async def test_an_idle_queue_ends_its_task(world: World, mock_clock: MockClock) -> None:
    remote = await world.remote()
    running = await world.start_sender(idle_timeout=30.0)
    send(running, await world.events("!r:origin.test", 1), remote.server_name)
    await until(lambda: len(remote.received) == 1, "the transaction")
    await settle(world.storage)
    assert running.sender.active_destinations == {remote.server_name}
    mock_clock.jump(29)
    await settle(world.storage)
    assert running.sender.active_destinations == {remote.server_name}
    mock_clock.jump(2)
    await until(lambda: not running.sender.active_destinations, "the task to end")
    assert running.sender.status(remote.server_name) is None
    # Work for it again starts a new task.
    send(running, await world.events("!r:origin.test", 1), remote.server_name)
    await until(lambda: len(remote.received) == 2, "the next transaction")


async def test_catching_up_in_a_partial_state_room_sends_only_the_noted_event(
    world: World, mock_clock: MockClock
) -> None:
    room = "!p:origin.test"
    await world.storage.store_partial_join(room, "10", "$join", "elsewhere.test", [])
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    running = await world.start_sender(backoff=POLICY, rng=random.Random(5))
    base = await world.events(room, 1)
    send(running, base, destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    # Another server's event forks the room; ours is the one noted for the
    # destination, and the only one it is sent.
    elsewhere = await world.events(room, 1)
    ours = await world.events(room, 1, after=base[0].event_id)
    assert len(await world.storage.get_forward_extremities(room)) == 2
    send(running, ours, destination)
    remote.answer = None
    mock_clock.jump(60)
    await until(lambda: len(remote.received) == 3, "the retry and the catch-up")
    await caught_up(world, destination)
    assert remote.received[2].event_ids == [ours[0].event_id]
    assert elsewhere[0].event_id not in remote.received[2].event_ids


async def test_edus_are_not_kept_for_a_destination_backing_off(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    running = await world.start_sender(backoff=POLICY, rng=random.Random(2), max_queued_edus=3)
    for n in range(5):
        running.sender.send_edu(destination, "m.typing", {"n": n})
    # The queue holds three; the two oldest made room.
    status = _status(running.sender, destination)
    assert (status.queued_edus, status.dropped_edus) == (3, 2)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    running.sender.send_edu(destination, "m.typing", {"n": 5})
    status = _status(running.sender, destination)
    assert (status.queued_edus, status.dropped_edus) == (0, 3)
    assert [edu["content"]["n"] for edu in remote.received[0].edus] == [2, 3, 4]
    remote.answer = None
    mock_clock.jump(60)
    await until(lambda: len(remote.received) == 2, "the retry")
    await settle(world.storage)
    assert remote.received[1].edus == remote.received[0].edus
    assert len(remote.received) == 2


async def test_a_room_purged_after_its_events_were_handed_over_is_passed_over_quietly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ranvier.federation.sender.queue")
    remote = await world.remote()
    kept = await world.events("!kept:origin.test", 1)
    purged = await world.events("!purged:origin.test", 1)
    assert await world.storage.room_purge.purge_room("!purged:origin.test") is not None
    running = await world.start_sender()
    send(running, kept + purged, remote.server_name)
    await until(lambda: len(remote.received) >= 1, "the transaction")
    await caught_up(world, remote.server_name)
    # The other room's position is noted; the purged room's refusal is
    # expected, not an error for the operator.
    sent, _ = await world.storage.federation_admin.destination_rooms(
        remote.server_name, offset=0, limit=10, backwards=False
    )
    assert [row.room_id for row in sent] == ["!kept:origin.test"]
    noted = [r for r in caplog.records if "cannot note !purged:origin.test" in r.getMessage()]
    assert noted
    assert {record.levelno for record in noted} == {logging.INFO}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
