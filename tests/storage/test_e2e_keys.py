"""Keys, to-device messages and device-list changes in a real SQLite file."""

from __future__ import annotations

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.accounts import NewAccount, NewDevice

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ALG = "signed_curve25519"


async def _accounts(storage: Storage) -> None:
    for user, devices in ((ALICE, ("A1",)), (BOB, ("B1", "B2"))):
        await storage.accounts.create_account(NewAccount(user, "hash", admin=False, created_ts=1))
        for device in devices:
            await storage.accounts.add_device(
                NewDevice(user, device, f"{device} name", device.encode(), 1)
            )


async def test_device_keys_are_served_for_existing_devices_and_move_the_stream(
    storage: Storage,
) -> None:
    await _accounts(storage)
    keys = storage.e2e_keys
    assert await keys.device_lists_position() == 0
    counts, position = await keys.upload_keys(
        user_id=BOB, device_id="B1", device_keys=b'{"k":1}', one_time_keys=[], fallback_keys=[]
    )
    assert counts == {}
    assert position is not None
    assert await keys.device_lists_position() == position
    assert await keys.device_list_changes(0, position) == {BOB}
    # The same keys again change nothing.
    _, again = await keys.upload_keys(
        user_id=BOB, device_id="B1", device_keys=b'{"k":1}', one_time_keys=[], fallback_keys=[]
    )
    assert again is None
    # Keys of a device that does not exist (any more) are not served.
    await keys.upload_keys(
        user_id=BOB, device_id="GONE", device_keys=b'{"k":2}', one_time_keys=[], fallback_keys=[]
    )
    assert await keys.device_keys({BOB: ()}) == {BOB: {"B1": (b'{"k":1}', "B1 name")}}
    assert await keys.device_keys({BOB: ("B2",), ALICE: ()}) == {BOB: {}, ALICE: {}}


async def test_a_one_time_key_is_claimed_once_then_the_fallback_key(storage: Storage) -> None:
    await _accounts(storage)
    keys = storage.e2e_keys
    counts, _ = await keys.upload_keys(
        user_id=BOB,
        device_id="B1",
        device_keys=None,
        one_time_keys=[(ALG, "k1", b'{"key":"1"}'), (ALG, "k2", b'{"key":"2"}')],
        fallback_keys=[(ALG, "f1", b'{"key":"f"}')],
    )
    assert counts == {ALG: 2}
    assert await keys.key_counts(BOB, "B1") == ({ALG: 2}, [ALG])
    claimed: list[tuple[str, str, str, str, bytes]] = []

    async def claim() -> None:
        claimed.extend(await keys.claim_keys([(BOB, "B1", ALG)]))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(claim)
    key_ids = sorted(key_id for _, _, _, key_id, _ in claimed)
    assert key_ids == ["f1", "k1", "k2"]
    assert await keys.key_counts(BOB, "B1") == ({}, [])
    # The fallback key stays, used.
    assert [c[3] for c in await keys.claim_keys([(BOB, "B1", ALG)])] == ["f1"]
    assert await keys.claim_keys([(BOB, "B2", ALG)]) == []
    # A device that is gone hands out nothing, though its keys were stored.
    await keys.upload_keys(
        user_id=BOB,
        device_id="B2",
        device_keys=None,
        one_time_keys=[(ALG, "k9", b'{"key":"9"}')],
        fallback_keys=[(ALG, "f9", b'{"key":"f9"}')],
    )
    await storage.accounts.delete_user_devices(BOB, ["B2"])
    assert await keys.claim_keys([(BOB, "B2", ALG)]) == []


async def test_a_one_time_key_id_keeps_its_key(storage: Storage) -> None:
    await _accounts(storage)
    keys = storage.e2e_keys
    await keys.upload_keys(
        user_id=BOB,
        device_id="B1",
        device_keys=None,
        one_time_keys=[(ALG, "k1", b'{"key":"1"}')],
        fallback_keys=[],
    )
    with pytest.raises(MatrixError) as refused:
        await keys.upload_keys(
            user_id=BOB,
            device_id="B1",
            device_keys=None,
            one_time_keys=[(ALG, "k2", b'{"key":"2"}'), (ALG, "k1", b'{"key":"other"}')],
            fallback_keys=[],
        )
    assert refused.value.errcode == "M_INVALID_PARAM"
    # Nothing of the refused upload was written; the same key again is fine.
    assert await keys.key_counts(BOB, "B1") == ({ALG: 1}, [])
    counts, _ = await keys.upload_keys(
        user_id=BOB,
        device_id="B1",
        device_keys=None,
        one_time_keys=[(ALG, "k1", b'{"key": "1"}')],
        fallback_keys=[],
    )
    assert counts == {ALG: 1}


