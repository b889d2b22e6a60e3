import sqlite3
from pathlib import Path

import pytest

from ranvier.storage.connections import (
    SynchronousMode,
    open_checkpointer,
    open_reader,
    open_writer,
)


def _pragma(conn: sqlite3.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_writer_is_wal_durable_and_enforces_foreign_keys(db_path: Path) -> None:
    conn = open_writer(db_path)
    try:
        assert _pragma(conn, "journal_mode") == "wal"
        assert _pragma(conn, "synchronous") == 2  # FULL
        assert _pragma(conn, "foreign_keys") == 1
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


def test_the_writer_checkpoints_as_sqlite_does_unless_told(db_path: Path) -> None:
    conn = open_writer(db_path)
    try:
        assert _pragma(conn, "wal_autocheckpoint") == 1000
    finally:
        conn.close()
    conn = open_writer(db_path, wal_autocheckpoint=12_345)
    try:
        assert _pragma(conn, "wal_autocheckpoint") == 12_345
    finally:
        conn.close()
    with pytest.raises(ValueError, match="wal_autocheckpoint must be 0 or more"):
        open_writer(db_path, wal_autocheckpoint=-1)


@pytest.mark.parametrize(("mode", "level"), [("OFF", 0), ("NORMAL", 1), ("FULL", 2)])
def test_the_checkpointer_syncs_as_told(db_path: Path, mode: SynchronousMode, level: int) -> None:
    open_writer(db_path).close()
    conn = open_checkpointer(db_path, synchronous=mode)
    try:
        assert _pragma(conn, "synchronous") == level
        assert _pragma(conn, "journal_mode") == "wal"
    finally:
        conn.close()


def test_the_checkpointer_copies_commits_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "a db #1?.sqlite"
    writer = open_writer(path, wal_autocheckpoint=0)
    checkpointer = open_checkpointer(path)
    try:
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
        alone = tmp_path / "alone.sqlite"
        alone.write_bytes(path.read_bytes())  # the database file without its WAL
        with sqlite3.connect(alone) as before:
            assert before.execute("SELECT name FROM sqlite_master").fetchall() == []
        before.close()
        busy, frames, copied = checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, copied) == (0, frames)
        assert frames > 0
        alone.write_bytes(path.read_bytes())
        with sqlite3.connect(alone) as after:
            assert after.execute("SELECT COUNT(*) FROM t").fetchone() == (100,)
        after.close()
    finally:
        checkpointer.close()
        writer.close()


def test_the_checkpointer_neither_creates_nor_converts_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        open_checkpointer(missing)
    assert not missing.exists()
    rollback = tmp_path / "rollback.db"
    with sqlite3.connect(rollback) as plain:
        plain.execute("CREATE TABLE t (x INTEGER)")
    plain.close()
    with pytest.raises(RuntimeError, match="not in WAL mode"):
        open_checkpointer(rollback)
    with sqlite3.connect(rollback) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    plain.close()
    with pytest.raises(ValueError, match="synchronous must be one of"):
        open_checkpointer(rollback, synchronous="SOMETIMES")  # type: ignore[arg-type]
