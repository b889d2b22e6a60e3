"""One destination's outgoing queue and the task that drains it.

Invariants
----------

* **One transaction at a time.** A destination has at most one transaction
  in flight. One that failed for the destination's sake (no answer, a
  timeout, 5xx ...) is sent again, unchanged and under the same ID, once
  the backoff allows, so a destination that did take it the first time
  recognises it; nothing else is sent to that destination before it.
* **Bounded memory.** At most ``max_pdus`` PDUs and ``max_edus`` EDUs wait
  in memory. A PDU that finds the queue full, or the destination backing
  off, is not kept: the queue turns to catching up, and the database says
  what the destination missed. EDUs are ephemeral: past the bound the
  oldest go, and none are kept for a destination that is backing off.
  What else is kept grows with the rooms shared, not with the events sent.
* **EDUs that must arrive wait in the database.** ``m.direct_to_device``
  EDUs are written to the outbox (:class:`.interfaces.EduOutbox`) with the
  send that makes them, and the queue reads them from there, oldest first
  and ahead of ephemeral EDUs; they are deleted only once the destination
  took (or refused) the transaction carrying them, so a backoff or a
  restart delays them and loses none. One that was delivered just before
  a crash and not yet deleted is sent again: the receiver takes each
  message ID once.
* **PDUs that catching up cannot send wait in the database too.** Our
  users' leaves of a room purged here are written to the PDU outbox
  (:class:`.interfaces.PduOutbox`) by the purge, since catching up reads
  the room's events and the purge deleted them. The queue sends them,
  oldest first and ahead of anything else, and deletes them only once the
  destination took (or refused) the transaction carrying them, through a
  backoff and a restart like the EDUs above.
* **Nothing handed over is forgotten.** Every PDU's room and stream
  ordering is written to ``destination_rooms`` as soon as it is handed
  over, whatever becomes of the PDU itself, by a task of the queue's own
  that never waits for the destination; delivery moves the room's sent
  position. A room whose noted position is ahead of its sent position is
  one the destination has missed events of, and catching up finds it
  there, in this process or after a restart. (Both writes only move
  positions forward, so their order does not matter.)
* **Catching up sends the latest, not everything.** For each room behind,
  the destination is sent the room's newest events (its forward
  extremities newer than what it had), one room per transaction so that
  each asks little of it, and it pulls the gap itself with
  ``get_missing_events``. PDUs are not queued while catching up; catching
  up ends only when the database shows nothing behind and every position
  handed over is written.
* **Refusals are final.** A transaction the destination refuses outright
  (a 4xx that is not about its health, see :mod:`.backoff`) is dropped and
  its rooms count as sent, so no retry or catch-up offers it again.
* **Backoff is kept in the database** (``destinations``), so a restart does
  not hammer a destination that was down, and waits run on Trio's clock.
* **A destination heard from is retried early.** An authenticated request
  from a destination that is backing off shows it is back (restarted,
  reconnected): its backoff ends then rather than when the interval runs
  out, though never sooner than ``_EARLY_RETRY_FLOOR`` seconds after the
  attempt that failed, so a destination that reaches us while we cannot
  reach it costs at most one attempt a second. The stored retry state is
  left as it is: only a delivery clears it, and another failure grows it.
  Heard from, the queue also looks at the stored state again: if an admin
  cleared it (``reset_connection``), the backoff ends at once, floor or
  not, and the next failure starts a new run.
"""

from __future__ import annotations

import logging
import random
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence, Set
from dataclasses import dataclass, field
from typing import Final

import msgspec
import trio

from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.transport.client import FederationError, FederationResponseError
from ranvier.federation.units import (
    MAX_EDUS_PER_TRANSACTION,
    MAX_PDUS_PER_TRANSACTION,
    Edu,
    Transaction,
    parse_transaction_response,
)
from ranvier.storage.reads import UnsentDestinationRoom
from ranvier.storage.records import DestinationRetry, StoredEvent

