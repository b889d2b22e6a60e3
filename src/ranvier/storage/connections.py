"""Opening SQLite connections the way every part of storage relies on.

Every connection enforces foreign keys: the partial-state race is detected by
one. The database runs in WAL mode, so readers never block the writer nor the
writer the readers. Commits are durable by default (``synchronous=FULL``):
a write the actor has acknowledged survives a crash of the process or of the
machine. ``NORMAL`` survives a crash of the process only.

Checkpoints, which copy committed pages from the WAL into the database file,
need not run on the writer: a connection of their own (:func:`open_checkpointer`)
can run them beside it, and the writer's automatic checkpoint is then only a
backstop that keeps the WAL from growing without bound.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Literal, get_args

__all__ = ["SynchronousMode", "open_checkpointer", "open_reader", "open_writer"]

SynchronousMode = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# How long a statement waits for a lock held by another connection. Only a
# checkpoint or a second process could hold one; neither should for long.
_BUSY_TIMEOUT_MS = 10_000

#: SQLite's own default: the writer checkpoints at the commit that takes the
#: WAL past this many pages.
_SQLITE_AUTOCHECKPOINT_PAGES = 1000


def _check_synchronous(synchronous: str) -> None:
    if synchronous not in get_args(SynchronousMode):
        raise ValueError(
            f"synchronous must be one of {get_args(SynchronousMode)}, not {synchronous!r}"
        )


def open_writer(
    path: str | os.PathLike[str],
    *,
    synchronous: SynchronousMode = "FULL",
    max_page_count: int | None = None,
    wal_autocheckpoint: int = _SQLITE_AUTOCHECKPOINT_PAGES,
) -> sqlite3.Connection:
    """The one write connection, to be used only on the thread that opens it.

    Transactions are explicit (``isolation_level=None``): the actor issues
    BEGIN, SAVEPOINT and COMMIT itself. ``max_page_count`` caps the size of
    the database; a write past it fails as if the disk were full. A commit
    that takes the WAL past ``wal_autocheckpoint`` pages runs a checkpoint
    before it returns; 0 turns that off.
    """
    _check_synchronous(synchronous)
    if wal_autocheckpoint < 0:
        raise ValueError(f"wal_autocheckpoint must be 0 or more pages, not {wal_autocheckpoint}")
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, cached_statements=512)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL mode (journal mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_page_count):d}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint):d}")
    except BaseException:
        conn.close()
        raise
    return conn


def open_checkpointer(
    path: str | os.PathLike[str], *, synchronous: SynchronousMode = "FULL"
) -> sqlite3.Connection:
    """A connection that only runs checkpoints, on the thread that opens it.

    The database must exist and be in WAL mode already: this never creates
    or converts one. It takes the writer's ``synchronous`` setting because a
    checkpoint syncs (or not) by the setting of the connection running it:
    with ``OFF`` it would reuse the WAL before the pages copied out of it
    reached the disk, losing commits that ``NORMAL`` or ``FULL`` had made
    durable.
    """
    _check_synchronous(synchronous)
    uri = Path(path).absolute().as_uri() + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{path}: the database is not in WAL mode (it is in {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
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
