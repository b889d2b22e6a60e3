"""The reader pool: read-only connections used from worker threads.

Reads never go through the actor. Each runs in a Trio worker thread, at most
``size`` at a time (a :class:`trio.CapacityLimiter`), on a read-only
connection checked out of the pool for the length of the read and inside one
read transaction. In WAL mode a reader sees the last commit before its read
began and neither waits for the writer nor makes it wait, however long the
read takes.

Connections are checked out rather than kept per thread because Trio's
worker threads come and go; a checked-out connection is used by one thread
at a time, which is what sqlite3 asks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from ranvier.errors import StorageUnavailableError

from .connections import open_reader

__all__ = ["ReadOperation", "ReaderPool"]

T = TypeVar("T")

#: A read: a function of a read-only connection, run in a worker thread.
ReadOperation = Callable[[sqlite3.Connection], T]


class ReaderPool:
    """Up to ``size`` read-only connections to one database file."""

    def __init__(self, path: str | os.PathLike[str], *, size: int = 4) -> None:
        if size < 1:
            raise ValueError(f"a reader pool needs at least one connection, not {size}")
        self.path = path
        self.limiter = trio.CapacityLimiter(size)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Reads asked for since the pool opened, for metrics.
        self.reads = 0

    async def read(self, operation: ReadOperation[T]) -> T:
        """Run ``operation`` on a reader connection in a worker thread.

        A cancelled caller waits for the read to finish (reads are short and
        the connection must come back to the pool whole).
        """
        if self._closed:
            raise StorageUnavailableError("storage has stopped: the reader pool is closed")
        self.reads += 1
        return await trio.to_thread.run_sync(self._read, operation, limiter=self.limiter)

    def _read(self, operation: ReadOperation[T]) -> T:
        conn = self._check_out()
        reusable = False
        try:
            conn.execute("BEGIN")
            try:
                return operation(conn)
            finally:
                conn.execute("ROLLBACK")
                # Only a connection that ended its transaction cleanly goes
                # back to the pool.
                reusable = True
        finally:
            self._check_in(conn, reusable=reusable)

    def _check_out(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return open_reader(self.path)

    def _check_in(self, conn: sqlite3.Connection, *, reusable: bool) -> None:
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections now, and the others as their reads end."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