from .backoff import BackoffPolicy, is_destination_failure
from .interfaces import DeliveryLog, EduOutbox, PduOutbox, SenderStore, TransactionClient

__all__ = ["DestinationQueue", "DestinationStatus", "QueueSettings", "QueuedPdu", "SenderTotals"]

_log = logging.getLogger(__name__)

_SEND_PATH: Final = "/_matrix/federation/v1/send/"
# Answers to /send are small; anything large is not one.
_MAX_ANSWER_BYTES: Final = 1024 * 1024
# Seconds after a failed attempt before a destination heard from is tried again.
_EARLY_RETRY_FLOOR: Final = 1.0

#: A destination taking transactions all the time has the time of its last
#: delivery written once per this many ms (an operator's figure, not worth a
#: write per transaction); at once when it comes back from a backoff.
_DELIVERY_NOTE_MS: Final = 60_000


@dataclass(frozen=True, slots=True)
class QueuedPdu:
    """A PDU waiting to be sent: its JSON exactly as stored, and where it is."""

    event_id: str
    room_id: str
    stream_ordering: int
    json: bytes


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What every destination queue of one sender shares."""

    origin: str
    client: TransactionClient
    store: SenderStore
    backoff: BackoffPolicy
    rng: random.Random
    #: Wall-clock milliseconds, for timestamps and the retry state kept.
    clock_ms: Callable[[], int]
    #: A transaction ID never used before by this server.
    next_transaction_id: Callable[[], str]
    max_pdus: int
    max_edus: int
    #: Seconds a queue with nothing to do waits before its task ends.
    idle_timeout: float
    #: Where EDUs that must arrive wait; None when there are none.
    outbox: EduOutbox | None = None
    #: Where PDUs catching up cannot send wait; None when this sender
    #: sends none (another process sends the PDUs).
    pdu_outbox: PduOutbox | None = None
    #: Where the time of a destination's last delivery is kept; None: nowhere.
    deliveries: DeliveryLog | None = None
    #: What every queue has done, added up across queues come and gone.
    totals: SenderTotals = field(default_factory=lambda: SenderTotals())
    #: Set once this server answers requests; nothing is sent before it is
    #: (see :class:`~ranvier.federation.sender.FederationSender`). None:
    #: sent at once.
    serving: trio.Event | None = None


@dataclass(slots=True)
class SenderTotals:
    """Counts of one sender's work since it started, for metrics: a queue
    ends when idle and takes its own counts with it, these stay.
    """

    transactions_sent: int = 0
    #: Attempts that failed and are tried again later (the destination backs off).
    transactions_failed: int = 0
    #: Transactions given up on: the destination would never take them.
    transactions_dropped: int = 0
    pdus_sent: int = 0
    edus_sent: int = 0
    catch_ups_started: int = 0


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """A snapshot of one destination's queue, for operators and tests."""

    destination: str
    queued_pdus: int
    queued_edus: int
    catching_up: bool
    #: The ID of the transaction in flight or waiting to be sent again.
    pending_transaction: str | None
    #: Trio time at which the destination may be tried again; None when it
    #: is not backing off.
    retry_at: float | None
    retry_interval_ms: int | None
    transactions_sent: int
    failed_attempts: int
    dropped_transactions: int
    dropped_edus: int


@dataclass(slots=True)
class _Pending:
    """A transaction built and not yet delivered, and what delivering it
    means for the rooms it carries."""

    transaction_id: str
    transaction: Transaction
    event_ids: tuple[str, ...]
    #: The sent position each room reaches once the destination has it.
    positions: dict[str, int]
    #: The outbox position up to which its EDUs came from; None for none.
    outbox_upto: int | None = None
    #: The PDU outbox position up to which its PDUs came from; None for none.
    pdu_outbox_upto: int | None = None


