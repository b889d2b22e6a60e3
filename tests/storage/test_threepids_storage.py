"""E-mail validation sessions and account addresses in a real SQLite file,
and their writes repeated through the replication encoding as after a
restart of the main process."""

from __future__ import annotations

import hashlib
from pathlib import Path

from _twice import dump_tables, run_twice, write_call

from ranvier.replication import operations
from ranvier.storage import Storage
from ranvier.storage import threepids as module
from ranvier.storage.accounts import NewAccount, NewDevice
from ranvier.storage.threepids import (
    NewValidationSession,
    PasswordReset,
    UserThreepid,
    ValidationSession,
)

ALICE, BOB = "@alice:example.org", "@bob:example.org"
ADDRESS = "alice@example.org"
TOKEN = hashlib.sha256(b"token").digest()
_TABLES = ["threepid_validation_sessions", "user_threepids"]


def _session(
    sid: str = "sid1", *, attempt: int = 1, token: bytes = TOKEN, expires: int = 1_000
) -> NewValidationSession:
    return NewValidationSession(
        sid=sid,
        medium="email",
        address=ADDRESS,
        client_secret="secret",
        token_hash=token,
        send_attempt=attempt,
        next_link="https://app.test/done",
        created_ts=10,
        expires_ts=expires,
    )


async def _accounts(storage: Storage) -> None:
    for user in (ALICE, BOB):
        device = NewDevice(user, "DEV", None, hashlib.sha256(user.encode()).digest(), 5)
        await storage.accounts.create_account(
            NewAccount(user, "hash", admin=False, created_ts=5), device
        )


async def _validated(storage: Storage, sid: str = "sid1") -> None:
    await storage.threepids.save_session(_session(sid))
    assert await storage.threepids.validate_session(sid, "secret", TOKEN, now_ms=20) == (
        "validated",
        "https://app.test/done",
    )


async def test_a_session_is_found_until_validated_or_expired(storage: Storage) -> None:
    store = storage.threepids
    assert await store.save_session(_session()) == "sid1"
    found = await store.open_session("email", ADDRESS, "secret", now_ms=20)
    assert found == ValidationSession("sid1", 1)
    assert await store.open_session("email", ADDRESS, "other", now_ms=20) is None
    assert await store.open_session("email", ADDRESS, "secret", now_ms=1_000) is None
    await store.validate_session("sid1", "secret", TOKEN, now_ms=20)
    assert await store.open_session("email", ADDRESS, "secret", now_ms=20) is None


async def test_a_higher_attempt_replaces_the_token_and_a_lower_one_does_not(
    storage: Storage,
) -> None:
    store = storage.threepids
    newer = hashlib.sha256(b"newer").digest()
    await store.save_session(_session())
    await store.save_session(_session(attempt=2, token=newer))
    await store.save_session(_session(attempt=2, token=TOKEN))
    assert await store.validate_session("sid1", "secret", TOKEN, now_ms=20) == ("incorrect", None)
    assert (await store.validate_session("sid1", "secret", newer, now_ms=20))[0] == "validated"


async def test_validation_outcomes(storage: Storage) -> None:
    store = storage.threepids
    await store.save_session(_session())
    assert await store.validate_session("nosuch", "secret", TOKEN, now_ms=20) == ("unknown", None)
    assert await store.validate_session("sid1", "wrong", TOKEN, now_ms=20) == ("unknown", None)
    assert await store.validate_session("sid1", "secret", TOKEN, now_ms=1_000) == ("expired", None)
    assert (await store.validate_session("sid1", "secret", TOKEN, now_ms=20))[0] == "validated"


async def test_adding_uses_the_session_up(storage: Storage, db_path: Path) -> None:
    await _accounts(storage)
    store = storage.threepids
    await store.save_session(_session())
    # Not validated yet.
    assert await store.add_threepid(ALICE, "sid1", "secret", "email", now_ms=30) == "unvalidated"
    await store.validate_session("sid1", "secret", TOKEN, now_ms=20)
    assert await store.add_threepid(ALICE, "sid1", "wrong", "email", now_ms=30) == "unvalidated"
    assert await store.add_threepid(ALICE, "sid1", "secret", "email", now_ms=30) == "added"
    assert await store.threepids_of(ALICE) == [UserThreepid("email", ADDRESS, 20, 30)]
    assert await store.owner("email", ADDRESS) == ALICE
    assert await store.add_threepid(ALICE, "sid1", "secret", "email", now_ms=30) == "unvalidated"
    assert dump_tables(db_path, ["threepid_validation_sessions"]) == {
        "threepid_validation_sessions": []
    }


