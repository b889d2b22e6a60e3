"""Work the main process does pass after pass, for as long as it runs.

Media retention and housekeeping each run a pass at start and then one
every so often. A pass that fails is logged and the next one tries again:
the server goes on serving. Tests drive passes themselves, or wait for the
task's own with :meth:`PeriodicPasses.wait_for_pass`.
"""

from __future__ import annotations

import logging
from typing import Final, Generic, TypeVar

import trio

__all__ = ["PeriodicPasses"]

_log: Final = logging.getLogger(__name__)

_R = TypeVar("_R")


class PeriodicPasses(Generic[_R]):
    """Runs :meth:`run_pass` now and every ``interval_seconds`` after; start
    :meth:`run` with ``nursery.start``.
    """

    #: What a pass is called in the log.
    name = "a periodic pass"

    def __init__(self, *, interval_seconds: float) -> None:
        self._interval_seconds = interval_seconds
        #: How many passes have ended, failed ones included.
        self.passes = 0
        self._pass_ended = trio.Event()

    async def run_pass(self) -> _R:
        """One pass; what it did, for :meth:`describe`."""
        raise NotImplementedError

    def describe(self, done: _R) -> str | None:
        """A line for the log about what a pass did, or None to say nothing."""
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                done = await self.run_pass()
            except Exception:
                _log.exception("%s failed; the next one tries again", self.name)
            else:
                line = self.describe(done)
                if line is not None:
                    _log.info("%s: %s", self.name, line)
            finally:
                self.passes += 1
                self._pass_ended.set()
                self._pass_ended = trio.Event()
            await trio.sleep(self._interval_seconds)

    async def wait_for_pass(self, passes: int) -> None:
        """Return once ``passes`` passes of :meth:`run` have ended."""
        while self.passes < passes:
            await self._pass_ended.wait()
