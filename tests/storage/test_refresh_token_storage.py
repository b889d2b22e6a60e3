"""Refresh and login tokens in a real SQLite file: the refresh tokens going
with their access tokens, the older pair retired on the newer one's use, a
login token spent with the device it logs in, and each write repeated
through the replication encoding."""

from __future__ import annotations

from pathlib import Path

from _twice import dump_tables, run_twice, write_call

from ranvier.storage import Storage, login_tokens, refresh_tokens
from ranvier.storage.accounts import NewAccount, NewDevice, TokenOwner
from ranvier.storage.refresh_tokens import TokenPair

ALICE = "@alice:x"
_TABLES = ("access_tokens", "refresh_tokens", "login_tokens", "devices")


def _pair(name: str, created_ts: int = 10) -> TokenPair:
    return TokenPair(f"access {name}".encode(), f"refresh {name}".encode(), created_ts, 100)


async def _logged_in(storage: Storage) -> None:
    await storage.accounts.create_account(
        NewAccount(ALICE, "hash", admin=False, created_ts=5),
        NewDevice(ALICE, "DEV", None, b"access 1", 5, 50, b"refresh 1"),
    )


async def test_a_refresh_and_the_older_pair_retired_each_run_twice(
    storage: Storage, db_path: Path
) -> None:
    await _logged_in(storage)
    owner = await run_twice(
        storage,
        db_path,
        write_call(refresh_tokens._refresh, refresh_token_hash=b"refresh 1", pair=_pair("2")),
        _TABLES,
    )
    assert owner == TokenOwner(ALICE, "DEV", False, 100)
    owner = await storage.accounts.get_token_owner(b"access 2")
    assert owner == TokenOwner(ALICE, "DEV", False, 100, replaces_older=True)
    # The older access token still works until the newer is used.
    assert await storage.accounts.get_token_owner(b"access 1") is not None
    await run_twice(
        storage,
        db_path,
        write_call(refresh_tokens._retire_older, access_token_hash=b"access 2"),
        _TABLES,
    )
    assert await storage.accounts.get_token_owner(b"access 1") is None
    assert await storage.accounts.get_token_owner(b"access 2") == TokenOwner(
        ALICE, "DEV", False, 100
    )
    assert await storage.refresh_tokens.refresh(b"refresh 1", _pair("3")) is None


async def test_a_repeated_refresh_is_recognised_after_its_pair_was_used(
    storage: Storage, db_path: Path
) -> None:
    await _logged_in(storage)
    assert await storage.refresh_tokens.refresh(b"refresh 1", _pair("2")) is not None
    await storage.refresh_tokens.retire_older(b"access 2")
    before = dump_tables(db_path, _TABLES)
    # The same refresh again (a worker's write repeated): its pair answered.
    assert await storage.refresh_tokens.refresh(b"refresh 1", _pair("2")) == TokenOwner(
        ALICE, "DEV", False, 100
    )
    assert dump_tables(db_path, _TABLES) == before


async def test_refresh_tokens_go_with_their_device(storage: Storage, db_path: Path) -> None:
    await _logged_in(storage)
    assert await storage.refresh_tokens.refresh(b"refresh 1", _pair("2")) is not None
    assert len(dump_tables(db_path, _TABLES)["refresh_tokens"]) == 2
    await storage.accounts.delete_user_devices(ALICE, ["DEV"])
    assert dump_tables(db_path, _TABLES) == {table: [] for table in _TABLES}


async def test_a_login_token_logs_in_once_and_the_login_runs_twice(
    storage: Storage, db_path: Path
) -> None:
    await _logged_in(storage)
    await storage.login_tokens.add_login_token(b"old", ALICE, expires_ts=20, now_ts=0)
    await storage.login_tokens.add_login_token(b"login", ALICE, expires_ts=200, now_ts=20)
    # The expired one was swept by the second's making.
    assert [row[0] for row in dump_tables(db_path, _TABLES)["login_tokens"]] == [b"login"]
    assert await storage.login_tokens.login_token_user(b"login", 199) == ALICE
    assert await storage.login_tokens.login_token_user(b"login", 200) is None
    phone = NewDevice(ALICE, "PHONE", None, b"phone token", 30)
    assert await run_twice(
        storage,
        db_path,
        write_call(login_tokens._log_in_with_token, token_hash=b"login", now_ts=30, device=phone),
        _TABLES,
    )
    assert dump_tables(db_path, _TABLES)["login_tokens"] == []
    assert await storage.accounts.get_token_owner(b"phone token") == TokenOwner(
        ALICE, "PHONE", False
    )
    other = NewDevice(ALICE, "TABLET", None, b"tablet token", 30)
    assert not await storage.login_tokens.log_in_with_token(b"login", 30, other)
    assert await storage.accounts.get_token_owner(b"tablet token") is None


async def test_an_expired_or_anothers_login_token_logs_nobody_in(
    storage: Storage, db_path: Path
) -> None:
    await _logged_in(storage)
    await storage.login_tokens.add_login_token(b"login", ALICE, expires_ts=200, now_ts=0)
    late = NewDevice(ALICE, "LATE", None, b"late token", 200)
    assert not await storage.login_tokens.log_in_with_token(b"login", 200, late)
    bob = NewDevice("@bob:x", "BOB", None, b"bob token", 30)
    assert not await storage.login_tokens.log_in_with_token(b"login", 30, bob)
    assert len(dump_tables(db_path, _TABLES)["login_tokens"]) == 1
    assert len(dump_tables(db_path, _TABLES)["access_tokens"]) == 1
