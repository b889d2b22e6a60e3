"""A state reader that records what core asks of the real storage behind it."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Set
from dataclasses import dataclass

from ranvier.storage import EventStateGroups, PartialStateRoom, StateKey, Storage, StoredEvent

#: Reads whose answer grows with the room: what a check must never make.
WHOLE_MAP_READS = frozenset({"get_state_ids", "get_current_state_ids", "get_partial_state_events"})
#: Reads of a few keys of a state.
NARROW_STATE_READS = frozenset({"get_state_ids_for_keys", "get_current_state_ids_for_keys"})
#: Reads of the changes between state groups: what resolving a fork reads.
STATE_DELTA_READS = frozenset({"get_state_deltas"})


@dataclass(frozen=True, slots=True)
class Read:
    """One call: the method, and how many entries its answer held."""

    method: str
    entries: int


class RecordingReader:
    """Passes every read to ``storage`` and records it in ``reads``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.reads: list[Read] = []

    def clear(self) -> None:
        self.reads.clear()

    def calls(self, methods: Collection[str]) -> list[Read]:
        return [read for read in self.reads if read.method in methods]

    def entries(self, methods: Collection[str]) -> int:
        return sum(read.entries for read in self.calls(methods))

    def _record(self, method: str, entries: int) -> None:
        self.reads.append(Read(method, entries))

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        found = await self.storage.get_events(event_ids)
        self._record("get_events", len(found))
        return found

    async def get_events_for_auth(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        found = await self.storage.get_events_for_auth(event_ids)
        self._record("get_events_for_auth", len(found))
        return found

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        groups = await self.storage.get_event_state_groups(event_id)
        self._record("get_event_state_groups", 0 if groups is None else 1)
        return groups

    async def get_state_ids(self, state_group: int) -> Mapping[StateKey, str]:
        state = await self.storage.get_state_ids(state_group)
        self._record("get_state_ids", len(state))
        return state

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        state = await self.storage.get_state_ids_for_keys(state_group, keys)
        self._record("get_state_ids_for_keys", len(state))
        return state

    async def get_state_deltas(
        self, state_groups: Sequence[int]
    ) -> tuple[int, Mapping[int, Mapping[StateKey, str | None]]]:
        base, deltas = await self.storage.get_state_deltas(state_groups)
        self._record("get_state_deltas", sum(len(delta) for delta in deltas.values()))
        return base, deltas

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        state = await self.storage.get_current_state_ids(room_id)
        self._record("get_current_state_ids", len(state))
        return state

    async def get_current_state_group(self, room_id: str) -> int | None:
        group = await self.storage.get_current_state_group(room_id)
        self._record("get_current_state_group", 0 if group is None else 1)
        return group

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        state = await self.storage.get_current_state_ids_for_keys(room_id, keys)
        self._record("get_current_state_ids_for_keys", len(state))
        return state

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        extremities = await self.storage.get_forward_extremities(room_id)
        self._record("get_forward_extremities", len(extremities))
        return extremities

    async def is_partial_state_room(self, room_id: str) -> bool:
        partial = await self.storage.is_partial_state_room(room_id)
        self._record("is_partial_state_room", 1)
        return partial

    async def get_partial_state_rooms(self) -> Mapping[str, PartialStateRoom]:
        rooms = await self.storage.get_partial_state_rooms()
        self._record("get_partial_state_rooms", len(rooms))
        return rooms

    async def get_partial_state_events(self, room_id: str) -> Sequence[str]:
        events = await self.storage.get_partial_state_events(room_id)
        self._record("get_partial_state_events", len(events))
        return events

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> Set[str]:
        partial = await self.storage.get_partial_state_event_ids(event_ids)
        self._record("get_partial_state_event_ids", len(partial))
        return partial

    async def get_room_version(self, room_id: str) -> str | None:
        version = await self.storage.get_room_version(room_id)
        self._record("get_room_version", 0 if version is None else 1)
        return version
