"""Pushing events to application services: the Application Service API's
``PUT /_matrix/app/v1/transactions/{txnId}``.

The sender follows the event stream, as the push sender does: it reads the
accepted events written after each service's position, in order, whoever
wrote them (local clients, federation, workers), and sends each service
the events that concern it, in transactions of at most
:data:`MAX_EVENTS` events in the client format.

An event concerns a service when its sender, or the member an
``m.room.member`` event is about, is one of the service's users (its
sender or a local user of its users namespace), or when its room does:
the room's ID is in the rooms namespace, one of its local aliases in the
aliases namespace, or one of the service's users is joined or invited.

A service that asks for ephemeral events (``receive_ephemeral``) also gets,
in each transaction's ``ephemeral`` list (and under the older
``de.sorunome.msc2409.ephemeral`` key), the typing, receipts and presence
that concern it (:mod:`ranvier.core.appservice_ephemeral`); a transaction
may carry those alone. Its task then also wakes for those streams. One
that also does encryption (``org.matrix.msc3202``) gets the to-device
messages of its users' devices in ``to_device``
(:mod:`ranvier.core.appservice_to_device`), read and kept the way receipts
are.

Invariants
----------

* **One service never holds back another.** Each service has a task of
  its own that reads the stream at its own pace; what it has in hand is
  at most one transaction. A service that is down falls behind alone.
* **A transaction is sent until it is answered, unchanged.** It is stored
  with its ID and body before the first attempt, in the same write that
  moves the service's position past its events
  (:mod:`ranvier.storage.appservices`), and sent again, the same bytes
  under the same ID, after a backoff that doubles up to ``max_backoff``
  seconds, until the service answers 2xx; only then is it forgotten and
  the next one made. After a restart the stored transaction is sent first,
  and the stream resumes after its events: nothing answered is sent again,
  nothing is skipped. The receipts and to-device positions move with the
  transaction that carries them, so no receipt or to-device message is
  lost or repeated either; typing and presence,
  held in memory, start again from the newest after a restart.
* **A service first seen starts from the newest event**; a service without
  a URL is sent nothing.
* **Every service's sender exists.** Its account is made at start if
  missing, before the tasks run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.storage.appservices import AppServicePosition, PendingTransaction, RoomInterest
from ranvier.storage.records import ReplacedState, StoredEvent

from .appservice_ephemeral import AppServiceEphemeral
from .appservice_to_device import AppServiceToDevice
from .appservices import AppService, AppServiceClient, AppServices, AppServiceUnavailableError
from .client_events import client_event
from .notifier import StreamNotifier, StreamPosition
from .replaced_state import replaced_unsigned, with_replaced

__all__ = ["MAX_EVENTS", "AppServiceSender", "AppServiceSenderStore", "SenderAccounts"]

_log: Final = logging.getLogger(__name__)

#: Events in one transaction at most.
MAX_EVENTS: Final = 100
#: Events read from the stream at a time.
_BATCH: Final = 200
#: Seconds between writes of a position passed without sending anything.
_RECORD_EVERY: Final = 5.0
#: Where services written before MSC2409 was accepted look for ephemeral events.
_LEGACY_EPHEMERAL: Final = "de.sorunome.msc2409.ephemeral"
#: Where services read to-device messages before MSC4203 is accepted.
_LEGACY_TO_DEVICE: Final = "de.sorunome.msc2409.to_device"


class AppServiceSenderStore(Protocol):
    """Storage's side: :class:`ranvier.storage.appservices.AppServiceStorage`."""

    async def start_position(
        self,
        service_id: str,
        stream_ordering: int,
        *,
        receipts: int | None = None,
        to_device: int | None = None,
    ) -> None: ...

    async def set_position(
        self,
        service_id: str,
        stream_ordering: int,
        *,
        receipts: int | None = None,
        to_device: int | None = None,
    ) -> None: ...

    async def add_transaction(
        self,
        service_id: str,
        txn_id: int,
        *,
        through: int,
        body: bytes,
        receipts: int | None = None,
        to_device: int | None = None,
        taken: Sequence[int] = (),
    ) -> None: ...

    async def complete_transaction(self, service_id: str, txn_id: int) -> None: ...

    async def position(self, service_id: str) -> AppServicePosition | None: ...

    async def pending_transaction(self, service_id: str) -> PendingTransaction | None: ...

    async def events_after(self, after: int, *, limit: int) -> list[StoredEvent]: ...

    async def newest_stream_ordering(self) -> int: ...

    async def get_replaced_state(
        self, event_ids: Collection[str]
    ) -> Mapping[str, ReplacedState]: ...

    async def room_interest(
        self, room_ids: Collection[str], server_name: str
    ) -> dict[str, RoomInterest]: ...


