"""The full-text index scrubbed of deleted rows (:mod:`ranvier.storage.search_scrub`)
on a real SQLite file: deleted rows' words stay in the FTS5 segments, and
a scrub, step by step while other rows keep coming, takes them out of the
file, while the other rows are still found.

The scrub is what this SQLite needs unless its FTS5 has ``secure-delete``
(3.42 and later); the tests ask for the scrub whatever the version, so
they run the same everywhere. One test takes the path this SQLite takes
by itself: ``nox -s sqlite_latest`` runs it on an SQLite with the option.
"""

from __future__ import annotations

import random
import sqlite3
import string
from collections.abc import Iterator
from pathlib import Path

import pytest

from ranvier.storage.connections import open_writer
from ranvier.storage.schema import migrate
from ranvier.storage.search_scrub import (
    SECURE_DELETE_AVAILABLE,
    after_search_deletes,
    before_search_deletes,
    scrub_owed,
    scrub_search_step,
)

_INSERT = (
    "INSERT INTO event_search (value, event_id, room_id, key) VALUES (?, ?, ?, 'content.body')"
)
_PURGED = "!purged:example.org"
_KEPT = "!kept:example.org"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_writer(tmp_path / "search.db")
    migrate(connection)
    try:
        yield connection
    finally:
        connection.close()


def _write(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(sql, params)
    conn.execute("COMMIT")


def _secret(n: int) -> str:
    """A word only row ``n`` of the purged room says, and the tail of it
    that the index's prefix compression cannot split."""
    return f"hush{n:04d}qzx{n:04d}"


def _fill(conn: sqlite3.Connection, rows: int, *, seed: int) -> None:
    """``rows`` rows of other words, each in a write of its own (each a
    segment of the index, merged as FTS5 goes), every tenth in the purged
    room with a secret word."""
    pick = random.Random(seed)
    for n in range(rows):
        words = " ".join("".join(pick.choices(string.ascii_lowercase, k=7)) for _ in range(6))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_INSERT, (f"{words} common", f"$k{seed}.{n}", _KEPT))
        if n % 10 == 0:
            conn.execute(
                _INSERT, (f"{_secret(seed * 10_000 + n)} common", f"$p{seed}.{n}", _PURGED)
            )
        conn.execute("COMMIT")


def _delete_room(conn: sqlite3.Connection, *, secure_delete: bool | None = False) -> int:
    """The purged room's rows deleted in a write of their own, by the
    scrub's path unless ``secure_delete`` says otherwise (None: the path
    this SQLite takes)."""
    conn.execute("BEGIN IMMEDIATE")
    before_search_deletes(conn, secure_delete=secure_delete)
    deleted = conn.execute("DELETE FROM event_search WHERE room_id = ?", (_PURGED,)).rowcount
    after_search_deletes(conn, deleted, secure_delete=secure_delete)
    conn.execute("COMMIT")
    return deleted


def _file_says(conn: sqlite3.Connection, path: Path, words: list[str]) -> list[str]:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    return [word for word in words if word.encode() in data]


def _scrub(conn: sqlite3.Connection, *, pages: int, busy: int = 0) -> int:
    """Scrub step by step, ``busy`` new rows written between two steps;
    how many steps it took."""
    steps = 0
    pick = random.Random(99)
    while True:
        for n in range(busy):
            _write(conn, _INSERT, (f"{pick.random()} later", f"$l{steps}.{n}", _KEPT))
        conn.execute("BEGIN IMMEDIATE")
        more = scrub_search_step(conn, pages=pages)
        conn.execute("COMMIT")
        steps += 1
        assert steps < 5_000, "the scrub does not end"
        if not more:
            return steps


def _matches(conn: sqlite3.Connection, query: str) -> int:
    (found,) = conn.execute(
        "SELECT COUNT(*) FROM event_search WHERE event_search MATCH ?", (query,)
    ).fetchone()
    return int(found)


def _drain_the_migrations_scrub(conn: sqlite3.Connection) -> None:
    _scrub(conn, pages=64)
    assert not scrub_owed(conn)


