"""A write of a purged room, asked of the main process by a worker over
real HTTP on loopback: the worker raises :class:`RoomGoneError` as the
main process would, with the same errcode, message and status for a
client, and without retrying."""

from __future__ import annotations

import msgspec
import pytest
from _replication import ALICE, BOB, Main, Worker, shared_room

from ranvier.core import compute_event_context, event_to_persist
from ranvier.errors import MatrixError, RoomGoneError
from ranvier.replication import wire
from ranvier.testing import ingest_all


async def test_an_event_of_a_room_purged_meanwhile_is_refused_as_room_gone(
    main: Main, worker: Worker
) -> None:
    room = shared_room()
    await ingest_all(worker.storage, list(room.events.values()))
    late = room.message(BOB, "its context computed before the purge")
    persister = worker.persister("federation")
    context = await compute_event_context(late, worker.storage, persister)
    assert await main.storage.room_purge.purge_room(room.room_id) is not None
    attempts = worker.client.attempts
    with pytest.raises(RoomGoneError) as gone:
        await persister.persist_events([event_to_persist(late, context)])
    assert worker.client.attempts == attempts + 1  # not retried
    # What the main process raises, as a client would be answered it.
    expected = RoomGoneError(room.room_id)
    assert gone.value.room_id == room.room_id
    assert (gone.value.http_status, gone.value.to_json()) == (404, expected.to_json())
    assert expected.to_json()["errcode"] == "M_NOT_FOUND"
    assert await main.storage.get_event(late.event_id) is None
    assert await main.storage.get_room_version(room.room_id) is None


async def test_a_receipt_of_a_purged_room_is_refused_as_room_gone(
    main: Main, worker: Worker
) -> None:
    room = shared_room()
    await ingest_all(worker.storage, list(room.events.values()))
    assert await main.storage.room_purge.purge_room(room.room_id) is not None
    with pytest.raises(RoomGoneError) as gone:
        await worker.storage.receipts.put_receipt(
            room_id=room.room_id,
            receipt_type="m.read",
            user_id=ALICE,
            thread_id="",
            event_id=room.last,
            ts=5,
        )
    assert gone.value.room_id == room.room_id
    assert await main.storage.receipts.receipts_position() == 0


def test_only_the_room_gone_errcode_with_a_room_becomes_room_gone() -> None:
    status, body = wire.error_answer(RoomGoneError("!r:x"))
    encoded = msgspec.json.encode(body)
    back = wire.error_from_answer(status, encoded)
    assert isinstance(back, RoomGoneError)
    assert (back.room_id, back.message) == ("!r:x", RoomGoneError("!r:x").message)
    # Another 404, or the errcode without a room or at another status,
    # stays a plain Matrix error.
    plain = wire.error_from_answer(404, b'{"errcode": "M_NOT_FOUND", "error": "no such thing"}')
    assert type(plain) is MatrixError
    assert (plain.http_status, plain.errcode) == (404, "M_NOT_FOUND")
    body_without_room = msgspec.json.encode({"errcode": wire.ROOM_GONE, "error": "gone"})
    assert type(wire.error_from_answer(404, body_without_room)) is MatrixError
    assert type(wire.error_from_answer(400, encoded)) is MatrixError
