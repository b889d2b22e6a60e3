"""PDUs catching up cannot send (our users' leaves of a room purged here),
kept in the PDU outbox: sent through a backoff and a restart, ahead of
the rest, once each, and forgotten once taken or refused."""

from __future__ import annotations

import functools
import random
import sqlite3
from typing import Any

import trio
from trio.testing import MockClock

from ranvier.core.notifier import StreamNotifier
from ranvier.federation.sender import BackoffPolicy, DestinationStatus, FederationSender
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.replication.federation_sending import DestinationWaker
from ranvier.testing import Canned

from .conftest import ORIGIN, Running, World, settle, until

POLICY = BackoffPolicy(initial_ms=5_000, multiplier=2.0, max_ms=60_000, jitter=0.2)
UNWELL = Canned(503, b'{"errcode": "M_UNKNOWN", "error": "down for maintenance"}')
PURGED = "!purged:origin.test"


def _status(sender: FederationSender, destination: str) -> DestinationStatus:
    status = sender.status(destination)
    assert status is not None, f"{destination} has no queue"
    return status


def _leave(n: int) -> tuple[str, bytes]:
    event_id = f"$leave{n}"
    pdu = {
        "auth_events": [],
        "content": {"membership": "leave"},
        "depth": 10 + n,
        "origin_server_ts": 5,
        "prev_events": [],
        "room_id": PURGED,
        "sender": f"@user{n}:{ORIGIN}",
        "state_key": f"@user{n}:{ORIGIN}",
        "type": "m.room.member",
        "unsigned": {"x-id": event_id},
    }
    return event_id, encode_canonical_json(pdu)


def _insert(conn: sqlite3.Connection, *, rows: list[tuple[str, str, bytes]]) -> None:
    conn.executemany(
        "INSERT INTO pdu_outbox (destination, event_id, room_id, pdu) VALUES (?, ?, ?, ?)",
        [(destination, event_id, PURGED, pdu) for destination, event_id, pdu in rows],
    )


async def _owe(world: World, destination: str, numbers: range) -> None:
    """Leaves owed to ``destination``, as a purge writes them."""
    rows = [(destination, *_leave(n)) for n in numbers]
    await world.storage.actor.submit(functools.partial(_insert, rows=rows))


async def _waiting(world: World, destination: str) -> list[str]:
    return [
        event_id
        for _, event_id, _ in await world.storage.pdu_outbox.outbox_pdus(destination, 0, 500)
    ]


async def _start(world: World, **options: Any) -> Running:
    return await world.start_sender(pdu_outbox=world.storage.pdu_outbox, **options)


async def test_owed_pdus_wait_out_a_backoff_and_are_sent_once(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    running = await _start(world, backoff=POLICY, rng=random.Random(4))
    await _owe(world, destination, range(2))
    running.sender.pdu_outbox_filled(destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    await settle(world.storage)
    assert len(remote.received) == 1
    assert await _waiting(world, destination) == ["$leave0", "$leave1"]

    remote.answer = None
    mock_clock.jump(60)
    await until(lambda: len(remote.received) == 2, "the retry")
    await settle(world.storage)
    first, retry = remote.received
    assert retry.transaction_id == first.transaction_id
    assert retry.event_ids == ["$leave0", "$leave1"]
    # Taken, so forgotten, and not sent again by a later sender.
    assert await _waiting(world, destination) == []
    await running.stop()
    await _start(world)
    await settle(world.storage)
    assert len(remote.received) == 2


async def test_owed_pdus_left_by_a_stopped_sender_go_at_the_next_start(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    other = await world.remote("a.test")
    # Written while no sender runs, so nobody was told: more than a
    # transaction holds for one destination, one for another.
    await _owe(world, remote.server_name, range(60))
    await _owe(world, other.server_name, range(100, 101))

    running = await _start(world)
    await until(lambda: len(remote.received) == 2 and len(other.received) == 1, "the owed PDUs")
    await settle(world.storage)
    assert [len(received.event_ids) for received in remote.received] == [50, 10]
    sent = [event_id for received in remote.received for event_id in received.event_ids]
    assert sent == [f"$leave{n}" for n in range(60)]
    assert other.received[0].event_ids == ["$leave100"]
    assert await _waiting(world, remote.server_name) == []
    assert await _waiting(world, other.server_name) == []
    assert running.sender.status(remote.server_name) is not None


async def test_owed_pdus_go_ahead_of_what_is_queued(world: World, mock_clock: MockClock) -> None:
    remote = await world.remote()
    destination = remote.server_name
    running = await _start(world)
    remote.gate = trio.Event()
    await _owe(world, destination, range(1))
    running.sender.pdu_outbox_filled(destination)
    await until(lambda: len(remote.received) == 1, "the owed leave")
    # While it is in flight, an event is queued and more is owed.
    (message,) = await world.events("!kept:origin.test", 1)
    running.sender.send_pdu(
        message.json,
        event_id=message.event_id,
        room_id=message.room_id,
        stream_ordering=message.stream_ordering,
        destinations=[destination],
    )
    await _owe(world, destination, range(1, 2))
    running.sender.pdu_outbox_filled(destination)
    remote.gate.set()
    remote.gate = None
    await until(lambda: len(remote.received) == 3, "the rest")
    await settle(world.storage)
    assert [received.event_ids for received in remote.received] == [
        ["$leave0"],
        ["$leave1"],
        [message.event_id],
    ]
    assert await _waiting(world, destination) == []


async def test_owed_pdus_a_destination_refuses_are_forgotten(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = Canned(400, b'{"errcode": "M_BAD_JSON", "error": "no"}')
    destination = remote.server_name
    running = await _start(world, backoff=POLICY)
    await _owe(world, destination, range(1))
    running.sender.pdu_outbox_filled(destination)
    await until(lambda: _status(running.sender, destination).dropped_transactions == 1, "a drop")
    await settle(world.storage)
    assert await _waiting(world, destination) == []
    assert len(remote.received) == 1


async def test_a_sender_without_a_pdu_outbox_sends_none(
    world: World, mock_clock: MockClock
) -> None:
    """The senders of processes that leave PDUs to another process."""
    remote = await world.remote()
    destination = remote.server_name
    await _owe(world, destination, range(1))
    running = await world.start_sender()
    running.sender.pdu_outbox_filled(destination)
    await settle(world.storage)
    assert remote.received == []
    assert running.sender.status(destination) is None
    assert await _waiting(world, destination) == ["$leave0"]


async def test_a_federation_sender_worker_finds_owed_pdus_written_by_another_process(
    world: World, mock_clock: MockClock
) -> None:
    """With a federation_sender worker, the purge runs in another process
    and tells no sender of this one: the worker's waker finds the owed
    PDUs when it looks for destinations to wake."""
    remote = await world.remote()
    destination = remote.server_name
    running = await _start(world)
    waker = DestinationWaker(running.sender, world.storage, StreamNotifier())
    await world.nursery.start(waker.run)
    await settle(world.storage)
    await _owe(world, destination, range(2))
    assert remote.received == []
    waker.poke()
    await until(lambda: len(remote.received) == 1, "the owed PDUs")
    await settle(world.storage)
    assert remote.received[0].event_ids == ["$leave0", "$leave1"]
    assert await _waiting(world, destination) == []
    # Looking again sends nothing more.
    waker.poke()
    await settle(world.storage)
    assert len(remote.received) == 1
