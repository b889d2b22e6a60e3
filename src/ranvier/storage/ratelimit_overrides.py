"""Per-user overrides of the message rate limit, set by admins.

Table (the schema's ``_ratelimit_overrides`` migration)
--------------------------------------------------------

``ratelimit_overrides(user_id, messages_per_second, burst_count)``, one row
per user with an override; ``0, 0`` means the user is not limited at all.

Every write can run twice (``registered_write``): setting replaces the
row, deleting deletes what is there.
"""

from __future__ import annotations

import functools
import sqlite3

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["RateLimitOverrideStorage"]


class RateLimitOverrideStorage:
    """The overrides, over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def override(self, user_id: str) -> tuple[int, int] | None:
        """``(messages_per_second, burst_count)`` of ``user_id``, or None."""
        return await self._readers.read(functools.partial(_override, user_id=user_id))

    async def set_override(self, user_id: str, messages_per_second: int, burst_count: int) -> None:
        await self._writer.submit(
            functools.partial(
                _set_override,
                user_id=user_id,
                messages_per_second=messages_per_second,
                burst_count=burst_count,
            )
        )

    async def delete_override(self, user_id: str) -> None:
        await self._writer.submit(functools.partial(_delete_override, user_id=user_id))


def _override(conn: sqlite3.Connection, *, user_id: str) -> tuple[int, int] | None:
    row = conn.execute(
        "SELECT messages_per_second, burst_count FROM ratelimit_overrides WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


@registered_write
def _set_override(
    conn: sqlite3.Connection, *, user_id: str, messages_per_second: int, burst_count: int
) -> None:
    conn.execute(
        "INSERT INTO ratelimit_overrides (user_id, messages_per_second, burst_count)"
        " VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE"
        " SET messages_per_second = excluded.messages_per_second,"
        " burst_count = excluded.burst_count",
        (user_id, messages_per_second, burst_count),
    )


@registered_write
def _delete_override(conn: sqlite3.Connection, *, user_id: str) -> None:
    conn.execute("DELETE FROM ratelimit_overrides WHERE user_id = ?", (user_id,))
