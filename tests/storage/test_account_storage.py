"""Accounts, devices and access tokens in a real SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.accounts import (
    NewAccount,
    NewDevice,
    PasswordLogin,
    TokenOwner,
    UserInUseError,
)

ALICE = "@alice:example.org"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _device(
    device_id: str, token: str, *, user_id: str = ALICE, name: str | None = None
) -> NewDevice:
    return NewDevice(user_id, device_id, name, _hash(token), 1_000)


def _rows(db_path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        conn.close()


async def test_an_account_is_created_with_its_first_device_and_token(
    storage: Storage, db_path: Path
) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(ALICE, "$argon2id$x", admin=True, created_ts=1_000),
        _device("DEV", "t1", name="phone"),
    )
    assert await accounts.user_exists(ALICE)
    assert not await accounts.user_exists("@bob:example.org")
    assert await accounts.get_password_login(ALICE) == PasswordLogin(
        ALICE, "$argon2id$x", admin=True, deactivated=False
    )
    assert await accounts.get_token_owner(_hash("t1")) == TokenOwner(ALICE, "DEV", admin=True)
    assert await accounts.get_token_owner(_hash("t2")) is None
    assert _rows(db_path, "devices") == [(ALICE, "DEV", "phone", 1_000, 1_000)]
    # Only the hash is stored.
    # No expiry: the token was not issued with a refresh token.
    assert _rows(db_path, "access_tokens") == [(_hash("t1"), ALICE, "DEV", 1_000, None)]


async def test_a_taken_user_id_is_refused_and_nothing_of_the_second_attempt_stays(
    storage: Storage, db_path: Path
) -> None:
    accounts = storage.accounts
    await accounts.create_account(NewAccount(ALICE, "first", admin=False, created_ts=1))
    with pytest.raises(UserInUseError) as caught:
        await accounts.create_account(
            NewAccount(ALICE, "second", admin=True, created_ts=2), _device("DEV", "t1")
        )
    assert caught.value.errcode == "M_USER_IN_USE"
    assert caught.value.http_status == 400
    assert _rows(db_path, "users") == [(ALICE, "first", 0, 1, 0, 0, 0, 0, 0)]
    assert _rows(db_path, "devices") == []
    assert _rows(db_path, "access_tokens") == []


async def test_concurrent_registrations_of_one_name_let_exactly_one_through(
    storage: Storage, db_path: Path
) -> None:
    outcomes: list[str] = []

    async def register(n: int) -> None:
        try:
            await storage.accounts.create_account(
                NewAccount(ALICE, f"hash{n}", admin=False, created_ts=n), _device(f"D{n}", f"t{n}")
            )
            outcomes.append("created")
        except UserInUseError:
            outcomes.append("in use")

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(register, n)
    assert sorted(outcomes) == ["created"] + ["in use"] * 7
    assert len(_rows(db_path, "users")) == 1
    assert len(_rows(db_path, "access_tokens")) == 1


async def test_logging_a_device_in_again_replaces_its_token(
    storage: Storage, db_path: Path
) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(ALICE, None, admin=False, created_ts=1), _device("A", "t1", name="first")
    )
    await accounts.add_device(_device("B", "t2"))
    await accounts.add_device(_device("A", "t3", name="ignored"))
    assert await accounts.get_token_owner(_hash("t1")) is None
    assert await accounts.get_token_owner(_hash("t3")) == TokenOwner(ALICE, "A", admin=False)
    assert await accounts.get_token_owner(_hash("t2")) == TokenOwner(ALICE, "B", admin=False)
    # An existing device keeps its name.
    names = {row[1]: row[2] for row in _rows(db_path, "devices")}
    assert names == {"A": "first", "B": None}


async def test_a_device_for_a_user_without_an_account_is_refused(
    storage: Storage, db_path: Path
) -> None:
    with pytest.raises(MatrixError) as caught:
        await storage.accounts.add_device(_device("A", "t1", user_id="@nobody:example.org"))
    assert caught.value.errcode == "M_FORBIDDEN"
    assert _rows(db_path, "devices") == []
    assert _rows(db_path, "access_tokens") == []


async def test_logout_removes_the_device_and_logout_all_every_device(
    storage: Storage, db_path: Path
) -> None:
    accounts = storage.accounts
    bob = "@bob:example.org"
    await accounts.create_account(
        NewAccount(ALICE, None, admin=False, created_ts=1), _device("A", "t1")
    )
    await accounts.create_account(
        NewAccount(bob, None, admin=False, created_ts=1), _device("A", "b1", user_id=bob)
    )
    await accounts.add_device(_device("B", "t2"))
    await accounts.add_device(_device("C", "t3"))

    assert await accounts.delete_device_of_token(_hash("t1")) == TokenOwner(ALICE, "A", admin=False)
    assert await accounts.delete_device_of_token(_hash("t1")) is None
    assert {row[1] for row in _rows(db_path, "devices") if row[0] == ALICE} == {"B", "C"}

    assert await accounts.delete_devices(ALICE) == 2
    assert [row[0] for row in _rows(db_path, "devices")] == [bob]
    assert [row[1] for row in _rows(db_path, "access_tokens")] == [bob]
    assert await accounts.get_token_owner(_hash("b1")) == TokenOwner(bob, "A", admin=False)


async def test_a_deactivated_account_has_no_valid_tokens(storage: Storage, db_path: Path) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(ALICE, "h", admin=False, created_ts=1), _device("A", "t1")
    )
    await storage.actor.submit(
        lambda conn: conn.execute("UPDATE users SET deactivated = 1 WHERE user_id = ?", (ALICE,))
    )
    assert await accounts.get_token_owner(_hash("t1")) is None
    login = await accounts.get_password_login(ALICE)
    assert login is not None
    assert login.deactivated


async def test_a_password_hash_is_replaced(storage: Storage) -> None:
    accounts = storage.accounts
    await accounts.create_account(NewAccount(ALICE, "old", admin=False, created_ts=1))
    await accounts.set_password_hash(ALICE, "new")
    login = await accounts.get_password_login(ALICE)
    assert login is not None
    assert login.password_hash == "new"
    assert await accounts.get_password_login("@bob:example.org") is None


async def test_a_password_change_keeps_one_device_or_all(storage: Storage, db_path: Path) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(ALICE, "old", admin=False, created_ts=1), _device("A", "t1")
    )
    for device_id, token in (("B", "t2"), ("C", "t3")):
        await accounts.add_device(_device(device_id, token))
    assert await accounts.change_password(ALICE, "mid", keep_only_device=None) == 0
    assert len(_rows(db_path, "devices")) == 3
    assert await accounts.change_password(ALICE, "new", keep_only_device="B") == 2
    assert [row[1] for row in _rows(db_path, "devices")] == ["B"]
    assert await accounts.get_token_owner(_hash("t1")) is None
    assert await accounts.get_token_owner(_hash("t2")) == TokenOwner(ALICE, "B", admin=False)
    login = await accounts.get_password_login(ALICE)
    assert login is not None
    assert login.password_hash == "new"


async def test_deactivation_logs_out_everything_and_keeps_the_name(
    storage: Storage, db_path: Path
) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(ALICE, "h", admin=False, created_ts=1), _device("A", "t1")
    )
    await accounts.add_openid_token(_hash("o1"), ALICE, 10_000)
    assert await accounts.get_openid_token_owner(_hash("o1"), 5) == ALICE
    assert await accounts.deactivate_account(ALICE)
    assert not await accounts.deactivate_account("@nobody:example.org")
    assert _rows(db_path, "devices") == []
    assert _rows(db_path, "access_tokens") == []
    assert await accounts.get_openid_token_owner(_hash("o1"), 5) is None
    assert await accounts.user_exists(ALICE)
    with pytest.raises(UserInUseError):
        await accounts.create_account(NewAccount(ALICE, "h2", admin=False, created_ts=2))


async def test_openid_tokens_expire_and_are_kept_hashed(storage: Storage, db_path: Path) -> None:
    accounts = storage.accounts
    await accounts.create_account(NewAccount(ALICE, "h", admin=False, created_ts=1))
    await accounts.add_openid_token(_hash("o1"), ALICE, 3_600_000)
    assert await accounts.get_openid_token_owner(_hash("o1"), 3_599_999) == ALICE
    assert await accounts.get_openid_token_owner(_hash("o1"), 3_600_000) is None
    assert await accounts.get_openid_token_owner(_hash("o2"), 0) is None
    assert _rows(db_path, "openid_tokens") == [(_hash("o1"), ALICE, 3_600_000)]
    # A token made once the first has expired takes its place.
    await accounts.add_openid_token(_hash("o2"), ALICE, 7_200_000)
    assert _rows(db_path, "openid_tokens") == [(_hash("o2"), ALICE, 7_200_000)]
