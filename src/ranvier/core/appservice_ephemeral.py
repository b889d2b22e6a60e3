"""Typing, receipts and presence for application services (MSC2409, the
spec's ``receive_ephemeral``).

A service whose registration sets ``receive_ephemeral`` (or the older
``de.sorunome.msc2409.push_ephemeral``) finds, in each transaction's
``ephemeral`` list, what a client's ``/sync`` would show its users:

* the ``m.typing`` event of each room that concerns it whose typing users
  changed, listing who types there now;
* one ``m.receipt`` event per room that concerns it, of the ``m.read``
  receipts set there since the last transaction;
* the ``m.presence`` events of its own users and of the users sharing a
  joined room with one of them, as they are now.

A room concerns a service when its ID is in the rooms namespace, one of
its local aliases in the aliases namespace, or one of the service's users
is joined to it. Room events and room ``m.typing`` and ``m.receipt``
events carry their ``room_id``.

Invariants
----------

* **Private receipts stay private.** ``m.read.private`` receipts are never
  sent to a service, whoever's they are.
* **Nothing is queued.** A service's place in each stream is a position
  (:class:`EphemeralPosition`); what is new is read when a transaction is
  made, at most :data:`MAX_PER_STREAM` entries of each stream at a time, so
  a service that is down costs positions, not memory. Typing and presence
  are read as they are now: a service that was away gets the present, not
  each change it missed.
* **Receipts survive a restart**, typing and presence do not: the sender
  stores the receipts position with the transaction that carries them
  (:mod:`ranvier.storage.appservices`); typing and presence, held in memory
  and renumbered at each start, start again from the newest position.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.storage.appservices import RoomInterest
from ranvier.storage.receipts import ReceiptRecord

from .appservices import AppService
from .presence import JoinedRooms, PresenceChange, PresenceChanges
from .typing import TypingChanges

__all__ = [
    "MAX_PER_STREAM",
    "AppServiceEphemeral",
    "EphemeralBatch",
    "EphemeralPosition",
    "EphemeralStore",
    "PresenceSource",
    "TypingSource",
]

#: Entries of one stream looked at for one transaction at most.
MAX_PER_STREAM: Final = 100

_READ: Final = "m.read"


class EphemeralStore(Protocol):
    """Storage's side: :class:`ranvier.storage.appservices.AppServiceStorage`."""

    async def receipts_after(self, after: int, *, limit: int) -> list[ReceiptRecord]: ...

    async def receipts_position(self) -> int: ...

    async def room_interest(
        self, room_ids: Collection[str], server_name: str, *, joined_only: bool = False
    ) -> dict[str, RoomInterest]: ...


class TypingSource(Protocol):
    """Who is typing (:class:`ranvier.core.typing.TypingNotices`)."""

    def changes_after(self, after: int | None) -> TypingChanges: ...

    async def position(self) -> int: ...


