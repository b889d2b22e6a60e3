"""URL previews made, kept for a while so that a link posted in a busy room
is fetched once, not once per reader.

Table (the schema's ``_url_previews`` migration)
------------------------------------------------

``url_previews`` holds a row per URL: the preview's JSON as answered to
clients, when it was made and when it stops being served.

Invariants
----------

* **One row per URL, the newest.** A preview made again replaces the row;
  rows past their expiry are deleted whenever a preview is written, so the
  table holds at most what was previewed in one expiry period.
* **Only previews are kept, never failures**: a page that could not be
  fetched is asked again the next time.
* **Every write survives being run twice** (a worker's write repeated).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

import msgspec

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["UrlPreviewStorage"]


class UrlPreviewStorage:
    """Preview rows over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def store(
        self, url: str, preview: dict[str, Any], *, made_ts: int, expires_ts: int
    ) -> None:
        """Keep ``preview`` of ``url`` until ``expires_ts`` (ms since the
        epoch), dropping any preview that expired by ``made_ts``."""
        await self._writer.submit(
            functools.partial(
                _store_preview,
                url=url,
                preview_json=msgspec.json.encode(preview),
                made_ts=made_ts,
                expires_ts=expires_ts,
            )
        )

    async def preview(self, url: str, *, now_ts: int) -> dict[str, Any] | None:
        """The kept preview of ``url`` if it has not expired at ``now_ts``."""
        found = await self._readers.read(functools.partial(_read_preview, url=url, now_ts=now_ts))
        if found is None:
            return None
        decoded: dict[str, Any] = msgspec.json.decode(found)
        return decoded


@registered_write
def _store_preview(
    conn: sqlite3.Connection, *, url: str, preview_json: bytes, made_ts: int, expires_ts: int
) -> None:
    conn.execute("DELETE FROM url_previews WHERE expires_ts <= ?", (made_ts,))
    conn.execute(
        "INSERT OR REPLACE INTO url_previews (url, preview_json, made_ts, expires_ts)"
        " VALUES (?, ?, ?, ?)",
        (url, preview_json, made_ts, expires_ts),
    )


def _read_preview(conn: sqlite3.Connection, *, url: str, now_ts: int) -> bytes | None:
    row = conn.execute(
        "SELECT preview_json FROM url_previews WHERE url = ? AND expires_ts > ?", (url, now_ts)
    ).fetchone()
    return None if row is None else bytes(row[0])
