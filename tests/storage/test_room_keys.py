"""Server-side key backups in a real SQLite file: versions, the replacement
rule, the etag, and every write run twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from _twice import run_twice, write_call

from ranvier.replication import operations
from ranvier.storage import Storage, WriteOperation
from ranvier.storage import room_keys as module
from ranvier.storage.room_keys import BackupKeysWrite, RoomKey

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!r:example.org"
OTHER_ROOM = "!s:example.org"


def _key(
    session: str = "s1",
    *,
    room: str = ROOM,
    first: int = 0,
    forwarded: int = 0,
    verified: bool = False,
    data: bytes = b'{"c":"x"}',
) -> RoomKey:
    return RoomKey(room, session, first, forwarded, verified, data)


async def _version(storage: Storage, user: str = ALICE, n: int = 1) -> int:
    return await storage.room_keys.create_version(
        user, algorithm=ALG, auth_data=b'{"public_key":"p"}', creation_id=f"{user} {n}"
    )


async def test_versions_are_numbered_per_user_and_never_twice(storage: Storage) -> None:
    backups = storage.room_keys
    assert await backups.version(ALICE) is None
    assert [await _version(storage, n=n) for n in (1, 2)] == [1, 2]
    assert await _version(storage, BOB) == 1
    current = await backups.version(ALICE)
    assert current is not None
    assert (current.version, current.algorithm, current.auth_data) == (
        2,
        ALG,
        b'{"public_key":"p"}',
    )
    assert (current.etag, current.count) == (0, 0)
    # Deleting the current version makes the one before current; the next
    # version is numbered above the deleted one.
    assert await backups.delete_version(ALICE, 2)
    assert await backups.version(ALICE, 2) is None
    after_delete = await backups.version(ALICE)
    assert after_delete is not None
    assert after_delete.version == 1
    assert await _version(storage, n=3) == 3
    assert await backups.delete_version(ALICE, 1)
    assert await backups.delete_version(ALICE, 3)
    assert await backups.version(ALICE) is None
    assert await _version(storage, n=4) == 4
    # Bob's numbering is his own.
    bobs = await backups.version(BOB)
    assert bobs is not None
    assert bobs.version == 1


# (held, uploaded, whether the upload replaces the held key)
_RULE_CASES = [
    # is_verified first, whatever the indexes say.
    (_key(verified=False, first=0), _key(verified=True, first=9, forwarded=9), True),
    (_key(verified=True, first=9, forwarded=9), _key(verified=False, first=0), False),
    # Alike in that: the lower first_message_index, whatever forwarded_count says.
    (_key(first=5, forwarded=0), _key(first=4, forwarded=9), True),
    (_key(first=4, forwarded=9), _key(first=5, forwarded=0), False),
    (_key(verified=True, first=5), _key(verified=True, first=4, forwarded=3), True),
    # Alike in both: the lower forwarded_count.
    (_key(first=3, forwarded=2), _key(first=3, forwarded=1), True),
    (_key(first=3, forwarded=1), _key(first=3, forwarded=2), False),
    # No better at all: the held key stays.
    (_key(first=3, forwarded=1), _key(first=3, forwarded=1, data=b'{"c":"y"}'), False),
]


@pytest.mark.parametrize(("held", "uploaded", "replaces"), _RULE_CASES)
async def test_a_key_is_replaced_only_by_a_better_one(
    storage: Storage, held: RoomKey, uploaded: RoomKey, replaces: bool
) -> None:
    backups = storage.room_keys
    version = await _version(storage)
    assert await backups.upload_keys(ALICE, version, [held]) == BackupKeysWrite(
        "written", etag=1, count=1
    )
    uploaded = RoomKey(
        uploaded.room_id,
        uploaded.session_id,
        uploaded.first_message_index,
        uploaded.forwarded_count,
        uploaded.is_verified,
        b'{"c":"new"}',
    )
    answer = await backups.upload_keys(ALICE, version, [uploaded])
    assert answer == BackupKeysWrite("written", etag=2 if replaces else 1, count=1)
    assert await backups.keys(ALICE, version) == [uploaded if replaces else held]


async def test_keys_go_to_the_current_version_alone(storage: Storage) -> None:
    backups = storage.room_keys
    assert await backups.upload_keys(ALICE, 1, [_key()]) == BackupKeysWrite("unknown")
    old = await _version(storage, n=1)
    await backups.upload_keys(ALICE, old, [_key("kept")])
    current = await _version(storage, n=2)
    refused = await backups.upload_keys(ALICE, old, [_key("late")])
    assert refused == BackupKeysWrite("not current", current_version=current)
    assert await backups.upload_keys(ALICE, 99, [_key()]) == BackupKeysWrite("unknown")
    # Another user's version of the same number is not Alice's.
    assert await backups.upload_keys(BOB, current, [_key()]) == BackupKeysWrite("unknown")
    assert await backups.keys(ALICE, old) == [_key("kept")]
    assert await backups.keys(ALICE, current) == []
    assert await backups.keys(BOB, current) is None
    await backups.delete_version(ALICE, current)
    # The old version is current again, and the deleted one is gone.
    assert await backups.upload_keys(ALICE, current, [_key()]) == BackupKeysWrite("unknown")
    assert (await backups.upload_keys(ALICE, old, [_key("late")])).count == 2


async def test_one_upload_of_many_keys_moves_the_etag_once(storage: Storage) -> None:
    backups = storage.room_keys
    version = await _version(storage)
    keys = [_key(f"s{i}", room=room) for room in (ROOM, OTHER_ROOM) for i in range(3)]
    assert await backups.upload_keys(ALICE, version, keys) == BackupKeysWrite(
        "written", etag=1, count=6
    )
    # The same keys again change nothing, nor does an empty upload.
    assert await backups.upload_keys(ALICE, version, keys) == BackupKeysWrite(
        "written", etag=1, count=6
    )
    assert await backups.upload_keys(ALICE, version, []) == BackupKeysWrite(
        "written", etag=1, count=6
    )
    # One better key among them is one change.
    better = [*keys[:2], _key("s2", first=0, verified=True)]
    assert await backups.upload_keys(ALICE, version, better) == BackupKeysWrite(
        "written", etag=2, count=6
    )
    shown = await backups.version(ALICE, version)
    assert shown is not None
    assert (shown.etag, shown.count) == (2, 6)
    assert [key.session_id for key in await backups.keys(ALICE, version, room_id=ROOM) or []] == [
        "s0",
        "s1",
        "s2",
    ]
    one = await backups.keys(ALICE, version, room_id=ROOM, session_id="s2")
    assert one == [_key("s2", verified=True)]


async def test_deleting_keys_narrows_to_a_room_or_a_session(storage: Storage) -> None:
    backups = storage.room_keys
    version = await _version(storage)
    keys = [_key(f"s{i}", room=room) for room in (ROOM, OTHER_ROOM) for i in range(3)]
    await backups.upload_keys(ALICE, version, keys)
    deleted = await backups.delete_keys(ALICE, version, room_id=ROOM, session_id="s1")
    assert deleted == BackupKeysWrite("written", etag=2, count=5)
    # Nothing left to delete leaves the etag.
    again = await backups.delete_keys(ALICE, version, room_id=ROOM, session_id="s1")
    assert again == deleted
    assert await backups.delete_keys(ALICE, version, room_id=OTHER_ROOM) == BackupKeysWrite(
        "written", etag=3, count=2
    )
    assert await backups.delete_keys(ALICE, version) == BackupKeysWrite("written", etag=4, count=0)
    assert await backups.delete_keys(ALICE, 7) == BackupKeysWrite("unknown")
    assert await backups.delete_keys(BOB, version) == BackupKeysWrite("unknown")


async def test_an_older_version_keeps_its_keys_for_reading_and_deleting(
    storage: Storage,
) -> None:
    backups = storage.room_keys
    old = await _version(storage, n=1)
    await backups.upload_keys(ALICE, old, [_key("a"), _key("b")])
    await _version(storage, n=2)
    assert len(await backups.keys(ALICE, old) or []) == 2
    assert await backups.delete_keys(ALICE, old, room_id=ROOM, session_id="a") == (
        BackupKeysWrite("written", etag=2, count=1)
    )


async def test_updating_a_version_keeps_its_algorithm(storage: Storage) -> None:
    backups = storage.room_keys
    version = await _version(storage)
    await backups.upload_keys(ALICE, version, [_key()])
    assert await backups.update_version(ALICE, version, algorithm="other", auth_data=b"{}") == ALG
    unchanged = await backups.version(ALICE, version)
    assert unchanged is not None
    assert unchanged.auth_data == b'{"public_key":"p"}'
    assert await backups.update_version(ALICE, version, algorithm=ALG, auth_data=b"{}") == ALG
    updated = await backups.version(ALICE, version)
    assert updated is not None
    # The keys are as they were: the etag does not move.
    assert (updated.auth_data, updated.etag, updated.count) == (b"{}", 1, 1)
    assert await backups.update_version(BOB, version, algorithm=ALG, auth_data=b"{}") is None
    await backups.delete_version(ALICE, version)
    assert await backups.update_version(ALICE, version, algorithm=ALG, auth_data=b"{}") is None


async def test_deleting_a_version_deletes_its_keys(storage: Storage, db_path: Path) -> None:
    backups = storage.room_keys
    version = await _version(storage)
    await backups.upload_keys(ALICE, version, [_key("a"), _key("b")])
    bobs = await _version(storage, BOB)
    await backups.upload_keys(BOB, bobs, [_key("a")])
    assert not await backups.delete_version(ALICE, version + 1)
    assert await backups.delete_version(ALICE, version)
    assert await backups.keys(ALICE, version) is None
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT user_id FROM room_key_backup_keys").fetchall()
    finally:
        conn.close()
    assert rows == [(BOB,)]
    # Deleted before, deleted still.
    assert await backups.delete_version(ALICE, version)


_TWICE: dict[str, WriteOperation[Any]] = {
    "room_keys.create_version": write_call(
        module._create_version, user_id=ALICE, algorithm=ALG, auth_data=b"{}", creation_id="c9"
    ),
    "room_keys.update_version": write_call(
        module._update_version, user_id=ALICE, version=1, algorithm=ALG, auth_data=b'{"n":2}'
    ),
    "room_keys.delete_version": write_call(module._delete_version, user_id=ALICE, version=1),
    "room_keys.upload_keys": write_call(
        module._upload_keys, user_id=ALICE, version=1, keys=[_key("new"), _key("s1", first=0)]
    ),
    "room_keys.delete_keys": write_call(
        module._delete_keys, user_id=ALICE, version=1, room_id=ROOM, session_id=None
    ),
}


def test_every_write_of_the_module_is_run_twice_here() -> None:
    names = {name for name in operations.operation_names() if name.startswith("room_keys.")}
    assert names == set(_TWICE)


@pytest.mark.parametrize("name", sorted(_TWICE))
async def test_a_write_run_twice_leaves_what_the_first_run_left(
    storage: Storage, db_path: Path, name: str
) -> None:
    """A worker's write repeated after the main process restarted."""
    version = await _version(storage)
    await storage.room_keys.upload_keys(ALICE, version, [_key("s1", first=5)])
    operation = _TWICE[name]
    assert operations.operation_name(operation) == name
    # The arguments travel to the main process and back intact.
    first = await run_twice(
        storage, db_path, operation, ("room_key_backup_versions", "room_key_backup_keys")
    )
    decoded = operations.decode_result(name, operations.encode_result(name, first))
    assert decoded == first
