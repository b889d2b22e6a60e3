"""Guest accounts in a real SQLite file: the flag on the account and its
tokens' lookup, and the one write that upgrades a guest."""

from __future__ import annotations

import hashlib

import pytest

from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.accounts import NewAccount, NewDevice

GUEST = "@100000000001:example.org"
ALICE = "@alice:example.org"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _device(user_id: str, device_id: str, token: str) -> NewDevice:
    return NewDevice(user_id, device_id, None, _hash(token), 1_000)


async def test_a_guest_is_marked_and_its_token_says_so(storage: Storage) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(GUEST, None, admin=False, created_ts=1, guest=True), _device(GUEST, "G", "g1")
    )
    await accounts.create_account(
        NewAccount(ALICE, "$argon2id$a", admin=False, created_ts=1), _device(ALICE, "A", "a1")
    )
    guest = await accounts.get_token_owner(_hash("g1"))
    alice = await accounts.get_token_owner(_hash("a1"))
    assert guest is not None
    assert guest.guest is True
    assert alice is not None
    assert alice.guest is False


async def test_upgrading_keeps_the_tokens_and_adds_a_device_in_one_write(
    storage: Storage,
) -> None:
    accounts = storage.accounts
    await accounts.create_account(
        NewAccount(GUEST, None, admin=False, created_ts=1, guest=True), _device(GUEST, "G", "g1")
    )
    await accounts.upgrade_guest(GUEST, "$argon2id$new", _device(GUEST, "NEW", "n1"))
    old = await accounts.get_token_owner(_hash("g1"))
    new = await accounts.get_token_owner(_hash("n1"))
    assert old is not None
    assert (old.device_id, old.guest) == ("G", False)
    assert new is not None
    assert (new.device_id, new.guest) == ("NEW", False)
    login = await accounts.get_password_login(GUEST)
    assert login is not None
    assert login.password_hash == "$argon2id$new"
    # The same write again (repeated across a restart) is not a refusal...
    await accounts.upgrade_guest(GUEST, "$argon2id$new", None)
    # ...but a second upgrade is.
    with pytest.raises(MatrixError) as refused:
        await accounts.upgrade_guest(GUEST, "$argon2id$other", _device(GUEST, "X", "x1"))
    assert refused.value.errcode == "M_FORBIDDEN"
    assert await accounts.get_token_owner(_hash("x1")) is None


async def test_a_full_or_missing_account_is_not_upgraded(storage: Storage) -> None:
    accounts = storage.accounts
    await accounts.create_account(NewAccount(ALICE, "$argon2id$a", admin=False, created_ts=1))
    for user_id in (ALICE, "@nobody:example.org"):
        with pytest.raises(MatrixError) as refused:
            await accounts.upgrade_guest(user_id, "$argon2id$b", _device(user_id, "D", "d1"))
        assert refused.value.errcode == "M_FORBIDDEN"
    login = await accounts.get_password_login(ALICE)
    assert login is not None
    assert login.password_hash == "$argon2id$a"
    assert await accounts.get_token_owner(_hash("d1")) is None
