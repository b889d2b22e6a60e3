"""Profiles, account data and the room list in a real SQLite file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ranvier.storage import Storage
from ranvier.storage.accounts import NewAccount
from ranvier.storage.client_data import AccountDataChange
from ranvier.storage.schema import migrate

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def test_the_migration_makes_its_tables_on_a_migrated_database(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        migrate(conn)
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert {"profiles", "account_data", "room_list"} <= tables
        conn.execute("PRAGMA foreign_keys = ON")
        # A profile needs an account; a listed room needs a room.
        for statement in (
            "INSERT INTO profiles (user_id, displayname) VALUES ('@x:y', 'X')",
            "INSERT INTO room_list (room_id, added_ts) VALUES ('!r:y', 1)",
        ):
            try:
                conn.execute(statement)
            except sqlite3.IntegrityError:
                pass
            else:
                raise AssertionError(f"accepted: {statement}")


async def test_profiles_are_stored_per_account(storage: Storage) -> None:
    await storage.accounts.create_account(NewAccount(ALICE, None, admin=False, created_ts=1))
    data = storage.client_data
    assert await data.get_profile(ALICE) == (None, None)
    assert await data.get_profile(BOB) is None
    await data.set_profile(ALICE, "Alice", None)
    await data.set_profile(ALICE, "Alice", "mxc://example.org/a")
    assert await data.get_profile(ALICE) == ("Alice", "mxc://example.org/a")


async def test_account_data_positions_only_grow(storage: Storage) -> None:
    data = storage.client_data
    assert await data.account_data_position() == 0
    first = await data.put_account_data(ALICE, "", "x.a", b'{"n":1}')
    second = await data.put_account_data(ALICE, "!r:example.org", "m.tag", b"{}")
    await data.put_account_data(BOB, "", "x.a", b"{}")
    # Replacing the newest entry files it after everything, never at a
    # position already handed out.
    third = await data.put_account_data(BOB, "", "x.a", b'{"n":2}')
    assert first < second < third
    assert await data.account_data_position() == third
    assert await data.account_data_changes(ALICE, 0, third) == [
        AccountDataChange(first, "", "x.a", b'{"n":1}'),
        AccountDataChange(second, "!r:example.org", "m.tag", b"{}"),
    ]
    assert await data.account_data_changes(ALICE, first, third) == [
        AccountDataChange(second, "!r:example.org", "m.tag", b"{}")
    ]
    assert await data.account_data_changes(BOB, 0, third) == [
        AccountDataChange(third, "", "x.a", b'{"n":2}')
    ]
    assert await data.account_data_changes(BOB, 0, third - 1) == []
    replaced = await data.put_account_data(BOB, "", "x.a", b'{"n":3}')
    assert replaced > third
    assert await data.account_data_position() == replaced
    assert await data.get_account_data(BOB, "", "x.a") == b'{"n":3}'
    assert await data.get_account_data(BOB, "", "x.none") is None
