"""Media retention: media nobody has used for its lifetime is deleted.

The main process runs :meth:`MediaRetention.run`, one pass now and one
every :data:`PASS_INTERVAL_SECONDS`. A pass first finishes deletions left
half done (see :mod:`ranvier.core.media_deletion`), then deletes our media
last used (downloaded, or a thumbnail of it served; uploaded, until it
is) before ``local_lifetime_ms`` ago, and other servers' media last used
before ``remote_lifetime_ms`` ago, which is fetched again if asked for.
Quarantined media is kept, as is media protected from quarantine, and our
media that a profile or a room shows as its avatar. Without a lifetime,
media of that kind is kept forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from ranvier.storage.media_admin import DeletionRule

from .media_deletion import MediaDeleter
from .periodic import PeriodicPasses

__all__ = ["DAY_MS", "PASS_INTERVAL_SECONDS", "MediaRetention"]

#: How long the task waits between passes.
PASS_INTERVAL_SECONDS: Final = 60 * 60.0
#: Milliseconds in a day, which lifetimes are configured in.
DAY_MS: Final = 24 * 60 * 60 * 1000


class MediaRetention(PeriodicPasses[int]):
    """Deletes our media and other servers' media kept here when unused
    for their lifetimes (None: kept forever)."""

    name = "media retention"

    def __init__(
        self,
        *,
        deleter: MediaDeleter,
        local_lifetime_ms: int | None,
        remote_lifetime_ms: int | None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        super().__init__(interval_seconds=PASS_INTERVAL_SECONDS)
        self._deleter = deleter
        self._local_lifetime_ms = local_lifetime_ms
        self._remote_lifetime_ms = remote_lifetime_ms
        self._clock_ms = clock_ms

    def describe(self, done: int) -> str | None:
        return f"deleted {done} pieces of media" if done else None

    async def run_pass(self, *, now_ms: int | None = None) -> int:
        """One pass as of ``now_ms`` (the clock's time by default); how many
        pieces of media it deleted, finished deletions included."""
        now = self._clock_ms() if now_ms is None else now_ms
        deleted = await self._deleter.finish_pending()
        for local, lifetime in (
            (True, self._local_lifetime_ms),
            (False, self._remote_lifetime_ms),
        ):
            if lifetime is not None:
                gone = await self._deleter.delete_unused(
                    local=local, rule=DeletionRule(now - lifetime), keep_profiles=local
                )
                deleted += len(gone)
        return deleted
