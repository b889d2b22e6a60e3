"""Opening SQLite connections the way every part of storage relies on.

Every connection enforces foreign keys: the partial-state race is detected by
one. The database runs in WAL mode, so readers never block the writer nor the
writer the readers. Commits are durable by default (``synchronous=FULL``):
a write the actor has acknowledged survives a crash of the process or of the
machine. ``NORMAL`` survives a crash of the process only.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "SynchronousMode",
    "open_checkpointer",
    "open_reader",
    "open_writer",
    "secure_deletion",
]

SynchronousMode = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# How long a statement waits for a lock held by another connection. Only a
# checkpoint or a second process could hold one; neither should for long.
_BUSY_TIMEOUT_MS = 10_000


def open_writer(
    path: str | os.PathLike[str],
    *,
    synchronous: SynchronousMode = "FULL",
    max_page_count: int | None = None,
    wal_autocheckpoint: int | None = None,
) -> sqlite3.Connection:
    """The one write connection, to be used only on the thread that opens it.

    Transactions are explicit (``isolation_level=None``): the actor issues
    BEGIN, SAVEPOINT and COMMIT itself. ``max_page_count`` caps the size of
    the database; a write past it fails as if the disk were full.
    ``wal_autocheckpoint`` is the WAL size in pages at which a commit
    checkpoints (SQLite's default, 1,000, if not given); the actor sets it
    high and checkpoints between batches itself.
    """
    if synchronous not in get_args(SynchronousMode):
        raise ValueError(
            f"synchronous must be one of {get_args(SynchronousMode)}, not {synchronous!r}"
        )
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, cached_statements=512)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL mode (journal mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
        # What every write frees is overwritten, whatever the build's default
        # (Debian's is on, SQLite's own off): the full-text index's merges and
        # the b-trees' rebalancing free pages of text all the time, and a
        # purge or a scrub later cannot reach the copies left in free space.
        conn.execute("PRAGMA secure_delete = ON")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_page_count):d}")
        if wal_autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint):d}")
    except BaseException:
        conn.close()
        raise
    return conn


def open_checkpointer(
    path: str | os.PathLike[str], *, synchronous: SynchronousMode = "FULL"
) -> sqlite3.Connection:
    """A connection that only checkpoints the WAL, beside the writer.

    It syncs as the writer does: a checkpoint writes the database file, and
    with ``synchronous`` below FULL the WAL is synced only there.
    """
    if synchronous not in get_args(SynchronousMode):
        raise ValueError(
            f"synchronous must be one of {get_args(SynchronousMode)}, not {synchronous!r}"
        )
    conn = sqlite3.connect(os.fspath(path), isolation_level=None)
    try:
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
    except BaseException:
        conn.close()
        raise
    return conn


def open_reader(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection, handed from thread to thread by the reader pool
    (one thread at a time).
    """
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def secure_deletion(conn: sqlite3.Connection) -> Iterator[None]:
    """Within the block, what a write deletes or replaces is overwritten
    with zeros in the database file (``PRAGMA secure_delete``), whatever
    the SQLite build's default; the setting is restored after it."""
    (before,) = conn.execute("PRAGMA secure_delete").fetchone()
    conn.execute("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(before):d}")
