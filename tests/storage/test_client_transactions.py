from __future__ import annotations

from pathlib import Path

import trio

from ranvier.storage import Storage

ALICE = "@alice:example.org"


async def test_the_first_event_of_a_transaction_is_kept(storage: Storage) -> None:
    txns = storage.client_transactions
    assert await txns.get_client_transaction(ALICE, "DEV", "t1") is None
    first = await txns.add_client_transaction(
        ALICE, "DEV", "t1", room_id="!r:example.org", event_id="$one", created_ts=10
    )
    again = await txns.add_client_transaction(
        ALICE, "DEV", "t1", room_id="!r:example.org", event_id="$two", created_ts=11
    )
    assert (first, again) == ("$one", "$one")
    assert await txns.get_client_transaction(ALICE, "DEV", "t1") == "$one"
    # Another device's transaction of the same ID is its own.
    assert await txns.get_client_transaction(ALICE, "OTHER", "t1") is None


async def test_old_transactions_are_forgotten(storage: Storage) -> None:
    txns = storage.client_transactions
    for n in range(3):
        await txns.add_client_transaction(
            ALICE, "DEV", f"t{n}", room_id="!r:example.org", event_id=f"${n}", created_ts=n
        )
    assert await txns.delete_client_transactions_before(2) == 2
    assert await txns.get_client_transaction(ALICE, "DEV", "t1") is None
    assert await txns.get_client_transaction(ALICE, "DEV", "t2") == "$2"


async def test_transactions_outlive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "txns.db"
    for attempt in range(2):
        storage = Storage(path, synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            if attempt == 0:
                await storage.client_transactions.add_client_transaction(
                    ALICE, "DEV", "t", room_id="!r:example.org", event_id="$e", created_ts=1
                )
            else:
                found = await storage.client_transactions.get_client_transaction(ALICE, "DEV", "t")
                assert found == "$e"
            nursery.cancel_scope.cancel()
