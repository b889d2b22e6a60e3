"""Receipts and read markers: how far each user has read in each room.

* ``POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`` sets a user's
  ``m.read`` or ``m.read.private`` receipt (per thread when ``thread_id``
  is given), or with ``m.fully_read`` their fully read marker.
* ``POST /rooms/{roomId}/read_markers`` sets any of the three at once.

Receipts are kept in storage (:mod:`ranvier.storage.receipts`), and each
new one is a position of the receipts stream, the fourth stream a sync
token carries: ``/sync`` lists the receipts of a joined room changed since
the token as one ``m.receipt`` event in the room's ``ephemeral`` section,
and a new receipt wakes the long-polls of the room's members through the
:class:`~ranvier.core.notifier.StreamNotifier`. The fully read marker is
room account data (``m.fully_read``), which clients may not set directly.

Invariants
----------

* **Private stays private.** An ``m.read.private`` receipt is shown to its
  owner only, wakes only their long-polls, and never leaves the server.
* **Members only.** Only a user joined to a room sets receipts in it, and
  only on an event of that room this server holds (404 otherwise).
* **Federation.** A local user's ``m.read`` receipt goes to every other
  server joined in the room as an ``m.receipt`` EDU. One received from
  another server is taken only for users of that server, in rooms it is
  joined to as this server sees them; other entries are dropped alone.
  A room purged after those checks stores none of them: a local user is
  answered as not in the room, another server's receipt is dropped.
* **Markers do not move back.** A receipt or marker naming an event written
  here before the one it replaces is ignored (storage's rule for receipts,
  the same rule here for the fully read marker).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError, RoomGoneError
from ranvier.storage.receipts import ReceiptRecord
from ranvier.storage.records import StoredEvent

from .activity import ActivityListener
from .builder import Clock, wall_clock_ms
from .client_events import event_content, thread_root
from .notifier import StreamNotifier

__all__ = [
    "RECEIPT_TYPES",
    "EduSink",
    "EventLookup",
    "FullyReadStore",
    "Membership",
    "ReceiptStore",
    "Receipts",
    "RemoteReceipt",
    "ServersInRoom",
]

_log: Final = logging.getLogger(__name__)

READ: Final = "m.read"
READ_PRIVATE: Final = "m.read.private"
FULLY_READ: Final = "m.fully_read"
#: The receipt types a client may post.
RECEIPT_TYPES: Final = frozenset({READ, READ_PRIVATE, FULLY_READ})
#: The thread ID of the main timeline in threaded receipts.
MAIN_THREAD: Final = "main"
_MAX_ID_LENGTH: Final = 255


class ReceiptStore(Protocol):
    """Receipts in storage (:class:`ranvier.storage.receipts.ReceiptStorage`)."""

    async def put_receipt(
        self,
        *,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        ts: int,
    ) -> int | None: ...

    async def receipts_position(self) -> int: ...

    async def receipt_changes(
        self, room_ids: Collection[str], after: int, upto: int
    ) -> list[ReceiptRecord]: ...


class FullyReadStore(Protocol):
    """Room account data, where the fully read marker lives
    (:class:`ranvier.storage.client_data.ClientDataStorage`).
    """

    async def put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes
    ) -> int: ...

    async def get_account_data(
        self, user_id: str, room_id: str, data_type: str
    ) -> bytes | None: ...


class Membership(Protocol):
    """A user's membership in a room's current state
    (:class:`ranvier.core.rooms.RoomReader`).
    """

    async def membership(self, user_id: str, room_id: str) -> str | None: ...


class EventLookup(Protocol):
    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]: ...


class ServersInRoom(Protocol):
    """The servers joined in a room (:class:`ranvier.core.room_servers.RoomServers`)."""

    async def joined_servers(self, room_id: str) -> frozenset[str]: ...


class EduSink(Protocol):
    """Takes an EDU for another server without waiting
    (:class:`ranvier.federation.sender.FederationSender`).
    """

    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class RemoteReceipt:
    """One entry of an ``m.receipt`` EDU: a user's ``m.read`` receipt."""

    room_id: str
    user_id: str
    event_id: str
    ts: int
    thread_id: str | None = None


