"""Deleted rows of the full-text index (:mod:`ranvier.storage.search`)
dropped from the database file for good.

A room's purge (:mod:`ranvier.storage.room_purge`) and the pruning of a
redacted event's content (:mod:`ranvier.storage.redacted_content`) delete
rows of ``event_search``, with ``PRAGMA secure_delete`` on. That clears the
row's text from the FTS5 content table, but not its words from the
inverted index: FTS5 records a delete as a tombstone in a new segment (the
words again, marked deleted), and the words leave the older segment only
when a merge takes that segment and the tombstone together into the
oldest level, where both are dropped. Until then anyone with the file can
read what the purge or the redaction removed.

So a write that deletes index rows calls :func:`before_search_deletes`
before and :func:`after_search_deletes` after, which do one of two things:

* **SQLite 3.42 or later: FTS5's ``secure-delete`` option**, turned on
  once for the table (it is kept in ``event_search_config``). A delete
  then removes the row's entries from the segments that hold them, in the
  same write, at a cost bound by the row. Turning it on moves the table to
  FTS5's file format 5, which SQLite older than 3.42 refuses to read
  ("invalid fts5 file format ... run 'rebuild'"): a database, once on a
  newer SQLite, cannot go back to an older one with its search intact.
  Deletes from before it was turned on left tombstones, so turning it on
  also asks for one scrub, below.
* **Older SQLite: a scrub** is asked for (``search_scrub.requested``
  grows by one), and :func:`scrub_search_step` merges the whole index
  into one segment, in steps.

A scrub merges every segment, but no write holds the writer for long: each
step is a write of its own (other requests go between two steps) that
writes at most ``pages`` leaf pages of the merged segment (FTS5 leaf pages
are about 1000 bytes, so 256 pages are about a quarter of a megabyte; a
few milliseconds). The first step of a scrub is FTS5's ``'merge'`` command
with ``-pages``, which gathers every segment of the index, the tombstones
included, into one merge at the oldest level; the later steps give
``+pages``, which goes on with a merge under way and starts none of that
kind again, so the segments written by new events meanwhile join the
index's own small merges rather than restarting the big one (with
``-pages`` at every step each new segment would restart it, and on a busy
server it might never end). FTS5 changes at least two rows when a merge
does any work, so a step that changed fewer has found no merge left: the
one started for the scrub is done, every deleted entry and tombstone is
gone from the segments, and the freed pages were overwritten as they were
freed (the steps run with ``secure_delete`` on).

A scrub asked for while one is under way starts again with ``-pages``, so
that its tombstones are in the merge; the counters (``requested``, the
scrub the merge under way was started for, and the last one finished)
make that so, and survive a restart: a scrub owed when the server stopped
is finished after it starts again.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Final

from .connections import secure_deletion
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = [
    "SCRUB_PAGES",
    "SECURE_DELETE_AVAILABLE",
    "SearchScrubStorage",
    "after_search_deletes",
    "before_search_deletes",
    "scrub_owed",
    "scrub_search_step",
]

#: Whether this SQLite's FTS5 has the ``secure-delete`` option.
SECURE_DELETE_AVAILABLE: Final = sqlite3.sqlite_version_info >= (3, 42, 0)
#: Leaf pages a scrub step writes at most.
SCRUB_PAGES: Final = 256


def _ask_for_scrub(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE search_scrub SET requested = requested + 1")


def before_search_deletes(conn: sqlite3.Connection, *, secure_delete: bool | None = None) -> None:
    """Ready the index for deletes of ``event_search`` rows that the write
    goes on to make (see the module's doc); ``secure_delete`` says whether
    to use FTS5's option (this SQLite's answer when None).
    """
    if secure_delete is None:
        secure_delete = SECURE_DELETE_AVAILABLE
    if not secure_delete:
        return
    row = conn.execute("SELECT v FROM event_search_config WHERE k = 'secure-delete'").fetchone()
    if row is not None and row[0]:
        return
    conn.execute("INSERT INTO event_search (event_search, rank) VALUES ('secure-delete', 1)")
    _ask_for_scrub(conn)


def after_search_deletes(
    conn: sqlite3.Connection, deleted: int, *, secure_delete: bool | None = None
) -> None:
    """Ask for a scrub if the ``deleted`` rows of ``event_search`` the write
    just deleted need one (see the module's doc).
    """
    if secure_delete is None:
        secure_delete = SECURE_DELETE_AVAILABLE
    if deleted and not secure_delete:
        _ask_for_scrub(conn)


def scrub_owed(conn: sqlite3.Connection) -> bool:
    """Whether a scrub was asked for and not finished."""
    requested, done = conn.execute("SELECT requested, done FROM search_scrub").fetchone()
    return bool(done < requested)


@registered_write
def scrub_search_step(conn: sqlite3.Connection, *, pages: int = SCRUB_PAGES) -> bool:
    """One step of the scrub owed, writing at most about ``pages`` leaf
    pages; whether more steps are owed.
    """
    if pages < 1:
        raise ValueError("a scrub step writes at least one page")
    requested, started, done = conn.execute(
        "SELECT requested, started, done FROM search_scrub"
    ).fetchone()
    if done >= requested:
        return False
    # A scrub asked for after the merge under way began has tombstones the
    # merge does not hold: gather every segment again.
    restart = started < requested
    before = conn.total_changes
    with secure_deletion(conn):
        conn.execute(
            "INSERT INTO event_search (event_search, rank) VALUES ('merge', ?)",
            (-pages if restart else pages,),
        )
    merged = conn.total_changes - before >= 2
    if restart:
        started = requested
    if not merged:
        done = started
    conn.execute("UPDATE search_scrub SET started = ?, done = ?", (started, done))
    return bool(done < requested)


class SearchScrubStorage:
    """The index scrub through the storage actor and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def scrub_owed(self) -> bool:
        """See :func:`scrub_owed`."""
        return await self._readers.read(scrub_owed)

    async def scrub_step(self, pages: int = SCRUB_PAGES) -> bool:
        """See :func:`scrub_search_step`."""
        return await self._writer.submit(functools.partial(scrub_search_step, pages=pages))
