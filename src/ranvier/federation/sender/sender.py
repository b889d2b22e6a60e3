"""The federation sender: PDUs and EDUs to other homeservers, a queue per
destination, each drained by a task of the sender's own nursery.

Callers hand work over with :meth:`FederationSender.send_pdu` and
:meth:`FederationSender.send_edu`, which never wait: the caller's event is
already stored, and delivering it is the sender's business from then on. A
destination's task starts when something is queued for it and ends once its
queue has been idle for ``idle_timeout`` seconds, so only destinations with
something to send, or something to retry, have a task.

At start-up, before it takes any work, the sender looks in the database for
destinations that missed events (the process stopped before they were
sent, or while the destination was down) and catches each of them up,
respecting any backoff in force. Looked for any later, it would also find
the rooms this run has just noted for destinations it is sending to, and
turn their queues to catching up for nothing. It also finds the
destinations with EDUs waiting in the outbox, or PDUs in the PDU outbox
(our users' leaves of rooms purged here), and sends them those.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
import trio

from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.federation.units import Edu
from ranvier.protocol.canonical import decode_canonical_json, encode_canonical_json
from ranvier.protocol.x_matrix import split_server_name

from .backoff import BackoffPolicy
from .interfaces import DeliveryLog, EduOutbox, PduOutbox, SenderStore, TransactionClient
from .queue import DestinationQueue, DestinationStatus, QueuedPdu, QueueSettings, SenderTotals

__all__ = ["FederationSender"]

_log = logging.getLogger(__name__)

# Destinations read per page when resuming catch-up at start-up.
_RESUME_PAGE: Final = 100


class FederationSender:
    """Sends PDUs and EDUs to other homeservers, as ``server_name``.

    Start it with ``await nursery.start(sender.run)``. ``client`` sends the
    signed requests and ``store`` keeps retry state and how far each
    destination has been sent each room (:class:`ranvier.storage.Storage`
    and :class:`~ranvier.federation.transport.client.FederationHttpClient`
    are the real ones).

    ``max_queued_pdus`` and ``max_queued_edus`` bound each destination's
    queue in memory; ``backoff`` sets how retry intervals grow;
    ``idle_timeout`` is how long a destination's task waits for more work
    before it ends. ``outbox`` holds the EDUs that must reach their
    destination (``m.direct_to_device``), written by whoever made them and
    announced with :meth:`outbox_filled`; ``pdu_outbox`` likewise holds the
    PDUs catching up cannot send (our users' leaves of a purged room),
    announced with :meth:`pdu_outbox_filled`. ``deliveries`` keeps when each
    destination last took a transaction, for operators. ``clock_ms`` (wall-clock
    milliseconds) and ``rng`` are there for tests.

    ``serving``, when given, holds every sending back until it is set: the
    server sets it once its listeners accept connections. A server that
    hears from us tries at once what it has for us, and one that finds
    nobody listening backs off, so sending at start-up, before we listen,
    would leave what others have for us waiting out their backoff.
    """

    def __init__(
        self,
        server_name: str,
        client: TransactionClient,
        store: SenderStore,
        *,
        max_queued_pdus: int = 1000,
        max_queued_edus: int = 1000,
        backoff: BackoffPolicy | None = None,
        idle_timeout: float = 60.0,
        outbox: EduOutbox | None = None,
        pdu_outbox: PduOutbox | None = None,
        deliveries: DeliveryLog | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
        serving: trio.Event | None = None,
    ) -> None:
        if max_queued_pdus < 1 or max_queued_edus < 1:
            raise ValueError("a destination queue must hold at least one PDU and one EDU")
        if idle_timeout < 0:
            raise ValueError(f"idle_timeout must not be negative, not {idle_timeout}")
        self.server_name = server_name
        # A receiver takes a transaction ID it has seen from us for a resend
        # and answers from memory, so an ID must never come back: the start
        # time and a random part keep them apart across restarts (and
        # across senders started within one millisecond), the counter
        # within one run.
        self._transaction_prefix = f"{clock_ms()}-{secrets.token_urlsafe(6)}"
        self._transaction_counter = itertools.count(1)
        self._settings = QueueSettings(
            origin=server_name,
            client=client,
            store=store,
            backoff=backoff if backoff is not None else BackoffPolicy(),
            rng=rng if rng is not None else random.Random(),
            clock_ms=clock_ms,
            next_transaction_id=self._next_transaction_id,
            max_pdus=max_queued_pdus,
            max_edus=max_queued_edus,
            idle_timeout=idle_timeout,
            outbox=outbox,
            pdu_outbox=pdu_outbox,
            deliveries=deliveries,
            serving=serving,
        )
        self._queues: dict[str, DestinationQueue] = {}
        self._run_entered = False
        # Set once the destinations left behind are found: work is taken
        # from then on.
        self._nursery: trio.Nursery | None = None

    def _next_transaction_id(self) -> str:
        return f"{self._transaction_prefix}-{next(self._transaction_counter)}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the destination queues until cancelled."""
        if self._run_entered:
            raise RuntimeError("the federation sender is already running")
        self._run_entered = True
        try:
            async with trio.open_nursery() as nursery:
                await self._resume_catching_up(nursery)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._run_entered = False
            self._nursery = None
            self._queues.clear()

    # Handing work over.

    def send_pdu(
        self,
        pdu: bytes | Mapping[str, Any],
        *,
        event_id: str,
        room_id: str,
        stream_ordering: int,
        destinations: Iterable[str],
    ) -> None:
        """Queue a stored event for each of ``destinations`` (our own name is
        skipped). ``pdu`` is its JSON as stored, or the event as a mapping;
        ``stream_ordering`` is where storage put it.

        Raises :class:`~ranvier.errors.BadJsonError` for a PDU that is not a
        canonical JSON object and ``M_INVALID_PARAM`` for a bad destination
        name, before queuing anything.
        """
        nursery = self._running()
        if isinstance(pdu, bytes | bytearray | memoryview):
            data = bytes(pdu)
            if not isinstance(decode_canonical_json(data), dict):
                raise BadJsonError(f"PDU {event_id} is not a JSON object")
        else:
            data = encode_canonical_json(dict(pdu))
        if isinstance(stream_ordering, bool) or not isinstance(stream_ordering, int):
            raise MatrixError(
                f"the stream ordering of {event_id} must be an integer",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        targets = self._destinations(destinations)
        queued = QueuedPdu(
            event_id=event_id, room_id=room_id, stream_ordering=stream_ordering, json=data
        )
        for destination in targets:
            self._queue(nursery, destination).add_pdu(queued)

    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> None:
        """Queue an EDU for ``destination``. EDUs are ephemeral: one for a
        destination that is backing off is dropped, as is the oldest one of a
        full queue.

        Raises :class:`~ranvier.errors.BadJsonError` for content that is not
        canonical JSON and ``M_INVALID_PARAM`` for a bad destination name.
        """
        nursery = self._running()
        # Encoding checks the content and decoding copies it, so later
        # changes by the caller do not reach the transaction.
        copied = msgspec.json.decode(encode_canonical_json(dict(content)))
        for target in self._destinations([destination]):
            self._queue(nursery, target).add_edu(Edu(edu_type=edu_type, content=copied))

    def outbox_filled(self, destination: str) -> None:
        """EDUs for ``destination`` were written to the outbox: send them, as
        soon as it is not backing off, and keep them until it takes them.
        """
        nursery = self._running()
        for target in self._destinations([destination]):
            self._queue(nursery, target).outbox_filled()

    def pdu_outbox_filled(self, destination: str) -> None:
        """PDUs for ``destination`` were written to the PDU outbox: send
        them, as soon as it is not backing off, and keep them until it
        takes them. Nothing is sent without a ``pdu_outbox``.
        """
        nursery = self._running()
        targets = self._destinations([destination])
        if self._settings.pdu_outbox is None:
            return
        for target in targets:
            self._queue(nursery, target).pdu_outbox_filled()

    def wake_destination(self, destination: str) -> None:
        """Catch ``destination`` up now, whether or not anything new is queued
        for it (it is known to be back, say), unless it is backing off.
        """
        nursery = self._running()
        for target in self._destinations([destination]):
            self._queue(nursery, target).start_catching_up()

    def heard_from(self, destination: str) -> None:
        """``destination`` made an authenticated request of ours, so it is
        up: if its queue is backing off, try it again now rather than when
        the backoff runs out. A destination with no queue has nothing
        waiting for it.
        """
        queue = self._queues.get(destination)
        if queue is not None and not queue.closed:
            queue.heard_from()

    # Looking on.

    def status(self, destination: str) -> DestinationStatus | None:
        """The state of ``destination``'s queue; None if it has no task now."""
        queue = self._queues.get(destination)
        return queue.status() if queue is not None else None

    @property
    def active_destinations(self) -> frozenset[str]:
        """The destinations that have a queue task now."""
        return frozenset(self._queues)

    @property
    def totals(self) -> SenderTotals:
        """What the sender's queues have done since it started."""
        return self._settings.totals

    @property
    def destinations_backing_off(self) -> int:
        """How many destinations with a queue now are backing off."""
        return sum(queue.backing_off for queue in self._queues.values())

    # Internals.

    def _running(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the federation sender is not running")
        return self._nursery

    def _destinations(self, destinations: Iterable[str]) -> list[str]:
        if isinstance(destinations, str):
            raise TypeError("destinations must be a collection of server names, not one string")
        chosen: dict[str, None] = {}
        for destination in destinations:
            try:
                split_server_name(destination)
            except (ValueError, TypeError):
                raise MatrixError(
                    f"{destination!r} is not a valid server name",
                    errcode="M_INVALID_PARAM",
                    http_status=400,
                ) from None
            if destination != self.server_name:
                chosen[destination] = None
        return list(chosen)

    def _queue(self, nursery: trio.Nursery, destination: str) -> DestinationQueue:
        queue = self._queues.get(destination)
        if queue is None or queue.closed:
            queue = DestinationQueue(destination, self._settings)
            self._queues[destination] = queue
            nursery.start_soon(self._run_queue, queue, name=f"federation sender: {destination}")
        return queue

    async def _run_queue(self, queue: DestinationQueue) -> None:
        try:
            await queue.run()
        finally:
            # A queue closes itself the moment it decides to end, and a
            # closed queue is replaced rather than handed work, so nothing
            # is handed to a queue whose task is gone.
            if self._queues.get(queue.destination) is queue:
                del self._queues[queue.destination]

    async def _resume_catching_up(self, nursery: trio.Nursery) -> None:
        await self._wake_each(
            nursery,
            self._settings.store.get_destinations_with_unsent_rooms,
            DestinationQueue.start_catching_up,
            "catching up %d destinations that missed events",
        )
        outbox = self._settings.outbox
        if outbox is not None:
            await self._wake_each(
                nursery,
                outbox.outbox_destinations,
                DestinationQueue.outbox_filled,
                "%d destinations have EDUs waiting in the outbox",
            )
        pdu_outbox = self._settings.pdu_outbox
        if pdu_outbox is not None:
            await self._wake_each(
                nursery,
                pdu_outbox.pdu_outbox_destinations,
                DestinationQueue.pdu_outbox_filled,
                "%d destinations have PDUs waiting in the PDU outbox",
            )

    async def _wake_each(
        self,
        nursery: trio.Nursery,
        pages: Callable[[str | None, int], Awaitable[Sequence[str]]],
        wake: Callable[[DestinationQueue], None],
        counted: str,
    ) -> None:
        """Wake the queue of every destination ``pages`` lists (a page at a
        time, after the last one seen), and log how many with ``counted``.
        """
        after: str | None = None
        woken = 0
        while page := await pages(after, _RESUME_PAGE):
            for destination in page:
                if destination != self.server_name:
                    wake(self._queue(nursery, destination))
                    woken += 1
            after = page[-1]
        if woken:
            _log.info(counted, woken)
