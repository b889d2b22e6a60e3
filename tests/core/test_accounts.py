"""Accounts over real storage: registration, password login, tokens, logout."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import argon2
import pytest
import trio

from ranvier.core.accounts import (
    ACCESS_TOKEN_PREFIX,
    Accounts,
    Requester,
    UserInUseError,
    hash_access_token,
)
from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.accounts import AccountStorage, TokenOwner

SERVER = "example.org"
ALICE = "@alice:example.org"

# The smallest argon2id parameters: the hashing itself is not under test.
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _accounts(store: AccountStorage, hasher: argon2.PasswordHasher = CHEAP) -> Accounts:
    return Accounts(
        server_name=SERVER, store=store, password_hasher=hasher, wall_clock_ms=lambda: 1_234
    )


@pytest.fixture
def accounts(storage: Storage) -> Accounts:
    return _accounts(storage.accounts)


def _rows(db_path: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _counts(db_path: Path) -> tuple[object, ...]:
    return _rows(
        db_path,
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM devices),"
        " (SELECT count(*) FROM access_tokens)",
    )[0]


async def test_register_log_in_and_out(accounts: Accounts, db_path: Path) -> None:
    registered = await accounts.register(
        "alice", "correct horse", device_id="PHONE", device_display_name="my phone"
    )
    assert registered.user_id == ALICE
    assert registered.device_id == "PHONE"
    assert registered.access_token is not None
    assert registered.access_token.startswith(ACCESS_TOKEN_PREFIX)

    requester = await accounts.get_requester(registered.access_token)
    assert requester == Requester(ALICE, "PHONE", False, hash_access_token(registered.access_token))

    login = await accounts.login_with_password("alice", "correct horse")
    assert login.user_id == ALICE
    assert login.device_id != "PHONE"
    assert len(login.device_id) == 10
    assert login.access_token != registered.access_token
    second = await accounts.get_requester(login.access_token)
    assert second is not None
    assert second.device_id == login.device_id

    await accounts.logout(requester)
    assert await accounts.get_requester(registered.access_token) is None
    assert await accounts.get_requester(login.access_token) == second
    assert _rows(db_path, "SELECT device_id FROM devices") == [(login.device_id,)]


async def test_secrets_are_stored_only_as_hashes(accounts: Accounts, db_path: Path) -> None:
    registered = await accounts.register("alice", "correct horse")
    assert registered.access_token is not None
    ((password_hash,),) = _rows(db_path, "SELECT password_hash FROM users")
    assert isinstance(password_hash, str)
    assert password_hash.startswith("$argon2id$")
    assert "correct horse" not in password_hash
    ((token_hash,),) = _rows(db_path, "SELECT token_hash FROM access_tokens")
    assert token_hash == hashlib.sha256(registered.access_token.encode()).digest()


@pytest.mark.parametrize(
    ("localpart", "reason"),
    [
        ("", "empty"),
        ("Alice", "only a-z"),
        ("al ice", "only a-z"),
        ("al:ice", "only a-z"),
        ("\u00e9l\u00e8ve", "only a-z"),
        ("a" * (255 - len("@:example.org") + 1), "longer than 255 bytes"),
    ],
)
async def test_invalid_usernames_are_refused(
    accounts: Accounts, db_path: Path, localpart: str, reason: str
) -> None:
    with pytest.raises(MatrixError) as caught:
        await accounts.register(localpart, "pw")
    assert caught.value.errcode == "M_INVALID_USERNAME"
    assert caught.value.http_status == 400
    assert reason in caught.value.message
    with pytest.raises(MatrixError):
        await accounts.check_username_available(localpart)
    assert _counts(db_path) == (0, 0, 0)


async def test_the_longest_user_id_and_every_allowed_character_are_accepted(
    accounts: Accounts,
) -> None:
    longest = "a" * (255 - len("@:example.org"))
    assert (await accounts.register(longest, None)).user_id == f"@{longest}:{SERVER}"
    odd = "0.9_=-/+z"
    assert await accounts.check_username_available(odd) == f"@{odd}:{SERVER}"
    assert (await accounts.register(odd, None)).user_id == f"@{odd}:{SERVER}"


async def test_a_taken_name_is_refused_and_the_first_account_untouched(
    accounts: Accounts, db_path: Path
) -> None:
    await accounts.register("alice", "first")
    before = _rows(db_path, "SELECT * FROM users")
    with pytest.raises(UserInUseError) as caught:
        await accounts.register("alice", "second", admin=True)
    assert caught.value.errcode == "M_USER_IN_USE"
    with pytest.raises(UserInUseError):
        await accounts.check_username_available("alice")
    assert _rows(db_path, "SELECT * FROM users") == before
    assert _counts(db_path) == (1, 1, 1)
    assert await accounts.user_exists(ALICE)
    assert await accounts.check_username_available("bob") == "@bob:example.org"


async def test_wrong_password_and_unknown_user_are_refused_alike(accounts: Accounts) -> None:
    await accounts.register("alice", "right", login=False)
    messages = set()
    for user, password in [
        ("alice", "wrong"),
        ("bob", "right"),
        ("@alice:elsewhere.org", "right"),
        ("", "right"),
        ("al ice", "right"),
    ]:
        with pytest.raises(MatrixError) as caught:
            await accounts.login_with_password(user, password)
        assert (caught.value.errcode, caught.value.http_status) == ("M_FORBIDDEN", 403)
        messages.add(caught.value.message)
    assert len(messages) == 1


async def test_login_by_user_id_or_localpart_in_any_case(accounts: Accounts) -> None:
    await accounts.register("alice", "pw", login=False)
    for user in ("alice", "ALICE", ALICE, "@Alice:example.org"):
        login = await accounts.login_with_password(user, "pw")
        assert login.user_id == ALICE


async def test_logging_in_again_with_a_device_id_replaces_its_token(
    accounts: Accounts, db_path: Path
) -> None:
    first = await accounts.register("alice", "pw", device_id="LAPTOP")
    assert first.access_token is not None
    # Cached by a lookup, so the cache has to forget it too.
    assert await accounts.get_requester(first.access_token) is not None
    again = await accounts.login_with_password("alice", "pw", device_id="LAPTOP")
    assert again.device_id == "LAPTOP"
    assert await accounts.get_requester(first.access_token) is None
    requester = await accounts.get_requester(again.access_token)
    assert requester is not None
    assert requester.device_id == "LAPTOP"
    assert _counts(db_path) == (1, 1, 1)


async def test_logout_all_ends_every_session_of_the_user_only(
    accounts: Accounts, db_path: Path
) -> None:
    tokens = [(await accounts.register("alice", "pw")).access_token]
    tokens += [(await accounts.login_with_password("alice", "pw")).access_token for _ in range(2)]
    bob = (await accounts.register("bob", "pw")).access_token
    assert bob is not None
    for token in tokens:
        assert token is not None
        assert await accounts.get_requester(token) is not None
    await accounts.logout_all(ALICE)
    for token in tokens:
        assert token is not None
        assert await accounts.get_requester(token) is None
    assert await accounts.get_requester(bob) is not None
    assert _counts(db_path) == (2, 1, 1)


async def test_an_account_without_a_password_cannot_log_in_with_one(
    accounts: Accounts,
) -> None:
    registered = await accounts.register(None, None, login=False)
    assert registered.device_id is None
    assert registered.access_token is None
    localpart = registered.user_id[1:].split(":")[0]
    assert len(localpart) == 12
    with pytest.raises(MatrixError) as caught:
        await accounts.login_with_password(localpart, "")
    assert caught.value.errcode == "M_FORBIDDEN"


async def test_bad_passwords_and_device_ids_are_refused(accounts: Accounts, db_path: Path) -> None:
    cases = [
        ("", None, "M_WEAK_PASSWORD"),
        ("x" * 513, None, "M_INVALID_PARAM"),
        ("pw", "", "M_INVALID_PARAM"),
        ("pw", "D" * 256, "M_INVALID_PARAM"),
    ]
    for password, device_id, errcode in cases:
        with pytest.raises(MatrixError) as caught:
            await accounts.register("alice", password, device_id=device_id)
        assert caught.value.errcode == errcode
    assert _counts(db_path) == (0, 0, 0)
    await accounts.register("alice", "x" * 512, login=False)
    with pytest.raises(MatrixError) as caught:
        await accounts.login_with_password("alice", "x" * 513)
    assert caught.value.errcode == "M_INVALID_PARAM"


async def test_a_deactivated_account_cannot_log_in(storage: Storage, accounts: Accounts) -> None:
    registered = await accounts.register("alice", "pw")
    assert registered.access_token is not None
    await storage.actor.submit(lambda conn: conn.execute("UPDATE users SET deactivated = 1"))
    with pytest.raises(MatrixError) as caught:
        await accounts.login_with_password("alice", "pw")
    assert (caught.value.errcode, caught.value.http_status) == ("M_USER_DEACTIVATED", 403)
    # The wrong password still reads as any wrong password.
    with pytest.raises(MatrixError) as caught:
        await accounts.login_with_password("alice", "nope")
    assert caught.value.errcode == "M_FORBIDDEN"


async def test_an_admin_is_marked_in_the_requester(accounts: Accounts) -> None:
    registered = await accounts.register("root", "pw", admin=True)
    assert registered.access_token is not None
    requester = await accounts.get_requester(registered.access_token)
    assert requester is not None
    assert requester.is_admin


async def test_a_hash_with_old_parameters_is_replaced_at_login(
    storage: Storage, db_path: Path
) -> None:
    await _accounts(storage.accounts).register("alice", "pw", login=False)
    ((old,),) = _rows(db_path, "SELECT password_hash FROM users")
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    await _accounts(storage.accounts, stronger).login_with_password("alice", "pw")
    ((new,),) = _rows(db_path, "SELECT password_hash FROM users")
    assert new != old
    assert isinstance(new, str)
    assert not stronger.check_needs_rehash(new)
    assert stronger.verify(new, "pw")


class _HeldLookups:
    """The real account storage, with token lookups held after they read
    until released: a lookup that overlaps a logout.
    """

    def __init__(self, inner: AccountStorage) -> None:
        self.inner = inner
        self.read_done = trio.Event()
        self.release = trio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def get_token_owner(self, token_hash: bytes) -> TokenOwner | None:
        owner = await self.inner.get_token_owner(token_hash)
        self.read_done.set()
        await self.release.wait()
        return owner


async def test_a_lookup_overlapping_a_logout_does_not_cache_the_token(storage: Storage) -> None:
    held = _HeldLookups(storage.accounts)
    accounts = Accounts(server_name=SERVER, store=held, password_hasher=CHEAP)  # type: ignore[arg-type]
    held.release.set()
    registered = await accounts.register("alice", "pw")
    token = registered.access_token
    assert token is not None
    requester = await accounts.get_requester(token)
    assert requester is not None
    await accounts.logout(requester)  # empties the cache

    # Log in again, then look the new token up while it is logged out.
    login = await accounts.login_with_password("alice", "pw")
    held.read_done, held.release = trio.Event(), trio.Event()
    seen: list[Requester | None] = []

    async def look_up() -> None:
        seen.append(await accounts.get_requester(login.access_token))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look_up)
        await held.read_done.wait()
        await accounts.logout(
            Requester(ALICE, login.device_id, False, hash_access_token(login.access_token))
        )
        held.release.set()
    assert seen[0] is not None  # read before the logout committed
    held.read_done, held.release = trio.Event(), trio.Event()
    held.release.set()
    assert await accounts.get_requester(login.access_token) is None


async def test_hashing_leaves_the_event_loop_free(storage: Storage) -> None:
    # Enough work to take a while (~64 MiB, as the default does).
    hasher = argon2.PasswordHasher(time_cost=2, memory_cost=64 * 1024, parallelism=1)
    accounts = _accounts(storage.accounts, hasher)
    ticks = 0
    done = False

    async def tick() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        start = trio.current_time()
        await accounts.hash_password("pw")
        elapsed = trio.current_time() - start
        done = True
    # The ticker ran throughout (up to one tick a millisecond); had the hash
    # held the loop, it would have ticked once.
    assert elapsed > 0.02
    assert ticks >= max(5, elapsed * 1000 / 10)


async def test_an_openid_token_lasts_an_hour(storage: Storage) -> None:
    now = [1_000_000]
    accounts = Accounts(
        server_name=SERVER,
        store=storage.accounts,
        password_hasher=CHEAP,
        wall_clock_ms=lambda: now[0],
    )
    await accounts.register("alice", "pw", login=False)
    token, expires_in = await accounts.issue_openid_token(ALICE)
    assert expires_in == 3600
    assert await accounts.openid_user(token) == ALICE
    now[0] += 3_599_999
    assert await accounts.openid_user(token) == ALICE
    now[0] += 1
    assert await accounts.openid_user(token) is None
    assert await accounts.openid_user("another") is None