class SenderAccounts(Protocol):
    """Makes services' senders (:class:`ranvier.core.accounts.Accounts`)."""

    async def user_exists(self, user_id: str) -> bool: ...

    async def register(
        self, localpart: str | None, password: str | None, *, login: bool = True
    ) -> object: ...


class AppServiceSender:
    """Follows the event stream for every service with a URL; run it with
    ``await nursery.start(sender.run)``.
    """

    def __init__(
        self,
        store: AppServiceSenderStore,
        notifier: StreamNotifier,
        services: AppServices,
        client: AppServiceClient,
        accounts: SenderAccounts,
        *,
        first_backoff: float = 1.0,
        max_backoff: float = 300.0,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._services = services
        self._client = client
        self._accounts = accounts
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        #: Each service's position in the stream; for tests and status.
        self.positions: dict[str, int] = {}
        #: Typing, receipts and presence for the services that ask for
        #: them; without it they are sent none.
        self.ephemeral: AppServiceEphemeral | None = None
        #: To-device messages for the services that ask for them; without
        #: it they are sent none.
        self.to_device: AppServiceToDevice | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for service in self._services:
            await self._ensure_sender(service)
        following = [service for service in self._services if service.url is not None]
        if following:
            newest = await self._store.newest_stream_ordering()
            receipts = None if self.ephemeral is None else await self.ephemeral.receipts_position()
            to_device = None if self.to_device is None else await self.to_device.position()
            for service in following:
                await self._store.start_position(
                    service.id,
                    newest,
                    receipts=receipts if service.receives_ephemeral else None,
                    to_device=to_device if service.receives_to_device else None,
                )
        async with trio.open_nursery() as nursery:
            for service in following:
                position = await self._store.position(service.id)
                assert position is not None  # started above
                nursery.start_soon(self._follow, service, position, name=f"appservice {service.id}")
            task_status.started()
            await trio.sleep_forever()

    async def _ensure_sender(self, service: AppService) -> None:
        if await self._accounts.user_exists(service.sender):
            return
        localpart = service.sender[1:].partition(":")[0]
        try:
            await self._accounts.register(localpart, None, login=False)
        except Exception as exc:
            # Made meanwhile by another process: what was wanted.
            if not await self._accounts.user_exists(service.sender):
                raise RuntimeError(
                    f"cannot make {service.sender}, application service {service.id}'s sender"
                ) from exc
        _log.info("made %s, the sender of application service %s", service.sender, service.id)

    async def _follow(self, service: AppService, start: AppServicePosition) -> None:
        position, next_id = start.stream_ordering, start.next_txn_id
        self.positions[service.id] = position
        recorded, recorded_at = position, -math.inf
        ephemeral = self.ephemeral if service.receives_ephemeral else None
        since = None if ephemeral is None else await ephemeral.start(start.receipts)
        receipts_recorded = None if since is None else since.receipts
        to_device = self.to_device if service.receives_to_device else None
        to_device_since = None
        if to_device is not None:
            to_device_since = (
                await to_device.position() if start.to_device is None else start.to_device
            )
        to_device_recorded = to_device_since
        while True:
            pending = await self._store.pending_transaction(service.id)
            if pending is not None:
                await self._deliver(service, pending)
                await self._store.complete_transaction(service.id, pending.txn_id)
                next_id = max(next_id, pending.txn_id + 1)
                continue
            # Everything up to ``seen`` was committed before these reads.
            seen = self._notifier.position
            events = await self._store.events_after(position, limit=_BATCH)
            batch = None
            if ephemeral is not None and since is not None:
                batch = await ephemeral.collect(service, since)
            messages = None
            if to_device is not None and to_device_since is not None:
                messages = await to_device.collect(service, to_device_since)
            if (
                not events
                and (batch is None or not (batch.events or batch.more))
                and (messages is None or not (messages.messages or messages.more))
            ):
                position = max(position, seen.events)
                self.positions[service.id] = position
                if batch is not None:
                    since = batch.through
                if messages is not None:
                    to_device_since = messages.through
                await self._wait_beyond(
                    position,
                    seen if batch is not None else None,
                    seen if messages is not None else None,
                )
                continue
            chosen, through = await self._choose(service, events) if events else ([], position)
            shown = [] if batch is None else batch.events
            receipts = None if batch is None else batch.through.receipts
            sent = [] if messages is None else messages.messages
            to_device_at = None if messages is None else messages.through
            if chosen or shown or sent:
                # State events say what they replaced, as clients are told
                # (a bridge tells a rename from a join by prev_content).
                replaced = await replaced_unsigned(self._store, chosen)
                body: dict[str, Any] = {
                    "events": [
                        client_event(e, unsigned=with_replaced(replaced, e.event_id, None))
                        for e in chosen
                    ]
                }
                if shown:
                    body["ephemeral"] = body[_LEGACY_EPHEMERAL] = shown
                if sent:
                    body["to_device"] = body[_LEGACY_TO_DEVICE] = sent
                await self._store.add_transaction(
                    service.id,
                    next_id,
                    through=through,
                    body=msgspec.json.encode(body),
                    receipts=receipts,
                    to_device=to_device_at,
                    taken=() if messages is None else messages.taken,
                )
                next_id += 1
                recorded, recorded_at = through, trio.current_time()
                receipts_recorded = receipts
                to_device_recorded = to_device_at
            elif trio.current_time() >= recorded_at + _RECORD_EVERY and (
                through > recorded
                or receipts != receipts_recorded
                or to_device_at != to_device_recorded
            ):
                # Events, receipts and to-device messages with nothing for
                # the service cost nothing to judge again after a restart:
                # their positions need not each be a write.
                await self._store.set_position(
                    service.id, through, receipts=receipts, to_device=to_device_at
                )
                recorded, recorded_at = through, trio.current_time()
                receipts_recorded = receipts
                to_device_recorded = to_device_at
            if batch is not None:
                since = batch.through
            if messages is not None:
                to_device_since = messages.through
            position = through
            self.positions[service.id] = position

    async def _wait_beyond(
        self, position: int, seen: StreamPosition | None, seen_to_device: StreamPosition | None
    ) -> None:
        """Wait for an event after ``position`` or, when ``seen`` is given,
        for a receipt, typing or presence change after it, or, when
        ``seen_to_device`` is, for a to-device message after it.
        """

        def moved() -> bool:
            now = self._notifier.position
            if now.events > position:
                return True
            if seen_to_device is not None and now.to_device > seen_to_device.to_device:
                return True
            return seen is not None and (
                now.receipts > seen.receipts
                or now.typing > seen.typing
                or now.presence > seen.presence
            )

        while not moved():
            await self._notifier.wait_beyond(self._notifier.position)

    async def _choose(
        self, service: AppService, events: Sequence[StoredEvent]
    ) -> tuple[list[StoredEvent], int]:
        """The events of ``events`` for ``service`` (at most :data:`MAX_EVENTS`),
        and the stream position they were chosen through.
        """
        rooms = {
            event.room_id for event in events if not service.is_interested_in_room_id(event.room_id)
        }
        interest = await self._store.room_interest(rooms, service.server_name) if rooms else {}
        concerned: dict[str, bool] = {}
        chosen: list[StoredEvent] = []
        for event in events:
            room_concerns = concerned.get(event.room_id)
            if room_concerns is None:
                found = interest.get(event.room_id, RoomInterest((), ()))
                room_concerns = concerned[event.room_id] = service.is_interested_in_room(
                    event.room_id, members=found.members, aliases=found.aliases
                )
            if room_concerns or service.is_interested_in_event(
                {"type": event.type, "sender": event.sender, "state_key": event.state_key}
            ):
                chosen.append(event)
                if len(chosen) == MAX_EVENTS:
                    return chosen, event.stream_ordering
        return chosen, events[-1].stream_ordering

    async def _deliver(self, service: AppService, transaction: PendingTransaction) -> None:
        backoff = self._first_backoff
        while True:
            try:
                await self._client.send_transaction(
                    service, str(transaction.txn_id), transaction.body
                )
            except AppServiceUnavailableError as exc:
                _log.info(
                    "transaction %d to application service %s failed (%s); again in %.0f s",
                    transaction.txn_id,
                    service.id,
                    exc,
                    backoff,
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            return
