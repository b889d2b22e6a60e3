"""The admin API's storage on a real SQLite file: accounts listed, filtered
and ordered with their profiles, and every admin write run twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from _twice import run_twice, write_call

from ranvier.storage import Storage
from ranvier.storage import admin_writes as module
from ranvier.storage.accounts import NewAccount
from ranvier.storage.admin_reads import BlockRecord, UserQuery

ROOM = "!blocked:example.org"


async def _accounts(storage: Storage) -> None:
    for localpart, ts, admin in (("carol", 30, False), ("alice", 20, True), ("bob", 10, False)):
        account = NewAccount(f"@{localpart}:example.org", "hash", admin=admin, created_ts=ts)
        await storage.accounts.create_account(account)
    await storage.client_data.set_profile("@bob:example.org", "Zed", None)


async def _names(storage: Storage, **query: object) -> tuple[list[str], int]:
    rows, total = await storage.admin.list_users(UserQuery(offset=0, limit=10, **query))  # type: ignore[arg-type]
    return [row.user_id.split(":")[0] for row in rows], total


async def test_accounts_are_ordered_filtered_and_counted(storage: Storage) -> None:
    await _accounts(storage)
    assert await _names(storage) == (["@alice", "@bob", "@carol"], 3)
    assert await _names(storage, order_by="creation_ts") == (["@bob", "@alice", "@carol"], 3)
    assert await _names(storage, order_by="creation_ts", backwards=True) == (
        ["@carol", "@alice", "@bob"],
        3,
    )
    # Ties (admin false twice) by name, ascending either way.
    assert await _names(storage, order_by="admin", backwards=True) == (
        ["@alice", "@bob", "@carol"],
        3,
    )
    assert await _names(storage, name="zE") == (["@bob"], 1)
    assert await _names(storage, name="car") == (["@carol"], 1)
    assert await _names(storage, user_id="rol") == (["@carol"], 1)
    assert await _names(storage, admins=False) == (["@bob", "@carol"], 2)
    rows, total = await storage.admin.list_users(UserQuery(offset=2, limit=1))
    assert ([row.user_id for row in rows], total) == (["@carol:example.org"], 3)


async def test_deactivated_accounts_are_listed_only_when_asked(storage: Storage) -> None:
    await _accounts(storage)
    await storage.accounts.deactivate_account("@bob:example.org")
    assert await _names(storage) == (["@alice", "@carol"], 2)
    assert await _names(storage, deactivated=True) == (["@alice", "@bob", "@carol"], 3)
    bob = await storage.admin.user("@bob:example.org")
    assert bob is not None
    assert (bob.deactivated, bob.displayname, bob.created_ts) == (True, "Zed", 10)


async def test_every_admin_write_runs_twice_alike(storage: Storage, db_path: Path) -> None:
    await _accounts(storage)
    await storage.accounts.deactivate_account("@bob:example.org")
    users = ["users"]
    assert await run_twice(
        storage,
        db_path,
        write_call(module.set_admin, user_id="@carol:example.org", admin=True),
        users,
    )
    assert await run_twice(
        storage,
        db_path,
        write_call(module.reactivate_account, user_id="@bob:example.org", password_hash="new"),
        users,
    )
    await run_twice(
        storage,
        db_path,
        write_call(module.block_room, room_id=ROOM, user_id="@alice:example.org", blocked_ts=5),
        ["blocked_rooms"],
    )
    assert await storage.admin.block_of(ROOM) == BlockRecord(ROOM, "@alice:example.org", 5)
    # A second block keeps who blocked first.
    await storage.admin.block_room(ROOM, "@carol:example.org", 9)
    assert await storage.admin.block_of(ROOM) == BlockRecord(ROOM, "@alice:example.org", 5)
    await run_twice(
        storage, db_path, write_call(module.unblock_room, room_id=ROOM), ["blocked_rooms"]
    )
    assert not await storage.admin.is_room_blocked(ROOM)
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT user_id, admin, deactivated, password_hash FROM users"
        ).fetchall()
    finally:
        conn.close()
    assert sorted(rows) == [
        ("@alice:example.org", 1, 0, "hash"),
        ("@bob:example.org", 0, 0, "new"),
        ("@carol:example.org", 1, 0, "hash"),
    ]
    # No such account: nothing written, and said so.
    assert not await storage.admin.set_admin("@nobody:example.org", True)
