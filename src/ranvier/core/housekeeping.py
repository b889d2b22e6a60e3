"""Housekeeping: rows that only serve for a while are deleted after it.

Several tables gain a row per request: records that let a retried request
be answered as the first was (federation transactions, client transaction
IDs), tokens and sessions with an expiry, URL previews, sliding sync
connections, device-list changes, other servers' users' device lists once
they share no room with ours; and redacted events keep what they said
until it is replaced (:mod:`ranvier.storage.redacted_content`). Nothing
needs them after their window, and without this task they would stay for
ever. The main process runs :meth:`Housekeeping.run`, a pass now and one
every ``interval_ms``; workers do not.

A pass deletes each kind of row in writes of at most ``batch_rows`` rows
(:class:`ranvier.storage.housekeeping.HousekeepingStorage`), each write a
request of its own to the storage actor, so other writes go between them
and none waits behind a long delete.

A user's device-list change goes once a newer change of the same user is
at or below the device-list position read by the previous pass (none in
the first pass after a start): a read from a token asks for the span up to
a position it took when it began, and by then that position was past the
previous pass's, so the newer change is in the span wherever the older one
was and the answer is the same (``docs/decisions.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from ranvier.storage.housekeeping import Prune

from .builder import wall_clock_ms
from .periodic import PeriodicPasses
from .sliding_sync import POS_LIFETIME_MS

__all__ = ["HOUR_MS", "Housekeeping", "HousekeepingAges", "PruneStore"]

HOUR_MS: Final = 60 * 60 * 1000


class PruneStore(Protocol):
    """Where rows are deleted (:class:`ranvier.storage.housekeeping.HousekeepingStorage`)."""

    async def prune(self, rule: Prune, *, cutoff_ms: int, limit: int) -> int: ...

    async def device_lists_position(self) -> int: ...


@dataclass(frozen=True, slots=True)
class HousekeepingAges:
    """How long records are kept, in milliseconds."""

    #: A federation transaction's record: a repeat within it is answered
    #: from the record.
    federation_transaction_ms: int = 24 * HOUR_MS
    #: A client transaction ID (sends, redactions, to-device): a retry
    #: within it is de-duplicated.
    client_transaction_ms: int = 7 * 24 * HOUR_MS
    #: A redacted event's original content, counted from its redaction's
    #: arrival; None keeps it for ever.
    redacted_content_ms: int | None = 7 * 24 * HOUR_MS


class Housekeeping(PeriodicPasses[dict[Prune, int]]):
    """Deletes, pass after pass, the rows nobody can use any more."""

    name = "housekeeping"

    def __init__(
        self,
        store: PruneStore,
        *,
        ages: HousekeepingAges,
        interval_ms: int = HOUR_MS,
        batch_rows: int = 1000,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        super().__init__(interval_seconds=interval_ms / 1000)
        self._store = store
        self._ages = ages
        self._batch_rows = batch_rows
        self._clock_ms = clock_ms
        #: The device-list position the previous pass began at (0: none yet).
        self._device_lists_horizon = 0

    def describe(self, done: dict[Prune, int]) -> str | None:
        if not any(done.values()):
            return None
        return "deleted " + ", ".join(f"{n} {rule.value}" for rule, n in done.items() if n)

    def cutoffs(self, now_ms: int) -> dict[Prune, int]:
        """Per kind of row, what a pass at ``now_ms`` compares it with."""
        federation = now_ms - self._ages.federation_transaction_ms
        client = now_ms - self._ages.client_transaction_ms
        redacted: dict[Prune, int] = {}
        if self._ages.redacted_content_ms is not None:
            redacted[Prune.REDACTED_CONTENT] = now_ms - self._ages.redacted_content_ms
        return {
            Prune.RECEIVED_TRANSACTIONS: federation,
            Prune.CLIENT_TRANSACTIONS: client,
            Prune.CLIENT_TRANSACTIONS_OF_GONE_DEVICES: now_ms,
            Prune.TO_DEVICE_TRANSACTIONS: client,
            Prune.TO_DEVICE_TRANSACTIONS_OF_GONE_DEVICES: now_ms,
            Prune.TO_DEVICE_INBOX_OF_GONE_DEVICES: now_ms,
            Prune.URL_PREVIEWS: now_ms,
            Prune.LOGIN_TOKENS: now_ms,
            Prune.OPENID_TOKENS: now_ms,
            Prune.REGISTRATION_TOKEN_SESSIONS: now_ms,
            Prune.SSO_SESSIONS: now_ms,
            Prune.THREEPID_VALIDATION_SESSIONS: now_ms,
            Prune.UIA_SESSIONS: now_ms,
            # Every position older than this is refused as expired.
            Prune.SLIDING_SYNC_CONNECTIONS: now_ms - POS_LIFETIME_MS,
            # A position, not a time: see the module's doc.
            Prune.SUPERSEDED_DEVICE_LIST_CHANGES: self._device_lists_horizon,
            Prune.UNSHARED_DEVICE_LISTS: now_ms,
            **redacted,
        }

    async def run_pass(self, *, now_ms: int | None = None) -> dict[Prune, int]:
        """One pass as of ``now_ms`` (the clock's time by default); how many
        rows of each kind it deleted (sliding sync: connections).
        """
        now = self._clock_ms() if now_ms is None else now_ms
        device_lists = await self._store.device_lists_position()
        deleted: dict[Prune, int] = {}
        for rule, cutoff in self.cutoffs(now).items():
            total = 0
            while True:
                gone = await self._store.prune(rule, cutoff_ms=cutoff, limit=self._batch_rows)
                total += gone
                if gone == 0:
                    break
                # Let the rest of the server in between two writes.
                await trio.lowlevel.checkpoint()
            deleted[rule] = total
        self._device_lists_horizon = device_lists
        return deleted
