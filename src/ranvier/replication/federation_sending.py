"""Outgoing federation in a worker of its own (``--role federation_sender``).

With ``[worker] federation_sender = true``, the processes that write events
(the main process and the reader workers) do not deliver them: each event
for other servers is only noted in ``destination_rooms``, the durable
queue the federation sender already keeps (see
:mod:`ranvier.federation.sender.queue`), by a :class:`QueueingPduSink`. The
federation_sender worker runs the one
:class:`~ranvier.federation.sender.FederationSender`, and a
:class:`DestinationWaker` that, after each advance of the replication
stream, looks up the destinations the database shows behind and has the
sender catch them up: the same backoff (kept in the database), the same
catch-up, the same transaction IDs kept across retries.

Invariants
----------

* **Noted, or not handed over.** ``send_pdu`` never waits; the noting task
  writes every position it was handed, and the next write carries what
  arrived meanwhile. An event is delivered when its row is seen, whichever
  process wrote it.
* **PDUs leave from one process.** The other processes still run a
  federation sender for EDUs, over an :class:`EduOnlySenderStore` that
  shows no destination behind, so neither at start-up nor after a backoff
  does it catch a destination up with PDUs.
* **Woken by the stream, found in the database.** The waker reads the
  destinations behind after each advance it sees, so a stream answer it
  missed (a restart of the main process or of the worker) is made up by the
  next one, and by the sender's own catch-up at start.
* **Leaves of purged rooms too.** The PDUs a purge kept for destinations
  (:mod:`ranvier.storage.pdu_outbox`) are looked up with the destinations
  behind and sent from here alone: the other processes' senders have no
  PDU outbox.
* **Heard from wherever it was heard.** A server backing off that signs a
  request at the main process or at a federation_reader is passed on to
  the main process and down its stream to this worker
  (:mod:`ranvier.replication.heard_from`), and this worker's sender tries
  it again as if it had authenticated the request itself. Only servers the
  ``destinations`` table shows backing off are passed on, at most one round
  a second per process, so a busy peer costs no stream traffic; a lost
  message leaves the server to its normal backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
from typing import Any, Final

import trio

from ranvier.core.notifier import StreamNotifier
from ranvier.federation.sender import FederationSender
from ranvier.storage import Storage
from ranvier.storage.reads import UnsentDestinationRoom
from ranvier.storage.records import DestinationRetry, StoredEvent

from .stream import wait_either

__all__ = ["DestinationWaker", "EduOnlySenderStore", "QueueingPduSink"]

_log: Final = logging.getLogger(__name__)
_PAGE: Final = 100
_BACKLOG: Final = 10_000


class QueueingPduSink:
    """Takes events for other servers and only notes them in
    ``destination_rooms`` (the federation_sender worker delivers them).

    Start it with ``await nursery.start(sink.run)``.
    """

    def __init__(self, storage: Storage, *, server_name: str) -> None:
        self._storage = storage
        self.server_name = server_name
        self._send, self._receive = trio.open_memory_channel[tuple[str, str, int]](_BACKLOG)
        #: Positions written so far, for tests and metrics.
        self.noted = 0
        #: Told after each write (the main process's stream source).
        self.on_noted: Callable[[], None] | None = None

    def send_pdu(
        self,
        pdu: bytes | Mapping[str, Any],
        *,
        event_id: str,
        room_id: str,
        stream_ordering: int,
        destinations: Iterable[str],
    ) -> None:
        for destination in destinations:
            if destination == self.server_name:
                continue
            try:
                self._send.send_nowait((destination, room_id, stream_ordering))
            except trio.WouldBlock:
                # The write of what is waiting is slow; the sender's catch-up
                # at its next start finds the room through a later event.
                _log.warning("dropped %s for %s: too many events waiting", event_id, destination)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            waiting = [first]
            while True:
                try:
                    waiting.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            by_destination: dict[str, dict[str, int]] = {}
            for destination, room_id, ordering in waiting:
                rooms = by_destination.setdefault(destination, {})
                rooms[room_id] = max(ordering, rooms.get(room_id, 0))
            for destination, positions in by_destination.items():
                await self._storage.store_destination_rooms(destination, positions)
                self.noted += len(positions)
            if self.on_noted is not None:
                self.on_noted()


class DestinationWaker:
    """On the federation_sender worker: after each advance of ``notifier``,
    has ``sender`` catch up every destination the database shows behind.
    """

    def __init__(
        self, sender: FederationSender, storage: Storage, notifier: StreamNotifier
    ) -> None:
        self._sender = sender
        self._storage = storage
        self._notifier = notifier
        #: Destinations woken so far, for tests and metrics.
        self.woken = 0
        self._poked = trio.Event()

    def poke(self) -> None:
        """Events may have been noted for other servers: look again."""
        self._poked.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            position = self._notifier.position
            self._poked = poked = trio.Event()
            await self._wake_behind()
            await wait_either(self._notifier.wait_beyond(position), poked.wait())

    async def _wake_behind(self) -> None:
        after: str | None = None
        while page := await self._storage.get_destinations_with_unsent_rooms(after, _PAGE):
            for destination in page:
                if destination == self._sender.server_name:
                    continue
                status = self._sender.status(destination)
                if status is not None and status.catching_up:
                    continue
                self._sender.wake_destination(destination)
                self.woken += 1
            after = page[-1]
        # Our users' leaves of rooms purged by another process.
        after = None
        while page := await self._storage.pdu_outbox.pdu_outbox_destinations(after, _PAGE):
            for destination in page:
                if destination != self._sender.server_name:
                    self._sender.pdu_outbox_filled(destination)
            after = page[-1]


class EduOnlySenderStore:
    """The store of a federation sender that sends EDUs only: ``storage``,
    except that it shows no destination behind, so the sender never catches
    one up with PDUs (the federation_sender worker does that).
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def get_destination_retry(self, destination: str) -> DestinationRetry | None:
        return await self._storage.get_destination_retry(destination)

    async def store_destination_retry(
        self, destination: str, retry: DestinationRetry | None
    ) -> None:
        await self._storage.store_destination_retry(destination, retry)

    async def store_destination_rooms(self, destination: str, positions: Mapping[str, int]) -> None:
        await self._storage.store_destination_rooms(destination, positions)

    async def mark_destination_rooms_sent(
        self, destination: str, positions: Mapping[str, int]
    ) -> None:
        await self._storage.mark_destination_rooms_sent(destination, positions)

    async def get_unsent_destination_rooms(
        self, destination: str, limit: int = 100
    ) -> Sequence[UnsentDestinationRoom]:
        await trio.lowlevel.checkpoint()
        return []

    async def get_destinations_with_unsent_rooms(
        self, after: str | None = None, limit: int = 100
    ) -> Sequence[str]:
        await trio.lowlevel.checkpoint()
        return []

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        return await self._storage.get_forward_extremities(room_id)

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        return await self._storage.get_events(event_ids)

    async def is_partial_state_room(self, room_id: str) -> bool:
        return await self._storage.is_partial_state_room(room_id)
