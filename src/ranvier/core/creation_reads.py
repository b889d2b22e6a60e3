"""What creating an event reads, with the answers that cannot change kept.

Building, checking and writing one local event asks storage the same
questions several times (the room's forward extremities, the prev event,
its state groups, the auth events), and the next event in the room asks
them again of the event just written. Each question is a trip to a reader
thread. :class:`CreationReads` is the
:class:`~ranvier.core.interfaces.StateReader` the event creator reads
through: it keeps what is fixed once known and asks storage the rest.

Invariants
----------

* **Only facts that never change are kept across events.** A room's
  version; the entries of a state group (groups are never rewritten); and,
  for each event this server wrote itself with full state, its stored row
  and its state groups (only an event with partial state has its state,
  and so its rejection, worked out again). Everything else is asked of
  storage each time, so writes by anyone else are seen as before: among
  them an event as the auth checks read it, which a redaction can change.
* **The forward extremities are read once per event**, and so is a "no"
  to whether the room's state is partial (only a join, which takes the
  room's lock, makes it partial), both in one read when the store can
  (:class:`RoomHeadReader`). They are kept from
  :meth:`CreationReads.begin` to the event's write; the room's lock, held
  throughout, keeps every other writer of the room out meanwhile.
  :meth:`CreationReads.begin` is called before each event is built and
  again before a conflict's second attempt. While they are one event
  written here with full state, the room's current state is the state
  after it, and is answered from that state group.
* **Staged events are the next events' head.** A message checked under
  the room's lock and waiting to be written with others
  (:meth:`CreationReads.stage`) is read as if written: as the room's
  extremity, with its row and state groups, until it is written or the
  attempt is given up (:meth:`CreationReads.unstage`). Only messages with
  full state are staged, so the state stays what it was. Messages staged
  while those before them are being written keep the extremities they
  leave when those are written (``written(keep_head=True)``): the lock is
  still held, so nobody else moved them.
* **Bounded.** Each kind of fact is kept for at most ``capacity`` keys;
  the least recently used go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence, Set
from typing import Final, Generic, Protocol, TypeVar, runtime_checkable

from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu
from ranvier.protocol.policy_servers import POLICY_EVENT_TYPE, POLICY_STATE_KEY
from ranvier.storage.records import EventStateGroups, StateDelta, StoredEvent

from .context import EventContext
from .interfaces import StateReader

__all__ = ["CreationReads"]

K = TypeVar("K")
V = TypeVar("V")

#: Marks a key looked up in a state group and not found there.
_ABSENT: Final = ""
#: The entry naming a room's policy server.
_POLICY_KEY: Final[StateKey] = (POLICY_EVENT_TYPE, POLICY_STATE_KEY)


class _Lru(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


@runtime_checkable
class RoomHeadReader(Protocol):
    """A store that reads a room's forward extremities and whether its state
    is partial in one trip (:class:`ranvier.storage.Storage`): the two
    questions each group of events asks first.
    """

    async def get_room_head(self, room_id: str) -> tuple[frozenset[str], bool]:
        """The room's forward extremities, and whether its state is partial."""
        ...


