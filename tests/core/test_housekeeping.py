from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from ranvier.core.housekeeping import HOUR_MS, Housekeeping, HousekeepingAges
from ranvier.core.sliding_sync import POS_LIFETIME_MS
from ranvier.storage import Storage
from ranvier.storage.housekeeping import HousekeepingStorage, Prune

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DAY_MS = 24 * HOUR_MS
NOW = 1_800_000_000_000
AGES = HousekeepingAges(federation_transaction_ms=DAY_MS, client_transaction_ms=7 * DAY_MS)


def _received(conn: sqlite3.Connection, txn_id: str, received_ts: int) -> None:
    conn.execute(
        "INSERT INTO received_transactions VALUES ('remote.example', ?, 200, x'7b7d', ?)",
        (txn_id, received_ts),
    )


def _client_txn(conn: sqlite3.Connection, txn_id: str, created_ts: int) -> None:
    conn.execute(
        "INSERT INTO client_transactions VALUES (?, '', x'01', ?, '!r:example.org', '$e', ?)",
        (ALICE, txn_id, created_ts),
    )


def _ids(db_path: Path, table: str, column: str) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return sorted(str(row[0]) for row in conn.execute(f"SELECT {column} FROM {table}"))
    finally:
        conn.close()


async def test_a_pass_keeps_what_is_within_its_window_and_a_second_changes_nothing(
    storage: Storage, db_path: Path
) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        _received(conn, "day-old", NOW - DAY_MS - 1)
        _received(conn, "hour-old", NOW - HOUR_MS)
        _client_txn(conn, "week-old", NOW - 7 * DAY_MS - 1)
        _client_txn(conn, "two-days-old", NOW - 2 * DAY_MS)
        conn.execute("INSERT INTO url_previews VALUES ('gone', x'7b7d', 0, ?)", (NOW - 1,))
        conn.execute("INSERT INTO url_previews VALUES ('kept', x'7b7d', 0, ?)", (NOW + 1,))
        for state, expires in ((b"gone", NOW), (b"kept", NOW + 1)):
            conn.execute(
                "INSERT INTO sso_sessions"
                " (state_hash, idp_id, nonce, code_verifier, redirect_url, expires_ts)"
                " VALUES (?, 'idp', 'n', 'v', 'https://c.test/', ?)",
                (state, expires),
            )

    await storage.actor.submit(seed)
    housekeeping = Housekeeping(storage.housekeeping, ages=AGES, clock_ms=lambda: NOW)
    first = await housekeeping.run_pass()
    assert first[Prune.RECEIVED_TRANSACTIONS] == 1
    assert first[Prune.CLIENT_TRANSACTIONS] == 1
    assert first[Prune.URL_PREVIEWS] == 1
    assert first[Prune.SSO_SESSIONS] == 1
    assert _ids(db_path, "received_transactions", "transaction_id") == ["hour-old"]
    assert _ids(db_path, "client_transactions", "txn_id") == ["two-days-old"]
    assert _ids(db_path, "url_previews", "url") == ["kept"]
    assert _ids(db_path, "sso_sessions", "CAST(state_hash AS TEXT)") == ["kept"]
    second = await housekeeping.run_pass()
    assert set(second) == set(Prune)
    assert not any(second.values())
    assert _ids(db_path, "received_transactions", "transaction_id") == ["hour-old"]


async def test_sliding_sync_connections_go_when_their_positions_have_expired(
    storage: Storage, db_path: Path
) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO users (user_id, admin, created_ts, deactivated) VALUES (?, 0, 0, 0)",
            (ALICE,),
        )
        conn.execute(
            "INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, 'D', 0)", (ALICE,)
        )
        for key, made in ((1, NOW - POS_LIFETIME_MS - 1), (2, NOW - POS_LIFETIME_MS + 1)):
            conn.execute(
                "INSERT INTO sliding_sync_connections VALUES (?, ?, 'D', ?)",
                (key, ALICE, f"c{key}"),
            )
            conn.execute(
                "INSERT INTO sliding_sync_positions (pos, conn_key, nonce, token, made_ms)"
                " VALUES (?, ?, ?, 't', ?)",
                (key, key, f"n{key}", made),
            )

    await storage.actor.submit(seed)
    housekeeping = Housekeeping(storage.housekeeping, ages=AGES, clock_ms=lambda: NOW)
    assert (await housekeeping.run_pass())[Prune.SLIDING_SYNC_CONNECTIONS] == 1
    assert _ids(db_path, "sliding_sync_connections", "conn_id") == ["c2"]
    assert _ids(db_path, "sliding_sync_positions", "nonce") == ["n2"]


