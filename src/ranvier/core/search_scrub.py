"""The task that scrubs the full-text index when deletes asked for it
(:mod:`ranvier.storage.search_scrub`), on the main process.

It looks at start, when woken (a room's purge wakes it through
:class:`ScrubbingPurger`), and every ``interval_seconds`` (the pruning of
redacted content asks without waking it). A scrub goes step by step, each
step a write of its own, so the rest of the server writes between them;
one that fails is logged and tried again at the next look, and a scrub
owed at a stop is finished after the next start, as storage keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Final, Protocol

import trio

from ranvier.storage.room_purge import PurgeResult

from .admin_rooms import RoomPurger

__all__ = ["ScrubStore", "ScrubbingPurger", "SearchScrubber"]

_log: Final = logging.getLogger(__name__)


class ScrubStore(Protocol):
    """:class:`ranvier.storage.search_scrub.SearchScrubStorage`."""

    async def scrub_owed(self) -> bool: ...

    async def scrub_step(self) -> bool: ...


class SearchScrubber:
    """Runs the index's scrubs; start :meth:`run` with ``nursery.start``."""

    def __init__(self, store: ScrubStore, *, interval_seconds: float = 60.0) -> None:
        self._store = store
        self._interval_seconds = interval_seconds
        self._woken = trio.Event()
        #: How many looks have ended, failed ones included.
        self.looks = 0
        self._look_ended = trio.Event()

    def wake(self) -> None:
        """Look now for a scrub owed."""
        self._woken.set()

    async def scrub(self) -> int:
        """Run the scrub owed to its end; how many steps it took."""
        steps = 0
        while await self._store.scrub_owed():
            steps += 1
            if not await self._store.scrub_step():
                break
        return steps

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._woken = trio.Event()
            try:
                steps = await self.scrub()
            except Exception:
                _log.exception("scrubbing the search index failed; the next look tries again")
            else:
                if steps:
                    _log.info("search index scrubbed of deleted rows in %d steps", steps)
            finally:
                self.looks += 1
                self._look_ended.set()
                self._look_ended = trio.Event()
            with trio.move_on_after(self._interval_seconds):
                await self._woken.wait()

    async def wait_for_look(self, looks: int) -> None:
        """Return once ``looks`` looks of :meth:`run` have ended."""
        while self.looks < looks:
            await self._look_ended.wait()


class ScrubbingPurger:
    """A room purger (:class:`ranvier.core.admin_rooms.RoomPurger`) that
    wakes the scrubber when a purge deleted rows of the index.
    """

    def __init__(self, purger: RoomPurger, scrubber: SearchScrubber) -> None:
        self._purger = purger
        self._scrubber = scrubber

    async def purge_room(
        self,
        room_id: str,
        *,
        refuse_if_members_of: str | None = None,
        origin: str | None = None,
        leaves: Collection[str] = (),
    ) -> PurgeResult | None:
        purged = await self._purger.purge_room(
            room_id, refuse_if_members_of=refuse_if_members_of, origin=origin, leaves=leaves
        )
        if purged is not None and purged.rows.get("event_search"):
            self._scrubber.wake()
        return purged