def server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _not_in_room(user_id: str, room_id: str) -> MatrixError:
    return MatrixError(
        f"{user_id} is not in room {room_id}", errcode="M_FORBIDDEN", http_status=403
    )


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _bad_json(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_JSON", http_status=400)


class Receipts:
    """Sets, stores, sends and lists receipts and fully read markers.

    ``store`` keeps receipts, ``account_data`` the fully read markers;
    ``rooms`` tells memberships, ``events`` finds the events receipts name;
    ``servers`` and ``edus`` reach the other servers in a room; the
    ``notifier`` wakes long-polls. ``clock`` stamps receipts (milliseconds).
    ``activity`` hears of each receipt and marker a member sets.
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: ReceiptStore,
        account_data: FullyReadStore,
        rooms: Membership,
        events: EventLookup,
        servers: ServersInRoom,
        edus: EduSink,
        notifier: StreamNotifier | None = None,
        clock: Clock = wall_clock_ms,
        activity: ActivityListener | None = None,
    ) -> None:
        self.server_name = server_name
        self._store = store
        self._activity = activity
        self._account_data = account_data
        self._rooms = rooms
        self._events = events
        self._servers = servers
        self._edus = edus
        self._notifier = notifier
        self._clock = clock

    # --- From local clients -------------------------------------------------------

    async def post_receipt(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        body: Mapping[str, Any],
    ) -> None:
        """``POST /receipt/{receiptType}/{eventId}`` for ``user_id``."""
        if receipt_type not in RECEIPT_TYPES:
            raise _invalid(
                f"the receipt type must be one of {', '.join(sorted(RECEIPT_TYPES))},"
                f" not {receipt_type[:60]!r}"
            )
        _check_ids(room_id, event_id)
        thread_id: str | None = None
        if "thread_id" in body:
            value = body["thread_id"]
            if not isinstance(value, str) or not value or len(value) > _MAX_ID_LENGTH:
                raise _invalid("thread_id must be a non-empty string of at most 255 characters")
            if receipt_type == FULLY_READ:
                raise _invalid(f"thread_id cannot be given with {FULLY_READ}")
            if value != MAIN_THREAD and not value.startswith("$"):
                raise _invalid(f"thread_id must be {MAIN_THREAD!r} or an event ID")
            thread_id = value
        await self._check_joined(user_id, room_id)
        event = await self._room_event(room_id, event_id)
        if thread_id is not None:
            _check_thread(event, thread_id)
        if receipt_type == FULLY_READ:
            await self._set_fully_read(user_id, room_id, event)
        else:
            await self._set_receipt(user_id, room_id, receipt_type, event_id, thread_id)

    async def set_read_markers(self, user_id: str, room_id: str, body: Mapping[str, Any]) -> None:
        """``POST /rooms/{roomId}/read_markers`` for ``user_id``: any of the
        fully read marker, the ``m.read`` and the ``m.read.private`` receipt.
        """
        if not room_id.startswith("!") or len(room_id) > _MAX_ID_LENGTH:
            raise _invalid(f"{room_id[:60]!r} is not a room ID")
        wanted: dict[str, str] = {}
        for key in (FULLY_READ, READ, READ_PRIVATE):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise _bad_json(f"{key} must be an event ID")
            _check_ids(room_id, value)
            wanted[key] = value
        await self._check_joined(user_id, room_id)
        events = {key: await self._room_event(room_id, value) for key, value in wanted.items()}
        for key, event in events.items():
            if key == FULLY_READ:
                await self._set_fully_read(user_id, room_id, event)
            else:
                await self._set_receipt(user_id, room_id, key, event.event_id, None)

    async def _check_joined(self, user_id: str, room_id: str) -> None:
        if await self._rooms.membership(user_id, room_id) != "join":
            raise _not_in_room(user_id, room_id)
        # Every receipt and marker of a local user passes here: they read.
        if self._activity is not None:
            await self._activity.user_active(user_id)

    async def _room_event(self, room_id: str, event_id: str) -> StoredEvent:
        event = (await self._events.get_events([event_id])).get(event_id)
        if event is None or event.room_id != room_id or event.outlier:
            raise MatrixError(
                f"event {event_id} is not known in {room_id}",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        return event

    async def _set_receipt(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        thread_id: str | None,
    ) -> None:
        ts = self._clock()
        try:
            position = await self._store.put_receipt(
                room_id=room_id,
                receipt_type=receipt_type,
                user_id=user_id,
                thread_id=thread_id or "",
                event_id=event_id,
                ts=ts,
            )
        except RoomGoneError:
            # Purged since the user was found joined: answered as any
            # room the user is not in.
            raise _not_in_room(user_id, room_id) from None
        if position is None:
            return
        private = receipt_type == READ_PRIVATE
        if self._notifier is not None:
            self._notifier.advance_receipts(position, room_id, user_id if private else None)
        if private:
            return
        data: dict[str, Any] = {"ts": ts}
        if thread_id is not None:
            data["thread_id"] = thread_id
        content = {room_id: {READ: {user_id: {"event_ids": [event_id], "data": data}}}}
        for server in sorted(await self._servers.joined_servers(room_id)):
            if server != self.server_name:
                self._edus.send_edu(server, "m.receipt", content)

    async def _set_fully_read(self, user_id: str, room_id: str, event: StoredEvent) -> None:
        held = await self._account_data.get_account_data(user_id, room_id, FULLY_READ)
        if held is not None:
            try:
                held_id = msgspec.json.decode(held).get("event_id")
            except (msgspec.DecodeError, AttributeError):
                held_id = None
            if held_id == event.event_id:
                return
            if isinstance(held_id, str):
                before = (await self._events.get_events([held_id])).get(held_id)
                if before is not None and before.stream_ordering > event.stream_ordering:
                    return
        content = msgspec.json.encode({"event_id": event.event_id})
        position = await self._account_data.put_account_data(user_id, room_id, FULLY_READ, content)
        if self._notifier is not None:
            self._notifier.advance_account_data(position, user_id)

    # --- From other servers -------------------------------------------------------

    async def on_remote_receipts(self, origin: str, receipts: Collection[RemoteReceipt]) -> int:
        """Store the ``m.read`` receipts of an ``m.receipt`` EDU from
        ``origin``; return how many were taken.
        """
        taken = 0
        in_room: dict[str, bool] = {}
        for receipt in receipts:
            if server_of(receipt.user_id) != origin:
                _log.info("%s sent a receipt of %s: dropped", origin, receipt.user_id)
                continue
            room_id = receipt.room_id
            if room_id not in in_room:
                in_room[room_id] = origin in await self._servers.joined_servers(room_id)
            if not in_room[room_id]:
                _log.info("%s sent a receipt in %s, which it is not in: dropped", origin, room_id)
                continue
            try:
                position = await self._store.put_receipt(
                    room_id=room_id,
                    receipt_type=READ,
                    user_id=receipt.user_id,
                    thread_id=receipt.thread_id or "",
                    event_id=receipt.event_id,
                    ts=receipt.ts,
                )
            except RoomGoneError:
                _log.info("%s sent a receipt in %s, purged here since: dropped", origin, room_id)
                in_room[room_id] = False
                continue
            if position is not None:
                taken += 1
                if self._notifier is not None:
                    self._notifier.advance_receipts(position, room_id)
        return taken

    # --- For /sync ----------------------------------------------------------------

    async def position(self) -> int:
        """The receipts stream's newest position."""
        return await self._store.receipts_position()

    async def for_sync(
        self, user_id: str, room_ids: Collection[str], after: int | None, upto: int
    ) -> dict[str, dict[str, Any]]:
        """The ``m.receipt`` event of each of ``room_ids`` with receipts
        changed in ``(after, upto]`` (all of them when ``after`` is None),
        as ``user_id`` may see them.
        """
        events: dict[str, dict[str, Any]] = {}
        if not room_ids:
            return events
        for record in await self._store.receipt_changes(room_ids, after or 0, upto):
            if record.receipt_type == READ_PRIVATE and record.user_id != user_id:
                continue
            data: dict[str, Any] = {"ts": record.ts}
            if record.thread_id:
                data["thread_id"] = record.thread_id
            event = events.setdefault(record.room_id, {"type": "m.receipt", "content": {}})
            by_type = event["content"].setdefault(record.event_id, {})
            by_user = by_type.setdefault(record.receipt_type, {})
            shown = by_user.get(record.user_id)
            if record.thread_id and shown is not None and "thread_id" not in shown:
                # One user's receipts of one type on one event show as one:
                # the spec has the unthreaded one win over a threaded one.
                continue
            by_user[record.user_id] = data
        return events


def _check_ids(room_id: str, event_id: str) -> None:
    if not room_id.startswith("!") or len(room_id) > _MAX_ID_LENGTH:
        raise _invalid(f"{room_id[:60]!r} is not a room ID")
    if not event_id.startswith("$") or len(event_id) > _MAX_ID_LENGTH:
        raise _invalid(f"{event_id[:60]!r} is not an event ID")


def _check_thread(event: StoredEvent, thread_id: str) -> None:
    """Refuse a thread ID that the event's own relation contradicts: an
    event in a thread read as the main timeline's, or as another thread's.
    Events related to a thread only through another event are not followed.
    """
    root = thread_root(event_content(event))
    if root is None:
        return
    if thread_id == MAIN_THREAD or thread_id != root:
        raise _invalid(f"event {event.event_id} is in thread {root}, not {thread_id}")
