"""Registration tokens in a real SQLite file: uses taken and counted in the
writer, pending uses freed by their sessions' expiry, completion written
with the account, and the writes repeated through the replication encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
from _twice import dump_tables, run_twice, write_call

from ranvier.storage import Storage
from ranvier.storage import registration_tokens as module
from ranvier.storage.accounts import NewAccount, NewDevice, UserInUseError
from ranvier.storage.registration_tokens import TokenRecord

_TABLES = (
    "users",
    "devices",
    "access_tokens",
    "registration_tokens",
    "registration_token_sessions",
)


def _account(localpart: str) -> tuple[NewAccount, NewDevice]:
    user_id = f"@{localpart}:x"
    return (
        NewAccount(user_id, f"hash of {localpart}", admin=False, created_ts=5),
        NewDevice(user_id, "DEV", None, f"token of {localpart}".encode(), 5),
    )


async def test_a_token_is_created_once_listed_updated_and_deleted(storage: Storage) -> None:
    tokens = storage.registration_tokens
    assert await tokens.create_token("abc", uses_allowed=2, expiry_time=None)
    assert not await tokens.create_token("abc", uses_allowed=9, expiry_time=None)
    assert await tokens.create_token("Zed", uses_allowed=None, expiry_time=50)
    assert await tokens.list_tokens(10) == [
        TokenRecord("Zed", None, 0, 0, 50),
        TokenRecord("abc", 2, 0, 0, None),
    ]
    assert await tokens.update_token("abc", expiry_time=99)
    assert await tokens.get_token("abc", 10) == TokenRecord("abc", 2, 0, 0, 99)
    assert await tokens.update_token("abc", uses_allowed=None)
    assert await tokens.get_token("abc", 10) == TokenRecord("abc", None, 0, 0, 99)
    assert not await tokens.update_token("nope", uses_allowed=1)
    assert await tokens.delete_token("abc")
    assert not await tokens.delete_token("abc")
    assert await tokens.get_token("abc", 10) is None


async def test_the_last_use_goes_to_one_session_until_it_expires(storage: Storage) -> None:
    tokens = storage.registration_tokens
    await tokens.create_token("one", uses_allowed=1, expiry_time=None)
    assert await tokens.use_token("s1", "one", now_ts=10, expires_ts=100) == "taken"
    assert await tokens.use_token("s1", "one", now_ts=20, expires_ts=110) == "taken"
    assert await tokens.use_token("s2", "one", now_ts=20, expires_ts=110) == "invalid"
    assert await tokens.use_token("s1", "other", now_ts=20, expires_ts=110) == "changed"
    assert await tokens.session_token("s1", 99) == "one"
    assert await tokens.get_token("one", 99) == TokenRecord("one", 1, 1, 0, None)
    # At its expiry the session holds nothing and the use is free again.
    assert await tokens.session_token("s1", 100) is None
    assert await tokens.get_token("one", 100) == TokenRecord("one", 1, 0, 0, None)
    assert await tokens.use_token("s2", "one", now_ts=100, expires_ts=200) == "taken"


async def test_an_expired_or_unknown_token_gives_no_use(storage: Storage) -> None:
    tokens = storage.registration_tokens
    await tokens.create_token("old", uses_allowed=None, expiry_time=50)
    assert await tokens.use_token("s", "old", now_ts=49, expires_ts=60) == "taken"
    assert await tokens.use_token("t", "old", now_ts=50, expires_ts=60) == "invalid"
    assert await tokens.use_token("t", "missing", now_ts=1, expires_ts=60) == "invalid"


async def test_completing_writes_the_account_and_moves_the_use(
    storage: Storage, db_path: Path
) -> None:
    tokens = storage.registration_tokens
    await tokens.create_token("two", uses_allowed=2, expiry_time=None)
    await tokens.use_token("s1", "two", now_ts=10, expires_ts=100)
    await tokens.use_token("s2", "two", now_ts=10, expires_ts=100)
    alice, phone = _account("alice")
    assert await tokens.register_with_token(alice, phone, session_id="s1", now_ts=20)
    assert await tokens.get_token("two", 20) == TokenRecord("two", 2, 1, 1, None)
    assert await storage.accounts.user_exists("@alice:x")
    # A session used once cannot make a second account.
    bob, bobs_phone = _account("bob")
    before = dump_tables(db_path, _TABLES)
    assert not await tokens.register_with_token(bob, bobs_phone, session_id="s1", now_ts=21)
    assert await tokens.use_token("s1", "two", now_ts=21, expires_ts=100) == "finished"
    # Nor can a session that took nothing, or whose use expired.
    assert not await tokens.register_with_token(bob, bobs_phone, session_id="s3", now_ts=21)
    assert not await tokens.register_with_token(bob, bobs_phone, session_id="s2", now_ts=100)
    assert dump_tables(db_path, _TABLES) == before


async def test_a_taken_name_leaves_the_use_pending(storage: Storage) -> None:
    tokens = storage.registration_tokens
    await tokens.create_token("t", uses_allowed=None, expiry_time=None)
    await tokens.use_token("s1", "t", now_ts=10, expires_ts=100)
    await storage.accounts.create_account(NewAccount("@alice:x", "another", False, 1))
    with pytest.raises(UserInUseError):
        await tokens.register_with_token(*_account("alice"), session_id="s1", now_ts=20)
    assert await tokens.get_token("t", 20) == TokenRecord("t", None, 1, 0, None)
    assert await tokens.session_token("s1", 20) == "t"


async def test_deleting_a_token_ends_its_sessions(storage: Storage) -> None:
    tokens = storage.registration_tokens
    await tokens.create_token("t", uses_allowed=None, expiry_time=None)
    await tokens.use_token("s1", "t", now_ts=10, expires_ts=100)
    assert await tokens.delete_token("t")
    assert await tokens.session_token("s1", 20) is None
    assert not await tokens.register_with_token(*_account("alice"), session_id="s1", now_ts=20)


async def test_completing_repeated_finds_its_own_account(storage: Storage, db_path: Path) -> None:
    tokens = storage.registration_tokens
    await tokens.create_token("t", uses_allowed=1, expiry_time=None)
    await tokens.use_token("s1", "t", now_ts=10, expires_ts=100)
    alice, phone = _account("alice")
    done = await run_twice(
        storage,
        db_path,
        write_call(
            module._register_with_token, account=alice, device=phone, session_id="s1", now_ts=20
        ),
        _TABLES,
    )
    assert done is True
    assert await tokens.get_token("t", 20) == TokenRecord("t", 1, 0, 1, None)


async def test_taking_a_use_repeated_takes_one(storage: Storage, db_path: Path) -> None:
    await storage.registration_tokens.create_token("t", uses_allowed=2, expiry_time=None)
    taken = await run_twice(
        storage,
        db_path,
        write_call(module._use_token, session_id="s1", token="t", now_ts=10, expires_ts=100),
        _TABLES,
    )
    assert taken == "taken"
    assert await storage.registration_tokens.get_token("t", 10) == TokenRecord("t", 2, 1, 0, None)
