"""Dehydrated devices in a real SQLite file: one per user, stored with its
keys in one write, replaced and deleted with its keys and messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from _twice import dump_tables, run_twice, write_call

from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage import dehydrated_devices as module
from ranvier.storage.accounts import NewAccount, NewDevice
from ranvier.storage.dehydrated_devices import DehydratedUpload

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ALG = "signed_curve25519"


async def _accounts(storage: Storage) -> None:
    for user in (ALICE, BOB):
        await storage.accounts.create_account(NewAccount(user, "hash", admin=False, created_ts=1))
        await storage.accounts.add_device(NewDevice(user, "PHONE", None, user.encode(), 1))


def _upload(
    device_id: str, *, user_id: str = ALICE, upload_id: str | None = None
) -> DehydratedUpload:
    return DehydratedUpload(
        user_id=user_id,
        device_id=device_id,
        display_name="dehydrated",
        device_data=b'{"algorithm":"a","pickle":"' + device_id.encode() + b'"}',
        device_keys=b'{"device_id":"' + device_id.encode() + b'"}',
        one_time_keys=[(ALG, "k1", b'{"key":"1"}')],
        fallback_keys=[(ALG, "f1", b'{"key":"f"}')],
        upload_id=upload_id or f"upload-{device_id}",
        created_ts=5,
    )


async def _send(storage: Storage, device_id: str, n: int) -> int:
    _, position, reached = await storage.e2e_keys.send_to_device(
        sender=BOB,
        sender_device="PHONE",
        txn_id=f"t{n}",
        messages=[(ALICE, device_id, b'{"n":%d}' % n)],
        now_ms=5,
    )
    assert reached == [(ALICE, device_id)]
    assert position is not None
    return position


async def test_a_device_is_stored_with_its_keys_and_no_token(storage: Storage) -> None:
    await _accounts(storage)
    dehydrated = storage.dehydrated_devices
    assert await dehydrated.dehydrated_device(ALICE) is None
    stored = await dehydrated.store_dehydrated_device(_upload("D1"))
    assert (stored.replaced, stored.replaced_position) == (None, None)
    assert stored.position == await storage.e2e_keys.device_lists_position()
    assert await dehydrated.dehydrated_device(ALICE) == (
        "D1",
        b'{"algorithm":"a","pickle":"D1"}',
    )
    devices = {d.device_id: d for d in await storage.client_data.get_devices(ALICE)}
    assert set(devices) == {"PHONE", "D1"}
    assert devices["D1"].display_name == "dehydrated"
    keys = await storage.e2e_keys.device_keys({ALICE: ["D1"]})
    assert keys == {ALICE: {"D1": (b'{"device_id":"D1"}', "dehydrated")}}
    assert await storage.e2e_keys.key_counts(ALICE, "D1") == ({ALG: 1}, [ALG])
    assert await dehydrated.dehydrated_device(BOB) is None


async def test_replacing_deletes_the_previous_device_keys_and_messages(storage: Storage) -> None:
    await _accounts(storage)
    dehydrated = storage.dehydrated_devices
    await dehydrated.store_dehydrated_device(_upload("D1"))
    await _send(storage, "D1", 1)
    stored = await dehydrated.store_dehydrated_device(_upload("D2"))
    assert stored.replaced == "D1"
    assert stored.replaced_position is not None
    assert stored.replaced_position < stored.position
    assert await dehydrated.dehydrated_device(ALICE) == ("D2", b'{"algorithm":"a","pickle":"D2"}')
    assert {d.device_id for d in await storage.client_data.get_devices(ALICE)} == {"PHONE", "D2"}
    assert await storage.e2e_keys.key_counts(ALICE, "D1") == ({}, [])
    assert await storage.e2e_keys.to_device_messages(ALICE, "D1", 0, 1 << 40, 10) == []
    # The same ID again: the device is made afresh, nothing said deleted.
    position = await _send(storage, "D2", 2)
    again = await dehydrated.store_dehydrated_device(_upload("D2", upload_id="another"))
    assert (again.replaced, again.replaced_position) == (None, None)
    found = await dehydrated.dehydrated_device_messages(ALICE, 0, 10)
    assert found == ("D2", [])
    assert position < again.position


async def test_the_id_of_another_device_is_refused_and_nothing_written(
    storage: Storage, db_path: Path
) -> None:
    await _accounts(storage)
    await storage.dehydrated_devices.store_dehydrated_device(_upload("D1"))
    tables = ("devices", "dehydrated_devices", "e2e_device_keys", "device_list_changes")
    before = dump_tables(db_path, tables)
    with pytest.raises(MatrixError) as refused:
        await storage.dehydrated_devices.store_dehydrated_device(_upload("PHONE"))
    assert refused.value.errcode == "M_INVALID_PARAM"
    assert dump_tables(db_path, tables) == before


async def test_messages_are_read_page_by_page_and_kept(storage: Storage) -> None:
    await _accounts(storage)
    dehydrated = storage.dehydrated_devices
    assert await dehydrated.dehydrated_device_messages(ALICE, 0, 10) is None
    await dehydrated.store_dehydrated_device(_upload("D1"))
    positions = [await _send(storage, "D1", n) for n in range(3)]
    await _send(storage, "PHONE", 9)
    first = await dehydrated.dehydrated_device_messages(ALICE, 0, 2)
    assert first == ("D1", [(positions[0], b'{"n":0}'), (positions[1], b'{"n":1}')])
    rest = await dehydrated.dehydrated_device_messages(ALICE, positions[1], 2)
    assert rest == ("D1", [(positions[2], b'{"n":2}')])
    assert await dehydrated.dehydrated_device_messages(ALICE, positions[2], 2) == ("D1", [])
    # Reading deleted nothing: the first page is there to read again.
    assert await dehydrated.dehydrated_device_messages(ALICE, 0, 2) == first


async def test_deleting_takes_the_keys_and_messages(storage: Storage) -> None:
    await _accounts(storage)
    dehydrated = storage.dehydrated_devices
    assert await dehydrated.delete_dehydrated_device(ALICE) is None
    await dehydrated.store_dehydrated_device(_upload("D1"))
    await _send(storage, "D1", 1)
    deleted = await dehydrated.delete_dehydrated_device(ALICE)
    assert deleted == ("D1", await storage.e2e_keys.device_lists_position())
    assert await dehydrated.dehydrated_device(ALICE) is None
    assert {d.device_id for d in await storage.client_data.get_devices(ALICE)} == {"PHONE"}
    assert await storage.e2e_keys.device_keys({ALICE: ["D1"]}) == {ALICE: {}}
    assert await storage.e2e_keys.to_device_messages(ALICE, "D1", 0, 1 << 40, 10) == []
    assert await dehydrated.delete_dehydrated_device(ALICE) is None


async def test_a_device_logged_into_is_no_longer_dehydrated(storage: Storage) -> None:
    await _accounts(storage)
    dehydrated = storage.dehydrated_devices
    await dehydrated.store_dehydrated_device(_upload("D1"))
    await storage.accounts.add_device(NewDevice(ALICE, "D1", None, b"token of D1", 6))
    assert await dehydrated.dehydrated_device(ALICE) is None
    assert await dehydrated.delete_dehydrated_device(ALICE) is None
    # The device with its token is left alone.
    assert {d.device_id for d in await storage.client_data.get_devices(ALICE)} == {"PHONE", "D1"}


async def test_a_device_deleted_elsewhere_is_not_returned(storage: Storage) -> None:
    await _accounts(storage)
    dehydrated = storage.dehydrated_devices
    await dehydrated.store_dehydrated_device(_upload("D1"))
    await storage.accounts.delete_user_devices(ALICE, ["D1"])
    assert await dehydrated.dehydrated_device(ALICE) is None
    assert await dehydrated.dehydrated_device_messages(ALICE, 0, 10) is None
    stored = await dehydrated.store_dehydrated_device(_upload("D2"))
    assert (stored.replaced, stored.replaced_position) == (None, None)
    assert await dehydrated.dehydrated_device(ALICE) == ("D2", b'{"algorithm":"a","pickle":"D2"}')


async def test_each_write_runs_twice_alike(storage: Storage, db_path: Path) -> None:
    await _accounts(storage)
    tables = (
        "devices",
        "dehydrated_devices",
        "e2e_device_keys",
        "e2e_one_time_keys",
        "e2e_fallback_keys",
        "to_device_inbox",
        "device_list_changes",
    )
    await storage.dehydrated_devices.store_dehydrated_device(_upload("D1"))
    upload = _upload("D2")
    stored = await run_twice(
        storage,
        db_path,
        write_call(
            module._store_dehydrated_device,
            user_id=upload.user_id,
            device_id=upload.device_id,
            display_name=upload.display_name,
            device_data=upload.device_data,
            device_keys=upload.device_keys,
            one_time_keys=list(upload.one_time_keys),
            fallback_keys=list(upload.fallback_keys),
            upload_id=upload.upload_id,
            created_ts=upload.created_ts,
        ),
        tables,
    )
    assert stored.replaced == "D1"
    # A one-time key claimed between the two runs is not put back.
    claimed = await storage.e2e_keys.claim_keys([(ALICE, "D2", ALG)])
    assert [key_id for _, _, _, key_id, _ in claimed] == ["k1"]
    again = await storage.actor.submit(
        write_call(
            module._store_dehydrated_device,
            user_id=upload.user_id,
            device_id=upload.device_id,
            display_name=upload.display_name,
            device_data=upload.device_data,
            device_keys=upload.device_keys,
            one_time_keys=list(upload.one_time_keys),
            fallback_keys=list(upload.fallback_keys),
            upload_id=upload.upload_id,
            created_ts=upload.created_ts,
        )
    )
    assert again == stored
    assert await storage.e2e_keys.key_counts(ALICE, "D2") == ({}, [ALG])
