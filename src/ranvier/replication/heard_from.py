"""Servers heard from, passed on to the process that delivers to them.

A server that signs a request of ours is up, and the federation sender
tries a server it is backing off from again as soon as it hears of that
(:meth:`~ranvier.federation.sender.FederationSender.heard_from`). With
workers, the request may reach one process (the main process, a
federation_reader) while PDUs leave from another (the federation_sender
worker), so the process that authenticated the request passes the news on:
a :class:`HeardFromRelay` takes every authenticated origin, keeps those the
``destinations`` table shows backing off, and tells them onwards. A
federation_reader tells the main process (``POST``
:data:`~ranvier.replication.wire.HEARD_FROM`); the main process tells its
own sender, and its stream carries them to the federation_sender worker
(:class:`~ranvier.replication.stream.StreamSource`), whose sender then
hears of them as if it had authenticated the request itself.

Invariants
----------

* **The request never waits.** :meth:`HeardFromRelay.heard_from` only adds
  the origin to a bounded set; reads and messages happen in :meth:`run`.
* **Cheap whatever the traffic.** Origins are taken in rounds at most one
  ``interval_seconds`` apart: each round is one read of the
  ``destinations`` table for every origin heard since the last, and one
  message for those backing off; an origin heard a thousand times in a
  second costs what one does, and a server not backing off costs no
  message at all.
* **A hint, not a promise.** An origin dropped (the set full), or a
  message lost (the main process unreachable, either process restarting),
  leaves the destination to its normal backoff, nothing worse; the next
  request from it tries again.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Final

import trio

from ranvier.errors import MatrixError
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.storage import Storage

__all__ = ["HeardFromRelay", "backing_off"]

_log: Final = logging.getLogger(__name__)
#: Origins waiting for the next round; more are dropped until it runs.
_MAX_PENDING: Final = 10_000
#: Origins named in one message, which keeps it far below the body limit.
_CHUNK: Final = 100


def backing_off(
    conn: sqlite3.Connection, *, destinations: Collection[str], now_ms: int
) -> list[str]:
    """Those of ``destinations`` whose stored backoff has not run out at
    ``now_ms``: a row whose interval has passed waits only for the sender's
    next attempt, which needs no waking.
    """
    found: list[str] = []
    names = sorted(destinations)
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.extend(
            destination
            for (destination,) in conn.execute(
                f"SELECT destination FROM destinations WHERE destination IN ({marks})"
                " AND retry_last_ts + retry_interval_ms > ?",
                (*chunk, now_ms),
            )
        )
    return found


class HeardFromRelay:
    """Passes on the origins of authenticated requests that are backing off.

    ``tell`` is given each round's destinations backing off, at most
    ``_CHUNK`` at a time; ``clock_ms`` is the wall clock the stored backoff
    is kept in. Start it with ``await nursery.start(relay.run)``.
    """

    def __init__(
        self,
        storage: Storage,
        tell: Callable[[Sequence[str]], Awaitable[None]],
        *,
        interval_seconds: float = 1.0,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._storage = storage
        self._tell = tell
        self._interval = interval_seconds
        self._clock_ms = clock_ms
        self._pending: set[str] = set()
        self._waiting = trio.Event()
        #: Rounds run, destinations passed on, and origins dropped; for
        #: tests and metrics.
        self.rounds = 0
        self.passed_on = 0
        self.dropped = 0

    def heard_from(self, origin: str) -> None:
        """``origin`` signed a request of ours (``FederationApp``'s
        ``on_authenticated``)."""
        if origin in self._pending:
            return
        if len(self._pending) >= _MAX_PENDING:
            self.dropped += 1
            return
        self._pending.add(origin)
        self._waiting.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._waiting.wait()
            self._waiting = trio.Event()
            heard, self._pending = self._pending, set()
            self.rounds += 1
            try:
                await self._pass_on(heard)
            except MatrixError as exc:
                _log.warning("%d servers heard from were not passed on: %s", len(heard), exc)
            # What arrives meanwhile waits for the next round.
            await trio.sleep(self._interval)

    async def _pass_on(self, heard: Collection[str]) -> None:
        found = await self._storage.readers.read(
            functools.partial(backing_off, destinations=heard, now_ms=self._clock_ms())
        )
        for start in range(0, len(found), _CHUNK):
            chunk = found[start : start + _CHUNK]
            await self._tell(chunk)
            self.passed_on += len(chunk)