class _Counting:
    """The real storage, counting how many rows each write deleted."""

    def __init__(self, store: HousekeepingStorage) -> None:
        self._store = store
        self.writes: list[int] = []

    async def prune(self, rule: Prune, *, cutoff_ms: int, limit: int) -> int:
        gone = await self._store.prune(rule, cutoff_ms=cutoff_ms, limit=limit)
        if rule is Prune.RECEIVED_TRANSACTIONS:
            self.writes.append(gone)
        return gone

    async def device_lists_position(self) -> int:
        return await self._store.device_lists_position()


async def test_many_rows_go_in_writes_of_at_most_a_batch(storage: Storage, db_path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        for n in range(2_500):
            _received(conn, f"t{n}", NOW - 2 * DAY_MS)
        _received(conn, "fresh", NOW)

    await storage.actor.submit(seed)
    counting = _Counting(storage.housekeeping)
    housekeeping = Housekeeping(counting, ages=AGES, batch_rows=1_000, clock_ms=lambda: NOW)
    assert (await housekeeping.run_pass())[Prune.RECEIVED_TRANSACTIONS] == 2_500
    assert counting.writes == [1_000, 1_000, 500, 0]
    assert _ids(db_path, "received_transactions", "transaction_id") == ["fresh"]


async def test_the_task_runs_a_pass_at_start_and_one_every_interval(
    storage: Storage, db_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    now = [NOW]
    await storage.actor.submit(lambda conn: _received(conn, "old", NOW - 2 * DAY_MS))
    await storage.actor.submit(lambda conn: _received(conn, "recent", NOW - HOUR_MS))
    housekeeping = Housekeeping(
        storage.housekeeping, ages=AGES, interval_ms=HOUR_MS, clock_ms=lambda: now[0]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(housekeeping.run)
        await housekeeping.wait_for_pass(1)
        assert _ids(db_path, "received_transactions", "transaction_id") == ["recent"]
        # A day later the recent one is as old as the window.
        now[0] = NOW + DAY_MS
        await housekeeping.wait_for_pass(2)
        assert _ids(db_path, "received_transactions", "transaction_id") == []
        nursery.cancel_scope.cancel()


class _Failing:
    async def prune(self, rule: Prune, *, cutoff_ms: int, limit: int) -> int:
        raise RuntimeError("the disk is full")

    async def device_lists_position(self) -> int:
        return 0


async def test_a_failed_pass_is_tried_again_at_the_next_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    housekeeping = Housekeeping(_Failing(), ages=AGES, interval_ms=HOUR_MS, clock_ms=lambda: NOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(housekeeping.run)
        await housekeeping.wait_for_pass(2)
        assert housekeeping.passes == 2
        nursery.cancel_scope.cancel()


async def test_device_list_changes_go_once_a_newer_one_is_older_than_the_last_pass(
    storage: Storage, db_path: Path
) -> None:
    def change(user_id: str) -> Callable[[sqlite3.Connection], None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO device_list_changes (user_id) VALUES (?)", (user_id,))

        return write

    for user_id in (ALICE, BOB, ALICE):
        await storage.actor.submit(change(user_id))
    housekeeping = Housekeeping(storage.housekeeping, ages=AGES, clock_ms=lambda: NOW)
    # The first pass has no earlier position to go by: all stay.
    assert (await housekeeping.run_pass())[Prune.SUPERSEDED_DEVICE_LIST_CHANGES] == 0
    await storage.actor.submit(change(BOB))
    # Alice's 1 goes for her 3, at or below where the first pass began;
    # Bob's 2 stays, his 4 having come after it.
    assert (await housekeeping.run_pass())[Prune.SUPERSEDED_DEVICE_LIST_CHANGES] == 1
    assert _ids(db_path, "device_list_changes", "stream_id") == ["2", "3", "4"]
    assert (await housekeeping.run_pass())[Prune.SUPERSEDED_DEVICE_LIST_CHANGES] == 1
    assert _ids(db_path, "device_list_changes", "stream_id") == ["3", "4"]


async def test_redacted_content_is_taken_after_its_age_or_never(storage: Storage) -> None:
    kept_a_week = Housekeeping(storage.housekeeping, ages=AGES)
    kept_for_ever = Housekeeping(
        storage.housekeeping,
        ages=HousekeepingAges(
            federation_transaction_ms=DAY_MS,
            client_transaction_ms=7 * DAY_MS,
            redacted_content_ms=None,
        ),
    )
    assert kept_a_week.cutoffs(NOW)[Prune.REDACTED_CONTENT] == NOW - 7 * DAY_MS
    assert Prune.REDACTED_CONTENT not in kept_for_ever.cutoffs(NOW)
    assert set(kept_for_ever.cutoffs(NOW)) == set(Prune) - {Prune.REDACTED_CONTENT}
