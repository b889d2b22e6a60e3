from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.storage import EventToPersist, Storage
from ranvier.storage.records import EventStateContext

ALICE = "@alice:example.org"


async def test_the_first_event_of_a_transaction_is_kept(storage: Storage) -> None:
    txns = storage.client_transactions
    assert await txns.get_client_transaction(ALICE, "DEV", b"", "t1") is None
    first = await txns.add_client_transaction(
        ALICE, "DEV", b"", "t1", room_id="!r:example.org", event_id="$one", created_ts=10
    )
    again = await txns.add_client_transaction(
        ALICE, "DEV", b"", "t1", room_id="!r:example.org", event_id="$two", created_ts=11
    )
    assert (first, again) == ("$one", "$one")
    assert await txns.get_client_transaction(ALICE, "DEV", b"", "t1") == "$one"
    # Another device's transaction of the same ID is its own.
    assert await txns.get_client_transaction(ALICE, "OTHER", b"", "t1") is None
    # As is a device-less token's, kept by its token.
    token = b"\x07" * 32
    assert await txns.get_client_transaction(ALICE, "", token, "t1") is None
    assert (
        await txns.add_client_transaction(
            ALICE, "", token, "t1", room_id="!r:example.org", event_id="$three", created_ts=12
        )
        == "$three"
    )
    assert await txns.get_client_transaction(ALICE, "", token, "t1") == "$three"
    assert await txns.get_client_transaction(ALICE, "", b"\x08" * 32, "t1") is None


async def test_old_transactions_are_forgotten(storage: Storage) -> None:
    txns = storage.client_transactions
    for n in range(3):
        await txns.add_client_transaction(
            ALICE, "DEV", b"", f"t{n}", room_id="!r:example.org", event_id=f"${n}", created_ts=n
        )
    assert await txns.delete_client_transactions_before(2) == 2
    assert await txns.get_client_transaction(ALICE, "DEV", b"", "t1") is None
    assert await txns.get_client_transaction(ALICE, "DEV", b"", "t2") == "$2"


async def test_transactions_outlive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "txns.db"
    for attempt in range(2):
        storage = Storage(path, synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            if attempt == 0:
                await storage.client_transactions.add_client_transaction(
                    ALICE, "DEV", b"", "t", room_id="!r:example.org", event_id="$e", created_ts=1
                )
            else:
                found = await storage.client_transactions.get_client_transaction(
                    ALICE, "DEV", b"", "t"
                )
                assert found == "$e"
            nursery.cancel_scope.cancel()


def _message(event_id: str, room_id: str, *, state_group: int) -> EventToPersist:
    return EventToPersist(
        event_id=event_id,
        room_id=room_id,
        room_version="10",
        type="m.room.message",
        state_key=None,
        sender=ALICE,
        depth=1,
        origin_server_ts=1,
        json=b"{}",
        prev_event_ids=(),
        auth_event_ids=(),
        outlier=False,
        rejected_reason=None,
        soft_failed=False,
        context=EventStateContext(
            state_group_before=state_group, state_group_after=state_group, partial_state=False
        ),
    )


async def test_events_and_their_transactions_are_one_request(storage: Storage) -> None:
    room_id = "!r:example.org"
    await storage.store_room(room_id, "10")
    group = await storage.store_state_group(room_id, None, {})
    requests = storage.actor.stats.requests
    orderings, recorded = await storage.persist_events_recording_transactions(
        [_message("$a", room_id, state_group=group), _message("$b", room_id, state_group=group)],
        [(ALICE, "DEV", b"", "ta", room_id, "$a", 5), (ALICE, "DEV", b"", "tb", room_id, "$b", 5)],
    )
    assert storage.actor.stats.requests == requests + 1
    assert set(orderings) == {"$a", "$b"}
    assert recorded == ["$a", "$b"]
    txns = storage.client_transactions
    assert await txns.get_client_transaction(ALICE, "DEV", b"", "ta") == "$a"
    # A transaction recorded already keeps its event.
    _, again = await storage.persist_events_recording_transactions(
        [_message("$c", room_id, state_group=group)], [(ALICE, "DEV", b"", "ta", room_id, "$c", 6)]
    )
    assert again == ["$a"]


async def test_a_refused_write_records_no_transaction(storage: Storage) -> None:
    room_id = "!r:example.org"
    await storage.store_room(room_id, "10")
    with pytest.raises(MatrixError, match="state group 404 does not exist"):
        await storage.persist_events_recording_transactions(
            [_message("$a", room_id, state_group=404)], [(ALICE, "DEV", b"", "t", room_id, "$a", 5)]
        )
    assert await storage.client_transactions.get_client_transaction(ALICE, "DEV", b"", "t") is None
    assert await storage.get_event("$a") is None


async def test_many_transactions_are_looked_up_in_one_read(storage: Storage) -> None:
    txns = storage.client_transactions
    for n in range(0, 700, 2):
        await txns.add_client_transaction(
            ALICE, "DEV", b"", f"t{n}", room_id="!r:example.org", event_id=f"${n}", created_ts=1
        )
    keys = [(ALICE, "DEV", b"", f"t{n}") for n in range(700)]
    found = await txns.get_client_transactions([*keys, keys[0]])
    assert found == {(ALICE, "DEV", b"", f"t{n}"): f"${n}" for n in range(0, 700, 2)}
    assert await txns.get_client_transactions([]) == {}
    assert await txns.get_client_transactions([(ALICE, "OTHER", b"", "t0")]) == {}