async def test_an_address_is_on_one_account(storage: Storage) -> None:
    await _accounts(storage)
    store = storage.threepids
    for sid in ("sid1", "sid2"):
        await _validated(storage, sid)
    assert await store.add_threepid(ALICE, "sid1", "secret", "email", now_ms=30) == "added"
    assert await store.add_threepid(BOB, "sid2", "secret", "email", now_ms=30) == "in_use"
    assert await store.threepids_of(BOB) == []
    # Refused, the session is left as it was.
    assert await store.delete_threepid(ALICE, "email", ADDRESS)
    assert not await store.delete_threepid(ALICE, "email", ADDRESS)
    assert await store.add_threepid(BOB, "sid2", "secret", "email", now_ms=30) == "added"


async def test_an_expired_validated_session_adds_nothing(storage: Storage) -> None:
    await _accounts(storage)
    await _validated(storage)
    result = await storage.threepids.add_threepid(ALICE, "sid1", "secret", "email", now_ms=1_000)
    assert result == "unvalidated"


async def test_a_reset_sets_the_password_and_logs_out(storage: Storage) -> None:
    await _accounts(storage)
    store = storage.threepids
    await _validated(storage)
    assert await store.add_threepid(ALICE, "sid1", "secret", "email", now_ms=30) == "added"
    await _validated(storage, "sid2")
    reset = await store.reset_password(
        "sid2", "secret", "email", "new-hash", logout_devices=True, now_ms=40
    )
    assert reset == PasswordReset(ALICE, 1)
    login = await storage.accounts.get_password_login(ALICE)
    assert login is not None
    assert login.password_hash == "new-hash"
    assert not await storage.accounts.has_device(ALICE, "DEV")
    assert await storage.accounts.has_device(BOB, "DEV")
    again = await store.reset_password(
        "sid2", "secret", "email", "other", logout_devices=True, now_ms=40
    )
    assert again == "unvalidated"


async def test_a_reset_for_an_address_on_no_account(storage: Storage) -> None:
    await _accounts(storage)
    await _validated(storage)
    reset = await storage.threepids.reset_password(
        "sid1", "secret", "email", "new-hash", logout_devices=False, now_ms=40
    )
    assert reset == "no_account"


async def test_deactivation_erases_the_addresses(storage: Storage) -> None:
    await _accounts(storage)
    await _validated(storage)
    await storage.threepids.add_threepid(ALICE, "sid1", "secret", "email", now_ms=30)
    assert await storage.accounts.deactivate_account(ALICE)
    assert await storage.threepids.owner("email", ADDRESS) is None


async def test_saving_and_validating_twice(storage: Storage, db_path: Path) -> None:
    answer = await run_twice(
        storage, db_path, write_call(module._save_session, session=_session()), _TABLES
    )
    assert answer == "sid1"
    answer = await run_twice(
        storage,
        db_path,
        write_call(
            module._validate_session,
            sid="sid1",
            client_secret="secret",
            token_hash=TOKEN,
            now_ms=20,
        ),
        _TABLES,
    )
    assert answer == ("validated", "https://app.test/done")


async def test_a_repeated_add_or_reset_changes_nothing_more(
    storage: Storage, db_path: Path
) -> None:
    await _accounts(storage)
    await _validated(storage)
    name, body = operations.encode_operation(
        write_call(
            module._add_threepid,
            user_id=ALICE,
            sid="sid1",
            client_secret="secret",
            medium="email",
            now_ms=30,
        )
    )
    received = operations.decode_operation(name, body)
    assert await storage.actor.submit(received) == "added"
    once = dump_tables(db_path, _TABLES)
    assert await storage.actor.submit(received) == "unvalidated"
    assert dump_tables(db_path, _TABLES) == once
    await _validated(storage, "sid2")
    name, body = operations.encode_operation(
        write_call(
            module._reset_password,
            sid="sid2",
            client_secret="secret",
            medium="email",
            password_hash="new-hash",
            logout_devices=True,
            now_ms=40,
        )
    )
    received = operations.decode_operation(name, body)
    first = await storage.actor.submit(received)
    assert operations.decode_result(name, operations.encode_result(name, first)) == first
    assert first == PasswordReset(ALICE, 1)
    assert await storage.actor.submit(received) == "unvalidated"
