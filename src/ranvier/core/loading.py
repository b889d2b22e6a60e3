"""Events loaded from storage for the auth checks and state resolution.

Both need a handful of events as :class:`~ranvier.protocol.events.Pdu`
objects and, for the auth difference, the ``auth_events`` links of many
more. An :class:`EventLoader` serves one piece of work: it asks storage only
for events it has not seen, in batches, parses an event into a PDU only when
the event itself is needed, and reads nothing but ``auth_events`` from the
events it merely walks past.

An event is read one of two ways, as Synapse reads it:

- :meth:`EventLoader.load_for_auth` reads it as the auth checks do,
  redacted where a redaction applies (create events excepted): the check
  of an event against its auth events, against the state before it (also
  when the un-partial-state task checks it again) and against the current
  state, for events received and events created here alike. Synapse reads
  the redacted form there in every room version; the version decides what
  redaction leaves of what the rules read. Before room version 11 a power
  levels event loses ``invite``; in every version it loses
  ``notifications`` (whose changes the rules check), and an
  ``m.room.third_party_invite`` event all its content. A server that read
  the original would judge such an event differently, and could split the
  room.
- :meth:`EventLoader.load` reads it as stored: state resolution (its
  iterative auth checks included) and the check of an outlier against its
  auth events. Synapse's state resolution and its check of the outliers it
  takes in read events as stored, and resolutions here must agree with its.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping

import msgspec

from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import RoomVersion
from ranvier.storage.records import StoredEvent

from .interfaces import StateReader

__all__ = ["LOAD_BATCH", "EventLoader"]

#: The most events asked of storage at once.
LOAD_BATCH = 1_000


class _AuthEventsOnly(msgspec.Struct):
    """The one field of an event that walking the auth graph needs."""

    auth_events: tuple[str, ...] = ()


_decode_auth_events = msgspec.json.Decoder(_AuthEventsOnly).decode


class EventLoader:
    """The events of one room that a piece of work has loaded so far.

    ``events`` holds those parsed into PDUs as stored, ``rejected`` the IDs
    of events read that storage marked rejected (parsed or not), and
    ``missing`` the IDs that storage does not have. Events are parsed with
    ``room_version``, the version of the room being worked on: an event that
    cites an event of another room is refused by the auth rules, not here.
    An event handed over with :meth:`add` is read as handed both ways:
    callers hand over events not stored yet (the event being handled, a
    run's held events), which no redaction applies to, or events read only
    for the check of outliers, which reads them as stored.
    """

    def __init__(self, store: StateReader, room_version: RoomVersion) -> None:
        self._store = store
        self.room_version = room_version
        self.events: dict[str, Pdu] = {}
        # The events as the auth checks read them (load_for_auth).
        self._for_auth: dict[str, Pdu] = {}
        self.rejected: set[str] = set()
        self.missing: set[str] = set()
        # The auth events of every event read, parsed or not. Events only
        # walked past are not kept: a big room's walk reads tens of thousands.
        self._edges: dict[str, tuple[str, ...]] = {}

    async def load(self, event_ids: Iterable[str]) -> dict[str, Pdu]:
        """Parse ``event_ids`` into PDUs, reading those not parsed yet; return
        those that storage has.
        """
        return await self._load(event_ids, self.events, self._store.get_events)

    async def load_for_auth(self, event_ids: Iterable[str]) -> dict[str, Pdu]:
        """Parse ``event_ids`` into PDUs as the auth checks read them (see
        the module's doc), reading those not parsed that way yet; return
        those that storage has.
        """
        return await self._load(event_ids, self._for_auth, self._store.get_events_for_auth)

    async def _load(
        self,
        event_ids: Iterable[str],
        parsed: dict[str, Pdu],
        read: Callable[[Collection[str]], Awaitable[Mapping[str, StoredEvent]]],
    ) -> dict[str, Pdu]:
        wanted = list(dict.fromkeys(event_ids))
        unparsed = [
            event_id
            for event_id in wanted
            if event_id not in parsed and event_id not in self.missing
        ]
        for start in range(0, len(unparsed), LOAD_BATCH):
            batch = unparsed[start : start + LOAD_BATCH]
            stored = await read(batch)
            for event_id, row in self._take(batch, stored):
                event = Pdu.from_json(row.json, self.room_version, check_limits=False)
                parsed[event_id] = event
                self._edges[event_id] = event.auth_event_ids
        return {event_id: parsed[event_id] for event_id in wanted if event_id in parsed}

    def add(self, event: Pdu) -> None:
        """Make an event not yet written (the one being handled) loadable."""
        self.events[event.event_id] = event
        self._for_auth[event.event_id] = event
        self._edges[event.event_id] = event.auth_event_ids
        self.missing.discard(event.event_id)

    def keeping(self, store: StateReader, event_ids: Collection[str]) -> EventLoader:
        """A loader reading from ``store`` that has what this one parsed of
        ``event_ids``, for work that follows this one's on a room nothing
        changed in meanwhile: it spares parsing them again."""
        kept = EventLoader(store, self.room_version)
        for event_id in event_ids:
            if event_id in self.events:
                kept.events[event_id] = self.events[event_id]
            if event_id in self._for_auth:
                kept._for_auth[event_id] = self._for_auth[event_id]
            if event_id in self._edges:
                kept._edges[event_id] = self._edges[event_id]
            if event_id in self.rejected:
                kept.rejected.add(event_id)
        return kept

    def get(self, event_id: str) -> Pdu | None:
        """A PDU already loaded."""
        return self.events.get(event_id)

    def edges(self, event_id: str) -> tuple[str, ...]:
        """The auth events of an event already read; none for one not read."""
        return self._edges.get(event_id, ())

    async def auth_chain(
        self, event_ids: Iterable[str], *, until_found: Collection[str] = ()
    ) -> set[str]:
        """The union of the auth chains of ``event_ids``, read as far as needed.

        The graph is walked a level at a time, each level one batched read of
        the events not read before. With ``until_found``, the walk stops as
        soon as the chain holds every one of those events, and what it
        returns is then only part of the chain.

        Storage keeps no index of auth chains yet, so this reads every event
        of the chain once; an auth chain index in storage would replace the
        walk with a query.
        """
        targets = set(until_found)
        chain: set[str] = set()
        level = set(event_ids)
        while level:
            await self._read_edges(level)
            level = {auth_id for event_id in level for auth_id in self._edges.get(event_id, ())}
            level -= chain
            chain |= level
            if targets and targets <= chain:
                break
        return chain

    async def _read_edges(self, event_ids: Iterable[str]) -> None:
        """Read the auth events of the events of ``event_ids`` not read yet."""
        unread = [
            event_id
            for event_id in event_ids
            if event_id not in self._edges and event_id not in self.missing
        ]
        for start in range(0, len(unread), LOAD_BATCH):
            batch = unread[start : start + LOAD_BATCH]
            stored = await self._store.get_events(batch)
            for event_id, row in self._take(batch, stored):
                self._edges[event_id] = _decode_auth_events(row.json).auth_events

    def _take(
        self, batch: list[str], stored: Mapping[str, StoredEvent]
    ) -> Iterator[tuple[str, StoredEvent]]:
        """The rows storage found, noting the IDs it did not and the rejected ones."""
        for event_id in batch:
            row = stored.get(event_id)
            if row is None:
                self.missing.add(event_id)
                continue
            if row.rejected_reason is not None:
                self.rejected.add(event_id)
            yield event_id, row
