"""Events read for serving: redacted where a redaction applies.

State resolution reads events as stored, whole, and the auth checks read
them redacted where a redaction applies (:mod:`ranvier.core.loading` says
why). What is handed to clients and other servers goes through the
redaction rules of the room versions first
(:mod:`ranvier.storage.redactions` says when a redaction applies). Reads
for serving take a :class:`ServedEvents`; a handler written against the
whole :class:`~ranvier.core.interfaces.StateReader`, such as the client
API's room reads, is given a :class:`ServedStateReader`, which reads its
events that way and everything else as the store does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Set
from typing import Protocol

from ranvier.storage.records import (
    EventStateGroups,
    ReplacedState,
    StateDelta,
    StateKey,
    StoredEvent,
)

from .interfaces import StateReader
from .replaced_state import ReplacedStateSource

__all__ = ["ServedEvents", "ServedStateReader"]


class ServedEvents(Protocol):
    """Events as this server serves them
    (:class:`ranvier.storage.redactions.RedactionStorage`).
    """

    async def get_served_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        """The stored events among ``event_ids``, redacted where a redaction applies."""
        ...


class _Store(StateReader, ReplacedStateSource, Protocol):
    """The store's reads, what state events replaced among them."""


class ServedStateReader:
    """A :class:`~ranvier.core.interfaces.StateReader` whose events come
    from ``served``; its other reads are ``store``'s (whose replaced state
    entries are read as served already).
    """

    def __init__(self, store: _Store, served: ServedEvents) -> None:
        self._store = store
        self._served = served

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        return await self._served.get_served_events(event_ids)

    async def get_events_for_auth(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        return await self._store.get_events_for_auth(event_ids)

    async def get_replaced_state(self, event_ids: Collection[str]) -> Mapping[str, ReplacedState]:
        return await self._store.get_replaced_state(event_ids)

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        return await self._store.get_event_state_groups(event_id)

    async def get_state_ids(self, state_group: int) -> Mapping[StateKey, str]:
        return await self._store.get_state_ids(state_group)

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        return await self._store.get_current_state_ids(room_id)

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        return await self._store.get_state_ids_for_keys(state_group, keys)

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        return await self._store.get_current_state_ids_for_keys(room_id, keys)

    async def get_state_deltas(
        self, state_groups: Sequence[int]
    ) -> tuple[int, Mapping[int, StateDelta]]:
        return await self._store.get_state_deltas(state_groups)

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        return await self._store.get_forward_extremities(room_id)

    async def is_partial_state_room(self, room_id: str) -> bool:
        return await self._store.is_partial_state_room(room_id)

    async def get_partial_state_events(self, room_id: str) -> Sequence[str]:
        return await self._store.get_partial_state_events(room_id)

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> Set[str]:
        return await self._store.get_partial_state_event_ids(event_ids)

    async def get_room_version(self, room_id: str) -> str | None:
        return await self._store.get_room_version(room_id)
