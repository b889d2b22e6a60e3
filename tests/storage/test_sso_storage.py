"""Single sign-on sessions in a real SQLite file: stored, taken once,
refused once expired, bounded in number, and their writes repeated through
the replication encoding as after a restart of the main process."""

from __future__ import annotations

from pathlib import Path

from _twice import dump_tables, run_twice, write_call

from ranvier.replication import operations
from ranvier.storage import Storage
from ranvier.storage import sso as module
from ranvier.storage.sso import SsoSession

_SESSION = SsoSession(
    idp_id="idp",
    nonce="nonce-secret",
    code_verifier="verifier-secret",
    redirect_url="https://client.test/?a=1",
    expires_ts=1_000,
)


async def test_a_session_is_taken_once(storage: Storage, db_path: Path) -> None:
    assert await storage.sso.create_sso_session(b"s1", _SESSION, now_ms=10, max_sessions=5)
    assert await storage.sso.take_sso_session(b"s1", now_ms=999) == _SESSION
    assert await storage.sso.take_sso_session(b"s1", now_ms=999) is None
    assert dump_tables(db_path, ["sso_sessions"]) == {"sso_sessions": []}


async def test_an_unknown_state_finds_nothing_and_leaves_the_others(storage: Storage) -> None:
    assert await storage.sso.create_sso_session(b"s1", _SESSION, now_ms=10, max_sessions=5)
    assert await storage.sso.take_sso_session(b"other", now_ms=10) is None
    assert await storage.sso.take_sso_session(b"s1", now_ms=10) == _SESSION


async def test_an_expired_session_is_refused_and_deleted(storage: Storage, db_path: Path) -> None:
    assert await storage.sso.create_sso_session(b"s1", _SESSION, now_ms=10, max_sessions=5)
    assert await storage.sso.take_sso_session(b"s1", now_ms=1_000) == "expired"
    assert dump_tables(db_path, ["sso_sessions"]) == {"sso_sessions": []}
    assert await storage.sso.take_sso_session(b"s1", now_ms=10) is None


async def test_only_unexpired_sessions_count_towards_the_limit(storage: Storage) -> None:
    sso = storage.sso
    assert await sso.create_sso_session(b"a", _SESSION, now_ms=10, max_sessions=2)
    assert await sso.create_sso_session(b"b", _SESSION, now_ms=10, max_sessions=2)
    assert not await sso.create_sso_session(b"c", _SESSION, now_ms=10, max_sessions=2)
    assert await sso.take_sso_session(b"c", now_ms=10) is None
    # Both have expired by 1000: a new login is let in.
    assert await sso.create_sso_session(b"c", _SESSION, now_ms=1_000, max_sessions=2)


def test_the_secrets_stay_out_of_the_record_s_repr() -> None:
    shown = repr(_SESSION)
    assert "https://client.test/" in shown
    assert "nonce-secret" not in shown
    assert "verifier-secret" not in shown


async def test_creating_a_session_twice_stores_it_once(storage: Storage, db_path: Path) -> None:
    # Nine others at the limit of ten: the repeat must not count its own row.
    for n in range(9):
        await storage.sso.create_sso_session(bytes([n]), _SESSION, now_ms=10, max_sessions=10)
    answer = await run_twice(
        storage,
        db_path,
        write_call(
            module._create_sso_session,
            state_hash=b"s1",
            session=_SESSION,
            now_ms=10,
            max_sessions=10,
        ),
        ["sso_sessions"],
    )
    assert answer is True
    assert await storage.sso.take_sso_session(b"s1", now_ms=10) == _SESSION


async def test_a_repeated_take_hands_the_session_to_nobody(storage: Storage, db_path: Path) -> None:
    assert await storage.sso.create_sso_session(b"s1", _SESSION, now_ms=10, max_sessions=5)
    name, body = operations.encode_operation(
        write_call(module._take_sso_session, state_hash=b"s1", now_ms=10)
    )
    received = operations.decode_operation(name, body)
    first = await storage.actor.submit(received)
    assert first == _SESSION
    # What the worker gets back is decoded as the record it was.
    assert operations.decode_result(name, operations.encode_result(name, first)) == _SESSION
    assert await storage.actor.submit(received) is None
    assert await storage.sso.take_sso_session(b"s1", now_ms=10) is None