def test_a_scrub_takes_deleted_words_out_of_the_file_step_by_step(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    _drain_the_migrations_scrub(conn)
    _fill(conn, 1500, seed=1)
    secrets = [_secret(10_000 + n)[-8:] for n in range(0, 1500, 10)]
    path = tmp_path / "search.db"
    assert _file_says(conn, path, secrets) == secrets
    assert _delete_room(conn) == 150
    # Deleted, not found, and yet every word still in the file.
    assert _matches(conn, "common") == 1500
    assert _file_says(conn, path, secrets) == secrets
    assert scrub_owed(conn)

    steps = _scrub(conn, pages=2, busy=2)

    # Many small writes, with others between them, not one long one.
    assert steps > 10
    assert not scrub_owed(conn)
    assert _file_says(conn, path, secrets) == []
    assert _matches(conn, "common") == 1500
    assert _matches(conn, "later") == 2 * steps
    conn.execute("INSERT INTO event_search (event_search) VALUES ('integrity-check')")


def test_a_scrub_asked_for_during_another_gathers_its_deletes_too(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    _drain_the_migrations_scrub(conn)
    _fill(conn, 600, seed=2)
    first = [_secret(20_000 + n)[-8:] for n in range(0, 600, 10)]
    _delete_room(conn)
    for _ in range(3):
        conn.execute("BEGIN IMMEDIATE")
        assert scrub_search_step(conn, pages=4)
        conn.execute("COMMIT")
    # More rows of the room come and go while the first scrub is under way.
    _fill(conn, 300, seed=3)
    second = [_secret(30_000 + n)[-8:] for n in range(0, 300, 10)]
    _delete_room(conn)
    (requested, started, done) = conn.execute(
        "SELECT requested, started, done FROM search_scrub"
    ).fetchone()
    assert (requested, started, done) == (started + 1, started, done)

    _scrub(conn, pages=8)

    path = tmp_path / "search.db"
    assert _file_says(conn, path, first + second) == []
    assert _matches(conn, "common") == 900
    assert conn.execute(
        "SELECT requested = started AND started = done FROM search_scrub"
    ).fetchone() == (1,)


def test_nothing_deleted_asks_for_no_scrub(conn: sqlite3.Connection) -> None:
    _drain_the_migrations_scrub(conn)
    _fill(conn, 20, seed=4)
    conn.execute("BEGIN IMMEDIATE")
    before_search_deletes(conn, secure_delete=False)
    after_search_deletes(conn, 0, secure_delete=False)
    conn.execute("COMMIT")
    assert not scrub_owed(conn)
    conn.execute("BEGIN IMMEDIATE")
    assert scrub_search_step(conn, pages=8) is False
    conn.execute("COMMIT")
    with pytest.raises(ValueError, match="at least one page"):
        scrub_search_step(conn, pages=0)


def test_deletes_take_this_sqlites_own_path_out_of_the_file(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """With FTS5's ``secure-delete``, a delete takes the words out of the
    file at once and asks for no scrub; without it, a scrub is asked for
    and takes them out."""
    _drain_the_migrations_scrub(conn)
    _fill(conn, 300, seed=5)
    secrets = [_secret(50_000 + n)[-8:] for n in range(0, 300, 10)]
    path = tmp_path / "search.db"
    assert _file_says(conn, path, secrets) == secrets

    deleted = _delete_room(conn, secure_delete=None)

    assert deleted == 30
    assert _matches(conn, "common") == 300
    if SECURE_DELETE_AVAILABLE:
        (option,) = conn.execute(
            "SELECT v FROM event_search_config WHERE k = 'secure-delete'"
        ).fetchone()
        assert option == 1
        # Turning the option on asks for one scrub, for the deletes made
        # before it; these took their words out themselves.
        assert _file_says(conn, path, secrets) == []
    else:
        assert scrub_owed(conn)
        assert _file_says(conn, path, secrets) == secrets
    _scrub(conn, pages=64)
    assert not scrub_owed(conn)
    assert _file_says(conn, path, secrets) == []
    assert _matches(conn, "common") == 300
    conn.execute("INSERT INTO event_search (event_search) VALUES ('integrity-check')")