async def test_to_device_messages_once_per_transaction_until_acknowledged(
    storage: Storage,
) -> None:
    await _accounts(storage)
    keys = storage.e2e_keys

    async def send(txn: str) -> tuple[bool, int | None, list[tuple[str, str]]]:
        return await keys.send_to_device(
            sender=ALICE,
            sender_device="A1",
            txn_id=txn,
            messages=[(BOB, "*", b'{"m":1}'), (ALICE, "NONE", b'{"m":2}')],
            now_ms=5,
        )

    fresh, position, reached = await send("t1")
    assert fresh
    assert reached == [(BOB, "B1"), (BOB, "B2")]
    assert position is not None
    assert await keys.to_device_position() == position
    assert await send("t1") == (False, None, [])
    assert await keys.to_device_position() == position
    got = await keys.to_device_messages(BOB, "B1", 0, position, 100)
    assert [message for _, message in got] == [b'{"m":1}']
    (stream_id, _) = got[0]
    # A sync's one read: the messages, and whether any it acknowledges remain.
    read = await keys.sync_read(
        user_id=BOB,
        device_id="B1",
        to_device=(stream_id, position),
        limit=100,
        device_lists=None,
        room_ids=(),
        events=None,
    )
    assert (read.messages, read.acknowledged_left) == ([], True)
    assert await keys.sync_positions() == (position, 0)
    assert await keys.acknowledge_to_device(BOB, "B1", stream_id) == 1
    assert await keys.to_device_messages(BOB, "B1", 0, position, 100) == []
    assert await keys.acknowledge_to_device(BOB, "B1", stream_id) == 0
    # The other device still has its copy; the position never goes back.
    assert len(await keys.to_device_messages(BOB, "B2", 0, position, 100)) == 1
    assert await keys.to_device_position() == position


async def test_signatures_merge_into_device_and_cross_signing_keys(storage: Storage) -> None:
    await _accounts(storage)
    keys = storage.e2e_keys
    await keys.upload_keys(
        user_id=BOB,
        device_id="B1",
        device_keys=b'{"keys":{},"signatures":{"@bob:example.org":{"ed25519:B1":"s"}}}',
        one_time_keys=[],
        fallback_keys=[],
    )
    before = await keys.device_lists_position()
    master = b'{"keys":{"ed25519:MPUB":"MPUB"},"usage":["master"]}'
    after_master = await keys.set_cross_signing_keys(BOB, {"master": master})
    assert after_master > before
    missing, position = await keys.add_signatures(
        [
            (BOB, "B1", b'{"@bob:example.org":{"ed25519:SSK":"x"}}'),
            (BOB, "MPUB", b'{"@alice:example.org":{"ed25519:USK":"y"}}'),
            (BOB, "NOPE", b'{"@bob:example.org":{"ed25519:SSK":"z"}}'),
        ]
    )
    assert missing == [(BOB, "NOPE")]
    assert position is not None
    assert position > after_master
    device = (await keys.device_keys({BOB: ("B1",)}))[BOB]["B1"][0]
    assert b'"ed25519:B1":"s"' in device
    assert b'"ed25519:SSK":"x"' in device
    stored = (await keys.cross_signing_keys([BOB]))[BOB]["master"]
    assert b'"ed25519:USK":"y"' in stored


async def test_outbox_edus_are_written_once_per_transaction_and_forgotten_upto(
    storage: Storage,
) -> None:
    keys = storage.e2e_keys

    async def send(txn: str, *destinations: str) -> bool:
        fresh, _, _ = await keys.send_to_device(
            sender=ALICE,
            sender_device="A1",
            txn_id=txn,
            messages=[],
            now_ms=5,
            remote=[(destination, txn.encode()) for destination in destinations],
        )
        return fresh

    assert await send("t1", "b.example", "c.example")
    # A retried transaction writes no second EDU.
    assert not await send("t1", "b.example", "c.example")
    assert await send("t2", "b.example")
    assert await keys.outbox_destinations(None, 10) == ["b.example", "c.example"]
    assert await keys.outbox_destinations("b.example", 10) == ["c.example"]
    assert await keys.outbox_destinations(None, 1) == ["b.example"]
    waiting = await keys.outbox_edus("b.example", 0, 10)
    assert [edu for _, edu in waiting] == [b"t1", b"t2"]
    first = waiting[0][0]
    assert await keys.outbox_edus("b.example", first, 10) == waiting[1:]
    assert await keys.outbox_edus("b.example", 0, 1) == waiting[:1]
    assert await keys.delete_outbox_edus("b.example", first) == 1
    assert await keys.outbox_edus("b.example", 0, 10) == waiting[1:]
    assert [edu for _, edu in await keys.outbox_edus("c.example", 0, 10)] == [b"t1"]
