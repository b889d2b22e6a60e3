"""The stream notifier: the newest stream position, and waiting for a newer one.

A ``/sync`` long-poll with nothing to report waits here until something is
committed past the position it answered from, or its timeout ends. Storage
tells the notifier after every commit that adds timeline events or clears
a room's partial state, whichever path wrote (federation ingest, local
sends, joins, the un-partial-state task), so a waiter never misses a write
by having asked the wrong component.

Invariants
----------

* **Positions only grow.** :meth:`StreamNotifier.advance` keeps the larger
  of what it holds and what it is told, per stream, so writes reported out
  of order, or a report lost with a cancelled writer, never move it back;
  the next report covers the lost one. A report below the position held
  (another process's write, caught up with after a later one of this
  process) is still logged in its place and wakes the waiters, so the one
  it concerns does not sleep on until its timeout.
* **Account data is a stream of its own.** A change to a user's account
  data moves the third position (:meth:`StreamNotifier.advance_account_data`),
  logged with the user whose data it is, and concerns that user only.
* **So are receipts and typing.** A receipt moves the fourth position
  (:meth:`StreamNotifier.advance_receipts`), a change of who is typing the
  fifth (:meth:`StreamNotifier.advance_typing`); each is logged with its
  room, and concerns the waiters in that room (a private receipt only its
  owner).
* **And presence.** A change of a user's presence moves the sixth position
  (:meth:`StreamNotifier.advance_presence`); it is logged with the user and
  the rooms they are joined to, and concerns the user and the waiters in
  those rooms.
* **To-device messages and device lists too.** A message queued for a
  user's device moves the seventh position
  (:meth:`StreamNotifier.advance_to_device`) and concerns that user only; a
  change of a user's devices or keys the eighth
  (:meth:`StreamNotifier.advance_device_lists`), which concerns the user and
  the waiters in the rooms they are joined to, as presence does.
* **No polling.** Waiters sleep on one :class:`trio.Event`, replaced each
  time the position moves: every waiter wakes, checks its own condition,
  and sleeps again on the new event if it is not met.
* **A lower bound.** The notifier starts at zero and learns positions from
  writes, so it may lag what storage holds until the first write after a
  start; a waiter compares against positions read from storage, which are
  never beyond what storage holds, and so is woken by that first write.
* **Only what concerns a waiter wakes it for good.** Each advance notes the
  rooms it touched and the users whose membership it changed, in a log of
  the last :data:`LOG_SIZE` advances. A waiter that names its rooms and
  user goes back to sleep after an advance that touched none of them; one
  whose position the log no longer reaches returns, to look for itself.
  A cleared partial state concerns everyone. So a server of many idle
  long-polls answers a message with a look by its room's members only.

A write whose caller is cancelled after handing it to storage still
commits, but nobody reports it: it is seen by the next sync, and a
long-poll that only it concerns waits until its timeout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Set
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

import trio

__all__ = ["LOG_SIZE", "StreamNotifier", "StreamPosition"]

#: An entry of a stream's log: its position first.
_Entry = TypeVar("_Entry", bound=tuple[Any, ...])

#: How many advances the notifier remembers the rooms and users of.
LOG_SIZE: Final = 1024


class StreamPosition(NamedTuple):
    """A position in both streams a sync follows."""

    #: The newest event's stream ordering.
    events: int
    #: The newest position of the stream of rooms whose state became complete.
    un_partial: int
    #: The newest position of the stream of account data changes.
    account_data: int = 0
    #: The newest position of the receipts stream.
    receipts: int = 0
    #: The newest position of the typing stream (held in memory).
    typing: int = 0
    #: The newest position of the presence stream (held in memory).
    presence: int = 0
    #: The newest position of the to-device message stream.
    to_device: int = 0
    #: The newest position of the device-list change stream.
    device_lists: int = 0

    def is_beyond(self, other: StreamPosition) -> bool:
        """Whether any stream is further on than in ``other``."""
        return (
            self.events > other.events
            or self.un_partial > other.un_partial
            or self.account_data > other.account_data
            or self.receipts > other.receipts
            or self.typing > other.typing
            or self.presence > other.presence
            or self.to_device > other.to_device
            or self.device_lists > other.device_lists
        )


@dataclass(frozen=True, slots=True)
class _Advance:
    events: int
    rooms: frozenset[str]
    users: frozenset[str]


class StreamNotifier:
    """The newest positions storage has reported, and a way to wait for more."""

    def __init__(self) -> None:
        self._position = StreamPosition(0, 0)
        self._advanced = trio.Event()
        self._log: deque[_Advance] = deque()
        # The events position the log reaches back to: advances after it
        # are all in the log.
        self._log_floor = 0
        # The same for account data: (position, whose data changed).
        self._account_data_log: deque[tuple[int, str]] = deque()
        self._account_data_floor = 0
        # Receipts and typing: (position, room, the one user it concerns or
        # None for the room's members).
        self._room_logs: dict[str, deque[tuple[int, str, str | None]]] = {
            "receipts": deque(),
            "typing": deque(),
        }
        self._room_floors = {"receipts": 0, "typing": 0}
        # Presence: (position, whose presence, the rooms they are joined to).
        self._presence_log: deque[tuple[int, str, frozenset[str]]] = deque()
        self._presence_floor = 0
        # To-device messages: (position, whose device).
        self._to_device_log: deque[tuple[int, str]] = deque()
        self._to_device_floor = 0
        # Device lists: (position, whose devices, the rooms they are joined to).
        self._device_lists_log: deque[tuple[int, str, frozenset[str]]] = deque()
        self._device_lists_floor = 0

    @property
    def position(self) -> StreamPosition:
        return self._position

    def advance(
        self,
        events: int | None = None,
        un_partial: int | None = None,
        *,
        rooms: Collection[str] = (),
        users: Collection[str] = (),
    ) -> None:
        """Note positions a commit reached (None: that stream did not move),
        the rooms it touched and the users whose membership it changed; wake
        every waiter if either position grew. Synchronous, so storage may
        call it from anywhere on the Trio thread.
        """
        current = self._position
        moved = current._replace(
            events=max(current.events, events or 0),
            un_partial=max(current.un_partial, un_partial or 0),
        )
        if moved == current:
            return
        self._position = moved
        if moved.events > current.events:
            self._log.append(_Advance(moved.events, frozenset(rooms), frozenset(users)))
            if len(self._log) > LOG_SIZE:
                self._log_floor = self._log.popleft().events
        self._wake()

    def advance_account_data(self, position: int, user_id: str) -> None:
        """Note that ``user_id``'s account data changed at ``position`` of
        the account data stream; wake every waiter if the position grew.
        """
        current = self._position
        if position <= current.account_data:
            self._account_data_floor = self._late(
                self._account_data_log, (position, user_id), self._account_data_floor
            )
            return
        self._position = current._replace(account_data=position)
        self._account_data_log.append((position, user_id))
        if len(self._account_data_log) > LOG_SIZE:
            self._account_data_floor = self._account_data_log.popleft()[0]
        self._wake()

    def advance_receipts(self, position: int, room_id: str, only_user: str | None = None) -> None:
        """Note a receipt in ``room_id`` at ``position`` of the receipts
        stream, of concern to the room's members (to ``only_user`` alone for
        a private receipt); wake every waiter if the position grew.
        """
        self._advance_room_stream("receipts", position, room_id, only_user)

    def advance_typing(self, position: int, room_id: str) -> None:
        """Note that who is typing in ``room_id`` changed at ``position`` of
        the typing stream; wake every waiter if the position grew.
        """
        self._advance_room_stream("typing", position, room_id, None)

    def advance_presence(self, position: int, user_id: str, rooms: Collection[str]) -> None:
        """Note that ``user_id``'s presence changed at ``position`` of the
        presence stream, of concern to the user and to the members of
        ``rooms``; wake every waiter if the position grew.
        """
        current = self._position
        if position <= current.presence:
            return
        self._position = current._replace(presence=position)
        self._presence_log.append((position, user_id, frozenset(rooms)))
        if len(self._presence_log) > LOG_SIZE:
            self._presence_floor = self._presence_log.popleft()[0]
        self._wake()

    def advance_to_device(self, position: int, user_ids: Collection[str]) -> None:
        """Note to-device messages for devices of ``user_ids``, written in
        one go that reached ``position`` of the to-device stream; wake every
        waiter if the position grew.
        """
        current = self._position
        if position <= current.to_device:
            for user_id in user_ids:
                self._to_device_floor = self._late(
                    self._to_device_log, (position, user_id), self._to_device_floor
                )
            return
        self._position = current._replace(to_device=position)
        for user_id in user_ids:
            self._to_device_log.append((position, user_id))
        while len(self._to_device_log) > LOG_SIZE:
            self._to_device_floor = self._to_device_log.popleft()[0]
        self._wake()

    def advance_device_lists(self, position: int, user_id: str, rooms: Collection[str]) -> None:
        """Note that ``user_id``'s devices or keys changed at ``position`` of
        the device-list stream, of concern to the user and to the members of
        ``rooms``; wake every waiter if the position grew.
        """
        current = self._position
        if position <= current.device_lists:
            self._device_lists_floor = self._late(
                self._device_lists_log,
                (position, user_id, frozenset(rooms)),
                self._device_lists_floor,
            )
            return
        self._position = current._replace(device_lists=position)
        self._device_lists_log.append((position, user_id, frozenset(rooms)))
        if len(self._device_lists_log) > LOG_SIZE:
            self._device_lists_floor = self._device_lists_log.popleft()[0]
        self._wake()

    def _late(self, log: deque[_Entry], entry: _Entry, floor: int) -> int:
        """Log ``entry``, reported after a later position of its stream (a
        write another process made, caught up with late), in its place, and
        wake every waiter: one it concerns would otherwise sleep on, as the
        position did not grow. Return the log's floor, raised if it grew
        too long.
        """
        position = entry[0]
        if position <= floor:
            # Below the log's reach: a waiter from before it looks anyway.
            return floor
        index = len(log)
        while index > 0 and log[index - 1][0] > position:
            index -= 1
        log.insert(index, entry)
        while len(log) > LOG_SIZE:
            floor = log.popleft()[0]
        self._wake()
        return floor

    @staticmethod
    def _user_rooms_concerns(
        log: deque[tuple[int, str, frozenset[str]]],
        floor: int,
        since: int,
        rooms: Set[str],
        user_id: str | None,
    ) -> bool:
        if since < floor:
            return True
        for changed_at, whose, their_rooms in reversed(log):
            if changed_at <= since:
                break
            if whose == user_id or not their_rooms.isdisjoint(rooms):
                return True
        return False

    @staticmethod
    def _user_concerns(
        log: deque[tuple[int, str]], floor: int, since: int, user_id: str | None
    ) -> bool:
        if since < floor:
            return True
        for changed_at, whose in reversed(log):
            if changed_at <= since:
                break
            if whose == user_id:
                return True
        return False

    def _advance_room_stream(
        self, stream: str, position: int, room_id: str, only_user: str | None
    ) -> None:
        current = self._position
        log = self._room_logs[stream]
        if position <= getattr(current, stream):
            self._room_floors[stream] = self._late(
                log, (position, room_id, only_user), self._room_floors[stream]
            )
            return
        self._position = current._replace(**{stream: position})
        log.append((position, room_id, only_user))
        if len(log) > LOG_SIZE:
            self._room_floors[stream] = log.popleft()[0]
        self._wake()

    def _room_stream_concerns(
        self, stream: str, since: int, rooms: Set[str], user_id: str | None
    ) -> bool:
        if since < self._room_floors[stream]:
            return True
        for changed_at, room_id, only_user in reversed(self._room_logs[stream]):
            if changed_at <= since:
                break
            if room_id in rooms and (only_user is None or only_user == user_id):
                return True
        return False

    def _wake(self) -> None:
        woken, self._advanced = self._advanced, trio.Event()
        woken.set()

    def concerns(
        self, position: StreamPosition, rooms: Set[str] | None, user_id: str | None
    ) -> bool:
        """Whether what came after ``position`` may matter to a waiter in
        ``rooms`` (None: any room) for ``user_id``.
        """
        current = self._position
        if not current.is_beyond(position):
            return False
        if rooms is None or current.un_partial > position.un_partial:
            return True
        if current.account_data > position.account_data and self._user_concerns(
            self._account_data_log, self._account_data_floor, position.account_data, user_id
        ):
            return True
        if current.to_device > position.to_device and self._user_concerns(
            self._to_device_log, self._to_device_floor, position.to_device, user_id
        ):
            return True
        for stream in ("receipts", "typing"):
            since = getattr(position, stream)
            if getattr(current, stream) > since and self._room_stream_concerns(
                stream, since, rooms, user_id
            ):
                return True
        if current.presence > position.presence and self._user_rooms_concerns(
            self._presence_log, self._presence_floor, position.presence, rooms, user_id
        ):
            return True
        if current.device_lists > position.device_lists and self._user_rooms_concerns(
            self._device_lists_log,
            self._device_lists_floor,
            position.device_lists,
            rooms,
            user_id,
        ):
            return True
        if position.events < self._log_floor:
            return True
        for advance in reversed(self._log):
            if advance.events <= position.events:
                break
            if user_id in advance.users or not advance.rooms.isdisjoint(rooms):
                return True
        return False

    async def wait_beyond(
        self,
        position: StreamPosition,
        *,
        rooms: Set[str] | None = None,
        user_id: str | None = None,
    ) -> None:
        """Return once the position is beyond ``position`` in either stream,
        by an advance that may concern ``rooms`` and ``user_id`` when given;
        bound the wait with a cancel scope.
        """
        while not self.concerns(position, rooms, user_id):
            await self._advanced.wait()

    @property
    def waiting(self) -> int:
        """How many tasks wait right now; for tests and metrics."""
        return self._advanced.statistics().tasks_waiting