class PresenceSource(Protocol):
    """Users' presence (:class:`ranvier.core.presence.Presence`)."""

    def changes_after(self, after: int | None) -> PresenceChanges: ...

    async def position(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EphemeralPosition:
    """A service's place in the typing, receipts and presence streams."""

    typing: int
    receipts: int
    presence: int


@dataclass(frozen=True, slots=True)
class EphemeralBatch:
    """The ephemeral events for one transaction and the positions they
    were read through.
    """

    events: list[dict[str, Any]]
    through: EphemeralPosition
    #: Whether a stream had more than one batch: read again without waiting.
    more: bool


class AppServiceEphemeral:
    """Reads what is new for a service in the typing, receipts and presence
    streams.
    """

    def __init__(
        self,
        *,
        store: EphemeralStore,
        typing: TypingSource,
        presence: PresenceSource,
        rooms: JoinedRooms,
    ) -> None:
        self._store = store
        self._typing = typing
        self._presence = presence
        self._rooms = rooms

    async def start(self, receipts: int | None) -> EphemeralPosition:
        """Where a service starts: typing and presence now, receipts from
        ``receipts`` (the stored position) or now.
        """
        return EphemeralPosition(
            typing=await self._typing.position(),
            receipts=await self._store.receipts_position() if receipts is None else receipts,
            presence=await self._presence.position(),
        )

    async def receipts_position(self) -> int:
        return await self._store.receipts_position()

    async def collect(self, service: AppService, since: EphemeralPosition) -> EphemeralBatch:
        """What ``service`` is to be sent after ``since``."""
        interest = _Interest(service, self._store, self._rooms)
        typing, typing_at, typing_more = await self._typing_events(interest, since.typing)
        receipts, receipts_at, receipts_more = await self._receipt_events(interest, since.receipts)
        presence, presence_at, presence_more = await self._presence_events(interest, since.presence)
        return EphemeralBatch(
            [*typing, *receipts, *presence],
            EphemeralPosition(typing_at, receipts_at, presence_at),
            typing_more or receipts_more or presence_more,
        )

    async def _typing_events(
        self, interest: _Interest, since: int
    ) -> tuple[list[dict[str, Any]], int, bool]:
        changes = self._typing.changes_after(since)
        rooms = changes.rooms[:MAX_PER_STREAM]
        more = len(changes.rooms) > MAX_PER_STREAM
        through = rooms[-1].position if more else max(since, changes.position)
        wanted = await interest.rooms({room.room_id for room in rooms})
        events = [
            {
                "type": "m.typing",
                "room_id": room.room_id,
                "content": {"user_ids": list(room.user_ids)},
            }
            for room in rooms
            if room.room_id in wanted
        ]
        return events, through, more

    async def _receipt_events(
        self, interest: _Interest, since: int
    ) -> tuple[list[dict[str, Any]], int, bool]:
        records = await self._store.receipts_after(since, limit=MAX_PER_STREAM)
        if not records:
            return [], since, False
        wanted = await interest.rooms({record.room_id for record in records})
        by_room: dict[str, dict[str, Any]] = {}
        for record in records:
            if record.receipt_type != _READ or record.room_id not in wanted:
                continue
            data: dict[str, Any] = {"ts": record.ts}
            if record.thread_id:
                data["thread_id"] = record.thread_id
            content = by_room.setdefault(record.room_id, {})
            by_user = content.setdefault(record.event_id, {}).setdefault(_READ, {})
            shown = by_user.get(record.user_id)
            if record.thread_id and shown is not None and "thread_id" not in shown:
                # One user's receipts on one event show as one, the
                # unthreaded one first, as in a sync.
                continue
            by_user[record.user_id] = data
        events = [
            {"type": "m.receipt", "room_id": room_id, "content": content}
            for room_id, content in by_room.items()
        ]
        return events, records[-1].stream_id, len(records) == MAX_PER_STREAM

    async def _presence_events(
        self, interest: _Interest, since: int
    ) -> tuple[list[dict[str, Any]], int, bool]:
        changes = self._presence.changes_after(since)
        users = changes.users[:MAX_PER_STREAM]
        more = len(changes.users) > MAX_PER_STREAM
        through = users[-1].position if more else max(since, changes.position)
        events = [
            {"type": "m.presence", "sender": change.user_id, "content": _presence_content(change)}
            for change in users
            if await interest.presence_of(change.user_id)
        ]
        return events, through, more


def _presence_content(change: PresenceChange) -> dict[str, Any]:
    content: dict[str, Any] = {"presence": change.presence}
    if change.status_msg is not None:
        content["status_msg"] = change.status_msg
    if change.last_active_ago is not None:
        content["last_active_ago"] = change.last_active_ago
    content["currently_active"] = change.currently_active
    return content


class _Interest:
    """What concerns one service, looked up once per transaction."""

    def __init__(self, service: AppService, store: EphemeralStore, rooms: JoinedRooms) -> None:
        self._service = service
        self._store = store
        self._joined_rooms = rooms
        self._found: dict[str, RoomInterest] = {}

    async def _look_up(self, room_ids: Collection[str]) -> None:
        missing = [room_id for room_id in room_ids if room_id not in self._found]
        if missing:
            self._found.update(
                await self._store.room_interest(
                    missing, self._service.server_name, joined_only=True
                )
            )

    async def rooms(self, room_ids: Collection[str]) -> set[str]:
        """Those of ``room_ids`` that concern the service."""
        service = self._service
        wanted = {room_id for room_id in room_ids if service.is_interested_in_room_id(room_id)}
        others = [room_id for room_id in room_ids if room_id not in wanted]
        await self._look_up(others)
        for room_id in others:
            found = self._found.get(room_id, RoomInterest((), ()))
            if service.is_interested_in_room(room_id, members=found.members, aliases=found.aliases):
                wanted.add(room_id)
        return wanted

    async def presence_of(self, user_id: str) -> bool:
        """Whether ``user_id`` is the service's or shares a joined room with
        one of its users: what a sync of those users would show.
        """
        if self._service.owns_user(user_id):
            return True
        rooms = list(await self._joined_rooms.joined_rooms(user_id))
        await self._look_up(rooms)
        return any(
            self._service.owns_user(member)
            for room_id in rooms
            for member in self._found.get(room_id, RoomInterest((), ())).members
        )