class CreationReads:
    """A :class:`~ranvier.core.interfaces.StateReader` over ``store`` that
    keeps the answers that cannot change; see the module's invariants.
    A ``store`` that is a :class:`RoomHeadReader` answers the forward
    extremities and a "no" to partial state together.
    """

    def __init__(self, store: StateReader, *, capacity: int = 10_000) -> None:
        self._store = store
        self._head = store if isinstance(store, RoomHeadReader) else None
        self._versions: _Lru[str, str] = _Lru(capacity)
        self._events: _Lru[str, StoredEvent] = _Lru(capacity)
        self._groups: _Lru[str, EventStateGroups] = _Lru(capacity)
        # Per state group: each key looked up, to its event ID or _ABSENT.
        self._group_keys: _Lru[int, dict[StateKey, str]] = _Lru(capacity)
        # Per room, between begin() and the event's write.
        self._extremities: dict[str, frozenset[str]] = {}
        # Rooms read to have full state since begin().
        self._full_rooms: set[str] = set()
        # Events checked and not yet written, with their state groups.
        self._staged: dict[str, tuple[StoredEvent, EventStateGroups]] = {}

    # --- The life of one event ------------------------------------------------------

    def begin(self, room_id: str) -> None:
        """Forget what was read of the room for the event before (the room's lock held)."""
        self._extremities.pop(room_id, None)
        self._full_rooms.discard(room_id)

    def room_created(self, room_id: str, room_version: str) -> None:
        """Note the version of a room created here."""
        self._versions.put(room_id, room_version)

    def stage(self, event: Pdu, context: EventContext) -> None:
        """Note an accepted message with full state, checked and to be written
        with others (the room's lock held): the events built after it follow
        it, and read it, its state groups and the extremities it leaves from
        here until :meth:`written` or :meth:`begin`.
        """
        before = context.state_group_before
        if (
            event.state_key is not None
            or context.partial_state
            or not context.accepted
            or before is None
        ):
            raise ValueError(f"{event.event_id} is not an accepted message with full state")
        room_id = event.room_id
        extremities = self._extremities.get(room_id)
        if extremities is None:
            raise ValueError(f"the forward extremities of {room_id} were not read for this event")
        self._extremities[room_id] = frozenset(extremities.difference(event.prev_event_ids)) | {
            event.event_id
        }
        # The stream ordering is not known before the write; only the order
        # of extremities of equal depth reads it, and this is the only one
        # of its depth.
        self._staged[event.event_id] = (
            _row(event, stream_ordering=0),
            EventStateGroups(before, before),
        )

    def written(
        self,
        event: Pdu,
        context: EventContext,
        stream_ordering: int,
        *,
        keep_head: bool = False,
    ) -> None:
        """Note an event this server wrote, with the context it was written with.

        The room's extremities are read again for the next event, unless
        ``keep_head``: a staged message written while the room's lock is
        still held, with the messages staged since leading the room, whose
        extremities are then still the ones staged.
        """
        if not keep_head:
            self._extremities.pop(event.room_id, None)
        self._staged.pop(event.event_id, None)
        before = context.state_group_before
        if context.partial_state or not context.accepted or before is None:
            return
        self._events.put(event.event_id, _row(event, stream_ordering=stream_ordering))
        after = context.state_group_after
        if after is None and event.state_key is None:
            after = before  # a message leaves the state as it was
        if after is not None:
            self._groups.put(event.event_id, EventStateGroups(before, after))

    def follows_every_extremity(self, event: Pdu) -> bool:
        """Whether ``event`` names every forward extremity of its room as a
        prev event, as read for it: written, it is the room's only one.
        """
        extremities = self._extremities.get(event.room_id)
        return extremities is not None and extremities.issubset(event.prev_event_ids)

    def unstage(self, room_id: str, event_ids: Collection[str]) -> None:
        """Forget staged events that were not written, and the room's extremities."""
        for event_id in event_ids:
            self._staged.pop(event_id, None)
        self._extremities.pop(room_id, None)

    def known_full(self, room_id: str) -> bool:
        """Whether the room was read not to have partial state since :meth:`begin`."""
        return room_id in self._full_rooms

    def _known_groups(self, event_id: str) -> EventStateGroups | None:
        staged = self._staged.get(event_id)
        return staged[1] if staged is not None else self._groups.get(event_id)

    # --- StateReader ----------------------------------------------------------------

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        found: dict[str, StoredEvent] = {}
        unknown: list[str] = []
        for event_id in event_ids:
            staged = self._staged.get(event_id)
            row = staged[0] if staged is not None else self._events.get(event_id)
            if row is None:
                unknown.append(event_id)
            else:
                found[event_id] = row
        if unknown:
            found.update(await self._store.get_events(unknown))
        return found

    async def get_events_for_auth(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        # Whether a redaction applies can change at any time, so only a
        # staged message (which nothing has redacted yet) is answered here.
        found: dict[str, StoredEvent] = {}
        unknown: list[str] = []
        for event_id in event_ids:
            staged = self._staged.get(event_id)
            if staged is None:
                unknown.append(event_id)
            else:
                found[event_id] = staged[0]
        if unknown:
            found.update(await self._store.get_events_for_auth(unknown))
        return found

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        groups = self._known_groups(event_id)
        if groups is not None:
            return groups
        return await self._store.get_event_state_groups(event_id)

    async def get_state_ids(self, state_group: int) -> Mapping[StateKey, str]:
        return await self._store.get_state_ids(state_group)

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        return await self._store.get_current_state_ids(room_id)

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        known = self._group_keys.get(state_group)
        if known is None:
            known = {}
            self._group_keys.put(state_group, known)
        unread = [key for key in keys if key not in known]
        if unread and _POLICY_KEY not in known:
            # Every event created here asks for it after its auth keys
            # (policy servers, spec v1.18): read with them, it costs no trip.
            unread.append(_POLICY_KEY)
        if unread:
            read = await self._store.get_state_ids_for_keys(state_group, unread)
            for key in unread:
                known[key] = read.get(key, _ABSENT)
        return {key: known[key] for key in keys if known.get(key, _ABSENT) != _ABSENT}

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        # A room's current state is the resolved state of its forward
        # extremities: with one, written here with full state, it is the
        # state after that one, whose entries may be kept already.
        extremities = self._extremities.get(room_id)
        if extremities is not None and len(extremities) == 1:
            groups = self._known_groups(next(iter(extremities)))
            if groups is not None:
                return await self.get_state_ids_for_keys(groups.after, keys)
        return await self._store.get_current_state_ids_for_keys(room_id, keys)

    async def get_state_deltas(
        self, state_groups: Sequence[int]
    ) -> tuple[int, Mapping[int, StateDelta]]:
        return await self._store.get_state_deltas(state_groups)

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        extremities = self._extremities.get(room_id)
        if extremities is None:
            if self._head is None:
                extremities = frozenset(await self._store.get_forward_extremities(room_id))
            else:
                extremities, partial = await self._head.get_room_head(room_id)
                if not partial:
                    # Kept as is_partial_state_room() keeps its own "no".
                    self._full_rooms.add(room_id)
            self._extremities[room_id] = extremities
        return extremities

    async def is_partial_state_room(self, room_id: str) -> bool:
        # Only a join, under the room's lock, makes a room's state partial:
        # an answer of no holds until begin().
        if room_id in self._full_rooms:
            return False
        partial = await self._store.is_partial_state_room(room_id)
        if not partial:
            self._full_rooms.add(room_id)
        return partial

    async def get_partial_state_events(self, room_id: str) -> Sequence[str]:
        return await self._store.get_partial_state_events(room_id)

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> Set[str]:
        # An event written here with full state never becomes partial.
        unknown = [event_id for event_id in event_ids if self._known_groups(event_id) is None]
        if not unknown:
            return frozenset()
        return await self._store.get_partial_state_event_ids(unknown)

    async def get_room_version(self, room_id: str) -> str | None:
        version = self._versions.get(room_id)
        if version is None:
            version = await self._store.get_room_version(room_id)
            if version is not None:
                self._versions.put(room_id, version)
        return version


def _row(event: Pdu, *, stream_ordering: int) -> StoredEvent:
    """The row storage holds for an accepted event written here."""
    return StoredEvent(
        stream_ordering=stream_ordering,
        event_id=event.event_id,
        room_id=event.room_id,
        type=event.type,
        state_key=event.state_key,
        sender=event.sender,
        depth=event.depth,
        origin_server_ts=event.origin_server_ts,
        json=event.raw,
        outlier=False,
        soft_failed=False,
        rejected_reason=None,
    )
