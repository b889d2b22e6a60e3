"""An account's lock, suspension and shadow ban in a real SQLite file: each
write run twice alike, and every read that carries the flags (a token's
owner, a password login, the account flags, the admin rows and list)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from _twice import run_twice, write_call

from ranvier.storage import Storage
from ranvier.storage import admin_writes as module
from ranvier.storage.accounts import AccountFlags, NewAccount, NewDevice, TokenOwner
from ranvier.storage.admin_reads import UserQuery

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
_TOKEN = hashlib.sha256(b"alice's token").digest()


async def _accounts(storage: Storage) -> None:
    await storage.accounts.create_account(
        NewAccount(ALICE, "hash", admin=False, created_ts=1),
        NewDevice(ALICE, "DEV", None, _TOKEN, 1),
    )
    await storage.accounts.create_account(NewAccount(BOB, None, admin=False, created_ts=2))


async def test_lock_and_suspension_writes_run_twice_alike(storage: Storage, db_path: Path) -> None:
    await _accounts(storage)
    users = ["users"]
    assert await run_twice(
        storage, db_path, write_call(module.set_locked, user_id=ALICE, locked=True), users
    )
    assert await run_twice(
        storage, db_path, write_call(module.set_suspended, user_id=ALICE, suspended=True), users
    )
    assert await storage.accounts.get_account_flags(ALICE) == AccountFlags(True, True)
    assert await run_twice(
        storage, db_path, write_call(module.set_locked, user_id=ALICE, locked=False), users
    )
    assert await storage.accounts.get_account_flags(ALICE) == AccountFlags(False, True)
    # No such account: nothing written, and said so.
    assert not await storage.admin.set_locked("@nobody:example.org", True)
    assert not await storage.admin.set_suspended("@nobody:example.org", True)
    assert await storage.accounts.get_account_flags("@nobody:example.org") is None


async def test_the_flags_come_with_the_token_and_the_login(storage: Storage) -> None:
    await _accounts(storage)
    assert await storage.accounts.get_token_owner(_TOKEN) == TokenOwner(ALICE, "DEV", False)
    await storage.admin.set_locked(ALICE, True)
    owner = await storage.accounts.get_token_owner(_TOKEN)
    assert owner is not None
    assert (owner.locked, owner.suspended) == (True, False)
    login = await storage.accounts.get_password_login(ALICE)
    assert login is not None
    assert login.locked
    await storage.admin.set_locked(ALICE, False)
    await storage.admin.set_suspended(ALICE, True)
    owner = await storage.accounts.get_token_owner(_TOKEN)
    assert owner is not None
    assert (owner.locked, owner.suspended) == (False, True)


async def test_the_admin_rows_show_the_flags_and_the_list_hides_locked_accounts(
    storage: Storage,
) -> None:
    await _accounts(storage)
    await storage.admin.set_locked(BOB, True)
    await storage.admin.set_suspended(ALICE, True)
    alice, bob = await storage.admin.user(ALICE), await storage.admin.user(BOB)
    assert alice is not None
    assert bob is not None
    assert (alice.locked, alice.suspended, bob.locked, bob.suspended) == (False, True, True, False)
    rows, total = await storage.admin.list_users(UserQuery(offset=0, limit=10))
    assert ([row.user_id for row in rows], total) == ([ALICE], 1)
    rows, total = await storage.admin.list_users(
        UserQuery(offset=0, limit=10, locked=True, order_by="locked", backwards=True)
    )
    assert ([row.user_id for row in rows], total) == ([BOB, ALICE], 2)
    rows, _ = await storage.admin.list_users(UserQuery(offset=0, limit=10, locked=True))
    assert [row.user_id for row in rows] == [ALICE, BOB]


async def test_a_shadow_ban_is_written_twice_alike_and_read_with_the_token(
    storage: Storage, db_path: Path
) -> None:
    await _accounts(storage)
    ban = write_call(module.set_shadow_banned, user_id=ALICE, shadow_banned=True)
    assert await run_twice(storage, db_path, ban, ["users"])
    owner = await storage.accounts.get_token_owner(_TOKEN)
    assert owner is not None
    assert (owner.shadow_banned, owner.locked, owner.suspended) == (True, False, False)
    assert await storage.accounts.get_account_flags(ALICE) == AccountFlags(False, False, True)
    alice, bob = await storage.admin.user(ALICE), await storage.admin.user(BOB)
    assert alice is not None
    assert bob is not None
    assert (alice.shadow_banned, bob.shadow_banned) == (True, False)
    rows, _ = await storage.admin.list_users(
        UserQuery(offset=0, limit=10, order_by="shadow_banned")
    )
    assert [row.user_id for row in rows] == [BOB, ALICE]
    lift = write_call(module.set_shadow_banned, user_id=ALICE, shadow_banned=False)
    assert await run_twice(storage, db_path, lift, ["users"])
    owner = await storage.accounts.get_token_owner(_TOKEN)
    assert owner is not None
    assert not owner.shadow_banned
    assert not await storage.admin.set_shadow_banned("@nobody:example.org", True)
