import sqlite3
from pathlib import Path

import pytest

from ranvier.storage.connections import (
    SynchronousMode,
    open_checkpointer,
    open_reader,
    open_writer,
    secure_deletion,
)


def _pragma(conn: sqlite3.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_writer_is_wal_durable_and_enforces_foreign_keys(db_path: Path) -> None:
    conn = open_writer(db_path)
    try:
        assert _pragma(conn, "journal_mode") == "wal"
        assert _pragma(conn, "synchronous") == 2  # FULL
        assert _pragma(conn, "foreign_keys") == 1
        # Whatever the build's default: freed space is overwritten.
        assert _pragma(conn, "secure_delete") == 1
        assert conn.isolation_level is None
    finally:
        conn.close()


@pytest.mark.parametrize(("mode", "level"), [("OFF", 0), ("NORMAL", 1), ("EXTRA", 3)])
def test_durability_is_configurable(db_path: Path, mode: SynchronousMode, level: int) -> None:
    conn = open_writer(db_path, synchronous=mode)
    try:
        assert _pragma(conn, "synchronous") == level
    finally:
        conn.close()


def test_unknown_durability_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        open_writer(db_path, synchronous="SOMETIMES")  # type: ignore[arg-type]


def test_page_cap_is_applied(db_path: Path) -> None:
    conn = open_writer(db_path, max_page_count=50)
    try:
        assert _pragma(conn, "max_page_count") == 50
    finally:
        conn.close()


def test_reader_is_read_only_and_enforces_foreign_keys(tmp_path: Path) -> None:
    # A name that needs quoting in a URI.
    path = tmp_path / "a db #1?.sqlite"
    writer = open_writer(path)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    reader = open_reader(path)
    try:
        assert _pragma(reader, "foreign_keys") == 1
        assert reader.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO t VALUES (2)")
    finally:
        reader.close()
        writer.close()


def test_writer_checkpoint_interval_is_configurable(db_path: Path) -> None:
    default = open_writer(db_path)
    backstop = open_writer(db_path, wal_autocheckpoint=10_000)
    try:
        assert _pragma(default, "wal_autocheckpoint") == 1000
        assert _pragma(backstop, "wal_autocheckpoint") == 10_000
    finally:
        backstop.close()
        default.close()


@pytest.mark.parametrize(("mode", "level"), [("NORMAL", 1), ("FULL", 2)])
def test_checkpointer_syncs_as_told_and_checkpoints(
    db_path: Path, mode: SynchronousMode, level: int
) -> None:
    writer = open_writer(db_path, wal_autocheckpoint=0)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    checkpointer = open_checkpointer(db_path, synchronous=mode)
    try:
        assert _pragma(checkpointer, "synchronous") == level
        busy, frames, done = checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames > 0
        assert (busy, done) == (0, frames)
    finally:
        checkpointer.close()
        writer.close()
    with pytest.raises(ValueError, match="synchronous must be one of"):
        open_checkpointer(db_path, synchronous="SOMETIMES")  # type: ignore[arg-type]


@pytest.mark.parametrize("default", [0, 1])
def test_secure_deletion_overwrites_within_its_block_and_restores_the_setting(
    db_path: Path, default: int
) -> None:
    conn = open_writer(db_path)
    try:
        conn.execute(f"PRAGMA secure_delete = {default}")
        conn.execute("CREATE TABLE notes (text TEXT NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (?)", ("unforgettable" * 40,))
        conn.execute("BEGIN")
        with secure_deletion(conn):
            assert _pragma(conn, "secure_delete") == 1
            conn.execute("DELETE FROM notes")
        conn.execute("COMMIT")
        assert _pragma(conn, "secure_delete") == default
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    assert b"unforgettable" not in db_path.read_bytes()
