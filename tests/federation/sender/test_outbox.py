"""EDUs that must arrive (``m.direct_to_device``): kept in the outbox
through a backoff and a restart, sent once each, forgotten once taken."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import trio
from trio.testing import MockClock

from ranvier.federation.sender import BackoffPolicy, DestinationStatus, FederationSender
from ranvier.testing import Canned

from .conftest import Running, World, settle, until

POLICY = BackoffPolicy(initial_ms=5_000, multiplier=2.0, max_ms=60_000, jitter=0.2)
UNWELL = Canned(503, b'{"errcode": "M_UNKNOWN", "error": "down for maintenance"}')
TO_DEVICE = "m.direct_to_device"


def _status(sender: FederationSender, destination: str) -> DestinationStatus:
    status = sender.status(destination)
    assert status is not None, f"{destination} has no queue"
    return status


async def _write(world: World, destination: str, message_id: str) -> None:
    """One to-device EDU for ``destination`` in the outbox, as a send writes it."""
    content = {
        "sender": "@alice:origin.test",
        "type": "m.test",
        "message_id": message_id,
        "messages": {f"@bob:{destination}": {"DEV": {"id": message_id}}},
    }
    edu = msgspec.json.encode({"edu_type": TO_DEVICE, "content": content})
    fresh, _, _ = await world.storage.e2e_keys.send_to_device(
        sender="@alice:origin.test",
        sender_device="A",
        txn_id=message_id,
        messages=[],
        now_ms=1,
        remote=[(destination, edu)],
    )
    assert fresh


async def _waiting(world: World, destination: str) -> list[str]:
    stored = await world.storage.e2e_keys.outbox_edus(destination, 0, 100)
    return [msgspec.json.decode(data)["content"]["message_id"] for _, data in stored]


def _message_ids(edus: list[dict[str, Any]]) -> list[str]:
    return [edu["content"]["message_id"] for edu in edus if edu["edu_type"] == TO_DEVICE]


async def _start(world: World, **options: Any) -> Running:
    return await world.start_sender(outbox=world.storage.e2e_keys, **options)


async def test_to_device_edus_wait_out_a_backoff_and_are_sent_once(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    running = await _start(world, backoff=POLICY, rng=random.Random(4))
    await _write(world, destination, "m1")
    running.sender.outbox_filled(destination)
    await until(lambda: _status(running.sender, destination).failed_attempts == 1, "a failure")
    # Written while the destination backs off: kept, unlike a typing notice.
    await _write(world, destination, "m2")
    running.sender.outbox_filled(destination)
    running.sender.send_edu(destination, "m.typing", {"n": 1})
    await settle(world.storage)
    assert len(remote.received) == 1
    assert await _waiting(world, destination) == ["m1", "m2"]
    remote.answer = None
    mock_clock.jump(60)
    await until(lambda: len(remote.received) == 3, "the retry and the next transaction")
    await settle(world.storage)
    first, retry, after = remote.received
    assert retry.transaction_id == first.transaction_id
    assert _message_ids(retry.edus) == ["m1"]
    assert _message_ids(after.edus) == ["m2"]
    assert len(remote.received) == 3
    # Taken, so forgotten, and not sent again by a later sender.
    assert await _waiting(world, destination) == []
    await running.stop()
    await _start(world)
    await settle(world.storage)
    assert len(remote.received) == 3


async def test_to_device_edus_left_by_a_stopped_sender_go_at_the_next_start(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = UNWELL
    destination = remote.server_name
    first = await _start(world, backoff=POLICY, rng=random.Random(8))
    await _write(world, destination, "m1")
    first.sender.outbox_filled(destination)
    await until(lambda: _status(first.sender, destination).failed_attempts == 1, "a failure")
    await settle(world.storage)
    await first.stop()
    # Written after the sender stopped: nobody told any sender of it.
    await _write(world, destination, "m2")
    remote.answer = None
    mock_clock.jump(60)

    second = await _start(world)
    await until(lambda: len(remote.received) == 2, "the EDUs, from the database")
    await settle(world.storage)
    assert _message_ids(remote.received[1].edus) == ["m1", "m2"]
    assert await _waiting(world, destination) == []
    assert second.sender.status(destination) is not None


async def test_to_device_edus_a_destination_refuses_are_forgotten(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.answer = Canned(400, b'{"errcode": "M_BAD_JSON", "error": "no"}')
    destination = remote.server_name
    running = await _start(world, backoff=POLICY)
    await _write(world, destination, "m1")
    running.sender.outbox_filled(destination)
    await until(lambda: _status(running.sender, destination).dropped_transactions == 1, "a drop")
    await settle(world.storage)
    assert await _waiting(world, destination) == []
    remote.answer = None
    await _write(world, destination, "m2")
    running.sender.outbox_filled(destination)
    await until(lambda: len(remote.received) == 2, "the next transaction")
    await settle(world.storage)
    assert _message_ids(remote.received[1].edus) == ["m2"]


async def test_many_to_device_edus_go_a_transaction_full_at_a_time(
    world: World, mock_clock: MockClock
) -> None:
    remote = await world.remote()
    remote.gate = trio.Event()
    destination = remote.server_name
    running = await _start(world)
    for n in range(130):
        await _write(world, destination, f"m{n:03d}")
    running.sender.outbox_filled(destination)
    await until(lambda: len(remote.received) == 1, "the first transaction")
    remote.gate.set()
    await until(lambda: len(remote.received) == 2, "the second transaction")
    await settle(world.storage)
    sent = [_message_ids(received.edus) for received in remote.received]
    assert [len(ids) for ids in sent] == [100, 30]
    assert sent[0] + sent[1] == [f"m{n:03d}" for n in range(130)]
    assert await _waiting(world, destination) == []