class DestinationQueue:
    """The queue of one destination; :meth:`run` is its task.

    :meth:`add_pdu`, :meth:`add_edu` and :meth:`start_catching_up` are
    synchronous and never wait: they are how the sender hands work over.
    :meth:`run` returns once the queue has had nothing to do for
    ``idle_timeout`` seconds; from the moment it decides to, the queue is
    :attr:`closed` and the sender starts a new one for new work.
    """

    def __init__(self, destination: str, settings: QueueSettings) -> None:
        self.destination = destination
        self._settings = settings
        self._pdus: deque[QueuedPdu] = deque()
        self._edus: deque[Edu] = deque()
        # Rooms whose newest stream ordering for the destination is not yet
        # in the database: one entry per room, however many events.
        self._unnoted: dict[str, int] = {}
        # PDUs handed over so far, and how many of them the database had
        # noted when the last write of positions finished.
        self._handed_over = 0
        self._noted = 0
        self._noted_more = trio.Event()
        self._catching_up = False
        # The outbox may hold EDUs after _outbox_after, the last position
        # taken into a transaction.
        self._outbox_waiting = False
        self._outbox_after = 0
        # Likewise for the PDU outbox.
        self._pdu_outbox_waiting = False
        self._pdu_outbox_after = 0
        self._pending: _Pending | None = None
        self._retry: DestinationRetry | None = None
        self._retry_at: float | None = None
        # Trio time of the last failed attempt, while backing off.
        self._failed_at: float | None = None
        # Heard from while backing off: the stored retry state may have been
        # cleared (an admin's reset), which ends the backoff at once.
        self._recheck_retry = False
        self._wake = trio.Event()
        self._wake_noter = trio.Event()
        self._closed = False
        self._transactions_sent = 0
        self._failed_attempts = 0
        self._dropped_transactions = 0
        self._dropped_edus = 0
        # Wall-clock ms of the delivery last written to ``deliveries``.
        self._delivery_noted_ms: int | None = None

    # Handing work over (synchronous).

    @property
    def closed(self) -> bool:
        """Whether the task has ended or is ending: hand nothing more over."""
        return self._closed

    @property
    def backing_off(self) -> bool:
        return self._retry_at is not None and trio.current_time() < self._retry_at

    def add_pdu(self, pdu: QueuedPdu) -> None:
        """Queue a PDU, or note its room for catching up if it cannot be kept."""
        noted = self._unnoted.get(pdu.room_id)
        if noted is None or pdu.stream_ordering > noted:
            self._unnoted[pdu.room_id] = pdu.stream_ordering
        self._handed_over += 1
        self._wake_noter.set()
        if self._catching_up:
            pass
        elif self.backing_off or len(self._pdus) >= self._settings.max_pdus:
            self.start_catching_up()
        else:
            self._pdus.append(pdu)
        self._wake.set()

    def add_edu(self, edu: Edu) -> None:
        """Queue an EDU; dropped if the destination is backing off, and the
        oldest queued one goes if the queue is full.
        """
        if self.backing_off:
            self._dropped_edus += 1
            return
        if len(self._edus) >= self._settings.max_edus:
            self._edus.popleft()
            self._dropped_edus += 1
        self._edus.append(edu)
        self._wake.set()

    def outbox_filled(self) -> None:
        """EDUs for the destination were written to the outbox: send them."""
        self._outbox_waiting = True
        self._wake.set()

    def pdu_outbox_filled(self) -> None:
        """PDUs for the destination were written to the PDU outbox: send them."""
        self._pdu_outbox_waiting = True
        self._wake.set()

    def start_catching_up(self) -> None:
        """Let go of the queued PDUs and send what the database says the
        destination missed instead.
        """
        if self._pdus:
            _log.info("%s: %d queued PDUs left to catching up", self.destination, len(self._pdus))
        self._pdus.clear()
        if not self._catching_up:
            self._settings.totals.catch_ups_started += 1
        self._catching_up = True
        self._wake.set()

    def heard_from(self) -> None:
        """The destination made an authenticated request of ours: if it is
        backing off, try it again now (or once the floor after its last
        failure has passed) instead of at the end of the interval.
        """
        if not self.backing_off:
            return
        assert self._retry_at is not None
        assert self._failed_at is not None
        self._recheck_retry = True
        soonest = max(trio.current_time(), self._failed_at + _EARLY_RETRY_FLOOR)
        if soonest < self._retry_at:
            _log.info("%s was heard from; trying it again", self.destination)
            self._retry_at = soonest
            self._wake.set()

    def status(self) -> DestinationStatus:
        backing_off = self.backing_off
        return DestinationStatus(
            destination=self.destination,
            queued_pdus=len(self._pdus),
            queued_edus=len(self._edus),
            catching_up=self._catching_up,
            pending_transaction=self._pending.transaction_id if self._pending else None,
            retry_at=self._retry_at if backing_off else None,
            retry_interval_ms=self._retry.retry_interval_ms if self._retry else None,
            transactions_sent=self._transactions_sent,
            failed_attempts=self._failed_attempts,
            dropped_transactions=self._dropped_transactions,
            dropped_edus=self._dropped_edus,
        )

    # The tasks.

    async def run(self) -> None:
        """Drain the queue until it has been idle for ``idle_timeout``.

        Positions are written by a task of their own, so that a destination
        that takes its time answering does not hold them in memory.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._note_rooms)
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            self._closed = True

    async def _drain(self) -> None:
        if self._settings.serving is not None:
            await self._settings.serving.wait()
        await self._load_retry()
        while True:
            # A fresh event before every look at the state: whatever is
            # handed over from here on wakes the waits below.
            self._wake = trio.Event()
            if self.backing_off and self._has_work():
                self._shed_for_backoff()
                assert self._retry_at is not None
                with trio.move_on_at(self._retry_at):
                    await self._wake.wait()
                if self._recheck_retry:
                    self._recheck_retry = False
                    await self._forget_cleared_retry()
                continue
            if self._pending is None and self._pdu_outbox_waiting:
                self._pending = await self._pdu_outbox_transaction()
            if self._pending is None:
                if self._catching_up:
                    self._pending = await self._catch_up_transaction()
                else:
                    self._pending = await self._queued_transaction()
            if self._pending is not None:
                await self._send(self._pending)
                continue
            if self._has_work():
                continue
            with trio.move_on_after(self._settings.idle_timeout):
                await self._wake.wait()
            if not self._has_work() and self._noted == self._handed_over:
                # Decided with no checkpoint since the last look, so nothing
                # was handed over in between.
                self._closed = True
                return

    def _has_work(self) -> bool:
        return bool(
            self._pending is not None
            or self._catching_up
            or self._pdus
            or self._edus
            or self._outbox_waiting
            or self._pdu_outbox_waiting
        )

    async def _load_retry(self) -> None:
        retry = await self._settings.store.get_destination_retry(self.destination)
        if retry is None:
            return
        self._retry = retry
        now_ms = self._settings.clock_ms()
        wait_ms = retry.retry_last_ts + retry.retry_interval_ms - now_ms
        self._retry_at = trio.current_time() + max(0, wait_ms) / 1000
        self._failed_at = trio.current_time() - max(0, now_ms - retry.retry_last_ts) / 1000

    async def _forget_cleared_retry(self) -> None:
        """End the backoff if its stored state is gone: only a delivery
        here or an admin's reset deletes it, and either says to send now."""
        if await self._settings.store.get_destination_retry(self.destination) is None:
            _log.info("%s: its backoff was cleared; trying it again", self.destination)
            self._retry = None
            self._retry_at = None
            self._failed_at = None

    def _shed_for_backoff(self) -> None:
        if self._pdus:
            self.start_catching_up()
        if self._edus:
            self._dropped_edus += len(self._edus)
            self._edus.clear()

    async def _note_rooms(self) -> None:
        """Write the positions handed over, as they come, for good."""
        while True:
            self._wake_noter = trio.Event()
            if not self._unnoted:
                await self._wake_noter.wait()
                continue
            positions, self._unnoted = self._unnoted, {}
            upto = self._handed_over
            await self._write_positions(positions)
            self._noted = upto
            self._noted_more.set()
            self._noted_more = trio.Event()
            # An idle queue only ends once everything is noted.
            self._wake.set()

    async def _write_positions(self, positions: dict[str, int]) -> None:
        await self._write_each_room(
            self._settings.store.store_destination_rooms, positions, "for catching up"
        )

    async def _write_each_room(
        self,
        write: Callable[[str, dict[str, int]], Awaitable[None]],
        positions: dict[str, int],
        what: str,
    ) -> None:
        """Write ``positions`` in one go, or a room at a time when that
        fails, so that a room storage does not know does not take the
        others down with it. A room purged since its events were handed
        over is expected, and has nothing left to send: it is logged as
        information, any other failure as an error."""
        try:
            await write(self.destination, positions)
            return
        except MatrixError:
            pass
        for room_id, position in positions.items():
            try:
                await write(self.destination, {room_id: position})
            except MatrixError as exc:
                level = logging.INFO if exc.errcode == "M_NOT_FOUND" else logging.ERROR
                _log.log(level, "%s: cannot note %s %s: %s", self.destination, room_id, what, exc)

    async def _all_noted(self) -> None:
        """Wait until what was handed over so far is in the database."""
        target = self._handed_over
        while self._noted < target:
            await self._noted_more.wait()

    # Building transactions.

    async def _take_edus(self) -> tuple[list[Edu], int | None]:
        """The EDUs of the next transaction: the outbox's first, and the
        outbox position they reach (None if none came from it).
        """
        edus: list[Edu] = []
        upto: int | None = None
        outbox = self._settings.outbox
        if self._outbox_waiting and outbox is not None:
            # Cleared before the read: an EDU written meanwhile sets it again.
            self._outbox_waiting = False
            stored = await outbox.outbox_edus(
                self.destination, self._outbox_after, MAX_EDUS_PER_TRANSACTION
            )
            if len(stored) == MAX_EDUS_PER_TRANSACTION:
                self._outbox_waiting = True
            for position, data in stored:
                upto = position
                try:
                    edus.append(msgspec.json.decode(data, type=Edu))
                except msgspec.DecodeError as exc:
                    _log.error(
                        "%s: outbox EDU %d is unreadable: %s", self.destination, position, exc
                    )
            if upto is not None:
                self._outbox_after = upto
        count = min(len(self._edus), MAX_EDUS_PER_TRANSACTION - len(edus))
        edus.extend(self._edus.popleft() for _ in range(count))
        return edus, upto

    async def _new_pending(
        self, pdus: Sequence[tuple[str, bytes]], positions: dict[str, int]
    ) -> _Pending | None:
        edus, outbox_upto = await self._take_edus()
        if not pdus and not edus:
            if outbox_upto is not None:
                await self._forget_outbox_upto(outbox_upto)
            return None
        transaction = Transaction(
            origin=self._settings.origin,
            origin_server_ts=self._settings.clock_ms(),
            pdus=tuple(msgspec.Raw(json) for _, json in pdus),
            edus=tuple(edus),
        )
        return _Pending(
            transaction_id=self._settings.next_transaction_id(),
            transaction=transaction,
            event_ids=tuple(event_id for event_id, _ in pdus),
            positions=positions,
            outbox_upto=outbox_upto,
        )

    async def _pdu_outbox_transaction(self) -> _Pending | None:
        """The next transaction of PDUs from the PDU outbox, or None once
        it holds none for the destination."""
        # Cleared before the read: PDUs written meanwhile set it again.
        self._pdu_outbox_waiting = False
        pdu_outbox = self._settings.pdu_outbox
        if pdu_outbox is None:
            return None
        stored = await pdu_outbox.outbox_pdus(
            self.destination, self._pdu_outbox_after, MAX_PDUS_PER_TRANSACTION
        )
        if not stored:
            return None
        if len(stored) == MAX_PDUS_PER_TRANSACTION:
            self._pdu_outbox_waiting = True
        upto = self._pdu_outbox_after = stored[-1][0]
        _log.info("%s: sending %d PDUs from the PDU outbox", self.destination, len(stored))
        pending = await self._new_pending([(event_id, json) for _, event_id, json in stored], {})
        assert pending is not None  # it has PDUs
        pending.pdu_outbox_upto = upto
        return pending

    async def _queued_transaction(self) -> _Pending | None:
        if not self._pdus and not self._edus and not self._outbox_waiting:
            return None
        count = min(len(self._pdus), MAX_PDUS_PER_TRANSACTION)
        pdus = [self._pdus.popleft() for _ in range(count)]
        positions: dict[str, int] = {}
        for pdu in pdus:
            if pdu.stream_ordering > positions.get(pdu.room_id, 0):
                positions[pdu.room_id] = pdu.stream_ordering
        return await self._new_pending([(pdu.event_id, pdu.json) for pdu in pdus], positions)

    async def _catch_up_transaction(self) -> _Pending | None:
        """The next catch-up transaction, or None once nothing is behind."""
        store = self._settings.store
        while True:
            noted_before = self._noted
            rooms = await store.get_unsent_destination_rooms(self.destination, 1)
            if not rooms:
                if noted_before == self._handed_over:
                    self._catching_up = False
                    _log.info("%s: caught up", self.destination)
                    return None
                # Rooms handed over but not in the database when it was
                # read may be behind: look again once they are.
                await self._all_noted()
                continue
            (room,) = rooms
            events = await self._catch_up_events(room)
            position = {room.room_id: room.stream_ordering}
            if events:
                _log.info(
                    "%s: catching up on %s with %d events",
                    self.destination,
                    room.room_id,
                    len(events),
                )
                return await self._new_pending(
                    [(event.event_id, event.json) for event in events], position
                )
            _log.warning(
                "%s: nothing of %s to catch up with is stored any more",
                self.destination,
                room.room_id,
            )
            await self._mark_sent(position)

    async def _catch_up_events(self, room: UnsentDestinationRoom) -> list[StoredEvent]:
        """The newest events of the room the destination has not had.

        Those are the room's forward extremities newer than what it had,
        every one of them: a fork it missed a side of is only joined up if it
        hears of both sides. If none is newer, or the room has partial state
        (whether the destination may see the extremities cannot be judged),
        the noted event alone.
        """
        if room.event_id is None:
            return []
        store = self._settings.store
        extremities: Set[str] = frozenset()
        if not await store.is_partial_state_room(room.room_id):
            extremities = await store.get_forward_extremities(room.room_id)
        stored = await store.get_events({room.event_id, *extremities})
        had = room.sent_stream_ordering or 0
        newer = sorted(
            (
                event
                for event_id, event in stored.items()
                if event_id in extremities and event.stream_ordering > had
            ),
            key=lambda event: event.stream_ordering,
        )
        if newer:
            return newer[-MAX_PDUS_PER_TRANSACTION:]
        noted = stored.get(room.event_id)
        return [noted] if noted is not None else []

    # Sending.

    async def _send(self, pending: _Pending) -> None:
        path = _SEND_PATH + urllib.parse.quote(pending.transaction_id, safe="")
        try:
            answer = await self._settings.client.put_json(
                self.destination,
                path,
                pending.transaction.as_json_object(),
                max_response_bytes=_MAX_ANSWER_BYTES,
            )
        except FederationResponseError as exc:
            _log.warning(
                "%s: transaction %s taken, but its answer is unusable: %s",
                self.destination,
                pending.transaction_id,
                exc,
            )
            answer = None
        except FederationError as exc:
            if is_destination_failure(exc):
                await self._back_off(pending, exc)
            else:
                await self._drop(pending, str(exc))
            return
        except BadJsonError as exc:
            await self._drop(pending, f"it cannot be encoded: {exc}")
            return
        await self._delivered(pending, answer)

    async def _delivered(self, pending: _Pending, answer: object) -> None:
        self._pending = None
        self._transactions_sent += 1
        totals = self._settings.totals
        totals.transactions_sent += 1
        totals.pdus_sent += len(pending.transaction.pdus)
        totals.edus_sent += len(pending.transaction.edus)
        if answer is not None:
            try:
                errors = parse_transaction_response(answer).errors
            except BadJsonError as exc:
                _log.warning("%s: %s", self.destination, exc)
            else:
                for event_id, error in errors.items():
                    _log.warning(
                        "%s refused %s from transaction %s: %s",
                        self.destination,
                        event_id,
                        pending.transaction_id,
                        error,
                    )
        came_back = self._retry is not None
        if came_back:
            _log.info("%s is back", self.destination)
            self._retry = None
            self._retry_at = None
            self._failed_at = None
            await self._settings.store.store_destination_retry(self.destination, None)
        await self._note_delivery(came_back=came_back)
        await self._mark_sent(pending.positions)
        await self._forget_outbox(pending)

    async def _note_delivery(self, *, came_back: bool) -> None:
        deliveries = self._settings.deliveries
        if deliveries is None:
            return
        now = self._settings.clock_ms()
        noted = self._delivery_noted_ms
        if not came_back and noted is not None and 0 <= now - noted < _DELIVERY_NOTE_MS:
            return
        self._delivery_noted_ms = now
        try:
            await deliveries.note_delivery(self.destination, now)
        except MatrixError as exc:
            _log.error("%s: cannot note the delivery: %s", self.destination, exc)

    async def _back_off(self, pending: _Pending, exc: FederationError) -> None:
        settings = self._settings
        self._failed_attempts += 1
        settings.totals.transactions_failed += 1
        self._retry = settings.backoff.after_failure(
            self.destination, self._retry, settings.clock_ms(), settings.rng
        )
        self._failed_at = trio.current_time()
        self._retry_at = self._failed_at + self._retry.retry_interval_ms / 1000
        _log.info(
            "%s: transaction %s failed (%s); trying again in %.1f s",
            self.destination,
            pending.transaction_id,
            exc,
            self._retry.retry_interval_ms / 1000,
        )
        await settings.store.store_destination_retry(self.destination, self._retry)

    async def _drop(self, pending: _Pending, reason: str) -> None:
        """Give up on a transaction the destination will never take.

        Its rooms count as sent, so that catching up does not offer the
        same events again and again; the destination still gets each
        room's later events, and can fetch these through them.
        """
        self._pending = None
        self._dropped_transactions += 1
        self._settings.totals.transactions_dropped += 1
        _log.warning(
            "%s: dropping transaction %s with %d PDUs (%s): %s",
            self.destination,
            pending.transaction_id,
            len(pending.event_ids),
            ", ".join(pending.event_ids) or "no PDUs",
            reason,
        )
        await self._mark_sent(pending.positions)
        await self._forget_outbox(pending)

    async def _forget_outbox(self, pending: _Pending) -> None:
        if pending.outbox_upto is not None:
            await self._forget_outbox_upto(pending.outbox_upto)
        pdu_outbox = self._settings.pdu_outbox
        if pending.pdu_outbox_upto is not None and pdu_outbox is not None:
            try:
                await pdu_outbox.delete_outbox_pdus(self.destination, pending.pdu_outbox_upto)
            except MatrixError as exc:
                # Sent again later; the destination keeps each event once.
                _log.error("%s: cannot forget the outbox PDUs sent: %s", self.destination, exc)

    async def _forget_outbox_upto(self, upto: int) -> None:
        outbox = self._settings.outbox
        if outbox is None:
            return
        try:
            await outbox.delete_outbox_edus(self.destination, upto)
        except MatrixError as exc:
            # Sent again after a restart; the destination takes each once.
            _log.error("%s: cannot forget the outbox EDUs sent: %s", self.destination, exc)

    async def _mark_sent(self, positions: dict[str, int]) -> None:
        if not positions:
            return
        await self._write_each_room(
            self._settings.store.mark_destination_rooms_sent, positions, "as sent"
        )
