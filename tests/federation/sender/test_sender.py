"""The sender end to end: transactions as the spec shapes them, one queue
per destination, backoff kept in the database, catching up, and stopping."""

from __future__ import annotations

import logging

import pytest
import trio
from trio.testing import MockClock

from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.sender import BackoffPolicy
from ranvier.testing import Canned

from .conftest import ORIGIN, World, caught_up, send, settle, until, until_async


async def test_120_pdus_go_in_three_transactions_in_order(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    running = await world.start_sender()
    pdus = await world.events("!r:origin.test", 120)
    send(running, pdus, remote.server_name)
    await until(lambda: len(remote.received) == 3, "three transactions")
    await settle(world.storage)
    assert [len(txn.event_ids) for txn in remote.received] == [50, 50, 20]
    assert [e for txn in remote.received for e in txn.event_ids] == [p.event_id for p in pdus]
    assert len({txn.transaction_id for txn in remote.received}) == 3
    for txn in remote.received:
        assert txn.origin == ORIGIN
        assert txn.content["origin"] == ORIGIN
        assert "edus" not in txn.content
    status = running.sender.status(remote.server_name)
    assert status is not None
    assert (status.transactions_sent, status.queued_pdus, status.catching_up) == (3, 0, False)
    # Every room is noted as sent up to its last event: nothing to catch up on.
    await caught_up(world, remote.server_name)


async def test_edus_go_at_most_100_per_transaction_alongside_pdus(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    running = await world.start_sender(max_queued_edus=500)
    pdus = await world.events("!r:origin.test", 60)
    for n in range(250):
        running.sender.send_edu(remote.server_name, "m.typing", {"n": n})
    send(running, pdus, remote.server_name)
    await until(lambda: len(remote.received) == 3, "three transactions")
    await settle(world.storage)
    shapes = [(len(txn.event_ids), len(txn.edus)) for txn in remote.received]
    assert shapes == [(50, 100), (10, 100), (0, 50)]
    assert [edu["content"]["n"] for txn in remote.received for edu in txn.edus] == list(range(250))
    assert {edu["edu_type"] for txn in remote.received for edu in txn.edus} == {"m.typing"}


async def test_a_slow_destination_does_not_hold_up_another(
    world: World, mock_clock: MockClock
) -> None:
    slow, fast = await world.remote("a.test"), await world.remote("b.test")
    slow.gate = trio.Event()
    running = await world.start_sender()
    first = await world.events("!r:origin.test", 1)
    send(running, first, slow.server_name, fast.server_name)
    await until(lambda: len(fast.received) == 1 and len(slow.received) == 1, "both sent to")
    more = await world.events("!r:origin.test", 3)
    send(running, more, slow.server_name, fast.server_name)
    # The fast one gets the next transaction while the slow one still has
    # its first in flight; the slow one's next three wait behind it.
    await until(lambda: len(fast.received) == 2, "the fast one's second transaction")
    await settle(world.storage)
    assert len(slow.received) == 1
    status = running.sender.status(slow.server_name)
    assert status is not None
    assert status.queued_pdus == 3
    slow.gate.set()
    await until(lambda: len(slow.received) == 2, "the slow one's second transaction")
    assert slow.received[1].event_ids == [p.event_id for p in more]
    assert fast.received[1].event_ids == [p.event_id for p in more]


async def test_per_pdu_errors_are_logged_and_not_retried(
    world: World, mock_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    remote = await world.remote()
    running = await world.start_sender()
    pdus = await world.events("!r:origin.test", 2)
    remote.pdu_errors[pdus[0].event_id] = "not allowed in this room"
    with caplog.at_level(logging.WARNING, logger="ranvier.federation.sender"):
        send(running, pdus, remote.server_name)
        await until(lambda: len(remote.received) == 1, "the transaction")
        await settle(world.storage)
    assert len(remote.received) == 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert pdus[0].event_id in refusals[0]
    assert "not allowed in this room" in refusals[0]
    await caught_up(world, remote.server_name)


async def test_bad_input_is_refused_before_anything_is_queued(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    running = await world.start_sender()
    (pdu,) = await world.events("!r:origin.test", 1)
    sender = running.sender

    def send_one(data: object, *destinations: str, ordering: object = pdu.stream_ordering) -> None:
        sender.send_pdu(
            data,  # type: ignore[arg-type]
            event_id=pdu.event_id,
            room_id=pdu.room_id,
            stream_ordering=ordering,  # type: ignore[arg-type]
            destinations=destinations,
        )

    with pytest.raises(BadJsonError, match="fraction or exponent"):
        send_one(b'{"depth": 1.5}', remote.server_name)
    with pytest.raises(BadJsonError, match="not a JSON object"):
        send_one(b"[1, 2]", remote.server_name)
    with pytest.raises(BadJsonError, match="floats"):
        send_one({"depth": 1.5}, remote.server_name)
    with pytest.raises(MatrixError, match="not a valid server name") as bad_name:
        send_one(pdu.json, remote.server_name, "bad name!")
    assert bad_name.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError, match="must be an integer"):
        send_one(pdu.json, remote.server_name, ordering="7")
    with pytest.raises(TypeError, match="not one string"):
        sender.send_pdu(
            pdu.json,
            event_id=pdu.event_id,
            room_id=pdu.room_id,
            stream_ordering=pdu.stream_ordering,
            destinations=remote.server_name,
        )
    with pytest.raises(BadJsonError, match="floats"):
        sender.send_edu(remote.server_name, "m.typing", {"timeout": 0.5})
    assert sender.active_destinations == frozenset()
    await settle(world.storage)
    assert remote.received == []


async def test_our_own_name_and_repeats_are_skipped(world: World, mock_clock: MockClock) -> None:
    remote = await world.remote()
    running = await world.start_sender()
    pdus = await world.events("!r:origin.test", 1)
    send(running, pdus, ORIGIN, remote.server_name, remote.server_name)
    running.sender.send_edu(ORIGIN, "m.typing", {})
    assert running.sender.active_destinations == {remote.server_name}
    await until(lambda: len(remote.received) == 1, "the transaction")
    await settle(world.storage)
    assert len(remote.received) == 1


async def test_an_edu_sent_on_its_own_is_copied_when_handed_over(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    running = await world.start_sender()
    content = {"user_id": "@alice:origin.test", "typing": True}
    running.sender.send_edu(remote.server_name, "m.typing", content)
    content["typing"] = False
    await until(lambda: len(remote.received) == 1, "the transaction")
    (edu,) = remote.received[0].edus
    assert edu == {
        "edu_type": "m.typing",
        "content": {"user_id": "@alice:origin.test", "typing": True},
    }
    assert remote.received[0].content["pdus"] == []


async def test_a_new_sender_catches_up_what_the_last_one_left_unsent(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.gate = trio.Event()
    destination = remote.server_name
    first = await world.start_sender()
    a = await world.events("!a:origin.test", 3)
    b = await world.events("!b:origin.test", 2)
    send(first, a[:1], destination)
    await until(lambda: len(remote.received) == 1, "a transaction in flight")
    send(first, a[1:] + b, destination)
    await until_async(
        lambda: _has_unsent_rooms(world, destination, 2), "both rooms noted for the destination"
    )
    await first.stop()
    assert first.sender.active_destinations == frozenset()
    remote.gate.set()
    remote.gate = None

    # Nothing new is sent through the new sender: it finds what the
    # destination missed in the database by itself.
    second = await world.start_sender()
    await until(lambda: len(remote.received) == 3, "two catch-up transactions")
    await caught_up(world, destination)
    assert [txn.event_ids for txn in remote.received[1:]] == [[a[-1].event_id], [b[-1].event_id]]
    # The new sender's transaction IDs are its own.
    ids = [txn.transaction_id for txn in remote.received]
    assert len(set(ids)) == 3
    assert second.sender.status(destination) is not None


async def test_start_up_catches_up_only_what_was_left_behind_before_it(
    world: World, mock_clock: MockClock
) -> None:
    left_behind, fresh = await world.remote("a.test"), await world.remote("b.test")
    left_behind.gate = trio.Event()
    (old,) = await world.events("!a:origin.test", 1)
    await world.storage.store_destination_rooms(
        left_behind.server_name, {old.room_id: old.stream_ordering}
    )
    running = await world.start_sender()
    # Found before the sender took any work ...
    status = running.sender.status(left_behind.server_name)
    assert status is not None
    assert status.catching_up
    # ... so a room noted for a destination this run sends to is not taken
    # for one left behind: what is queued for it stays queued.
    fresh.gate = trio.Event()
    first = await world.events("!b:origin.test", 1)
    send(running, first, fresh.server_name)
    await until(lambda: len(fresh.received) == 1, "a transaction in flight")
    more = await world.events("!b:origin.test", 3)
    send(running, more, fresh.server_name)
    await settle(world.storage)
    status = running.sender.status(fresh.server_name)
    assert status is not None
    assert (status.queued_pdus, status.catching_up) == (3, False)
    fresh.gate.set()
    await until(lambda: len(fresh.received) == 2, "the queued transaction")
    assert fresh.received[1].event_ids == [p.event_id for p in more]
    await caught_up(world, fresh.server_name)
    left_behind.gate.set()
    await until(lambda: len(left_behind.received) == 1, "the catch-up transaction")
    assert left_behind.received[0].event_ids == [old.event_id]
    await caught_up(world, left_behind.server_name)


async def test_nothing_is_sent_until_the_server_is_serving(
    world: World, mock_clock: MockClock
) -> None:
    left_behind, fresh = await world.remote("a.test"), await world.remote("b.test")
    (old,) = await world.events("!a:origin.test", 1)
    await world.storage.store_destination_rooms(
        left_behind.server_name, {old.room_id: old.stream_ordering}
    )
    serving = trio.Event()
    running = await world.start_sender(serving=serving)
    new = await world.events("!b:origin.test", 2)
    send(running, new, fresh.server_name)
    running.sender.heard_from(left_behind.server_name)
    mock_clock.jump(3600)
    await settle(world.storage)
    assert (left_behind.received, fresh.received) == ([], [])
    # Held, not lost: both are sent once the server serves.
    status = running.sender.status(fresh.server_name)
    assert status is not None
    assert status.queued_pdus == 2

    serving.set()

    await until(lambda: len(left_behind.received) == 1, "the catch-up transaction")
    await until(lambda: len(fresh.received) == 1, "the queued transaction")
    assert left_behind.received[0].event_ids == [old.event_id]
    assert fresh.received[0].event_ids == [p.event_id for p in new]
    await caught_up(world, fresh.server_name)
    await caught_up(world, left_behind.server_name)


async def _has_unsent_rooms(world: World, destination: str, count: int) -> bool:
    return len(await world.storage.get_unsent_destination_rooms(destination)) == count


async def test_waking_a_destination_catches_it_up(world: World, mock_clock: MockClock) -> None:
    remote = await world.remote()
    destination = remote.server_name
    running = await world.start_sender()
    (pdu,) = await world.events("!r:origin.test", 1)
    # Noted for the destination, but never handed to this sender (another
    # process wrote it, say).
    await world.storage.store_destination_rooms(destination, {pdu.room_id: pdu.stream_ordering})
    running.sender.wake_destination(destination)
    await until(lambda: len(remote.received) == 1, "the catch-up transaction")
    assert remote.received[0].event_ids == [pdu.event_id]
    await caught_up(world, destination)


async def test_stopping_the_sender_ends_every_task(world: World, mock_clock: MockClock) -> None:
    held, unwell = await world.remote("a.test"), await world.remote("b.test")
    held.gate = trio.Event()
    unwell.answer = Canned(502, b"{}")
    running = await world.start_sender(
        backoff=BackoffPolicy(initial_ms=3_600_000, max_ms=3_600_000)
    )
    pdus = await world.events("!r:origin.test", 2)
    send(running, pdus, held.server_name, unwell.server_name)
    await until(lambda: len(held.received) == 1, "a transaction in flight")
    await until(
        lambda: (
            (status := running.sender.status(unwell.server_name)) is not None
            and status.failed_attempts == 1
        ),
        "a destination backing off",
    )
    assert running.sender.active_destinations == {held.server_name, unwell.server_name}
    with trio.fail_after(5):  # mock time: only a bug could let it pass
        await running.stop()
    assert running.sender.active_destinations == frozenset()
    with pytest.raises(RuntimeError, match="not running"):
        send(running, pdus, held.server_name)
    # Started again, it runs as before.
    held.gate.set()
    unwell.answer = None
    again = await world.start_sender()
    send(again, await world.events("!r:origin.test", 1), held.server_name)
    await until(lambda: len(held.received) >= 2, "a transaction from the new sender")


async def test_a_sender_runs_once_at_a_time(world: World, mock_clock: MockClock) -> None:
    running = await world.start_sender()
    with pytest.raises(RuntimeError, match="already running"):
        await running.sender.run()
