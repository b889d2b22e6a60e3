"""Event contexts: the state around an event, worked out before it is written.

Invariants
----------

* **The state before an event** is the state after its prev event when it
  has one; the resolution of the states after its prev events when they
  differ; or, when the state after some prev event is not known here (a gap
  in the room's history, a join), the state the caller supplies.
* **Partial state is catching.** A context is partial when the state after
  any of its prev events is partial, or when the caller supplies state from
  a partial join response. Outliers have no state and are never partial.
* **A rejected event changes nothing.** Its state after is its state before.
* **State groups grow by deltas.** A state that is not already a group is
  stored as its changes against an existing group (a prev event's), so a
  big room gains rows for what changed, not copies of its state. Only state
  supplied with no prev event known here is stored whole.
* **Whole states are read once, and only when needed.** A context keeps its
  state-before group's map once read; an event with one prev event gets its
  context without any state being read, and the auth checks read only the
  few keys they look at (:meth:`EventContext.get_state_before_for_keys`), so
  an event in a room of 50,000 members costs a handful of rows. Forks are
  resolved from the groups' changes against one another
  (:func:`~ranvier.core.state.resolve_state_groups`), and the result stored
  as changes against one of them, so a merge costs the fork, not the room.

The caller handles one room's events one at a time (as federation ingestion
and local event creation do), so that the room's forward extremities do not
move between computing a context and writing the event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu
from ranvier.storage.records import EventStateContext, EventToPersist

from .interfaces import EventPersister, StateReader
from .loading import EventLoader
from .state import GroupState, ResolvedGroups, changes_between, resolve_state_groups

__all__ = [
    "EventContext",
    "UnknownPrevStateError",
    "compute_current_state_after",
    "compute_event_context",
    "event_to_persist",
    "out_of_band_to_persist",
]


class UnknownPrevStateError(MatrixError):
    """The state after some prev event of an event is not known here.

    Federation ingestion catches it by name: it then fetches the missing
    events, or the state before the event from a remote server, and passes
    that as ``state_ids_before``.
    """

    errcode = "M_NOT_FOUND"
    http_status = 404

    def __init__(self, event_id: str, prev_event_ids: Collection[str]) -> None:
        super().__init__(
            f"the state after prev events {', '.join(sorted(prev_event_ids))} of {event_id}"
            " is not known here: persist them first, or supply the state before the event"
        )
        self.event_id = event_id
        self.prev_event_ids = frozenset(prev_event_ids)


class _StateBefore:
    """A state group's map, read on first use and kept."""

    __slots__ = ("group", "state")

    def __init__(self, group: int, state: Mapping[StateKey, str] | None = None) -> None:
        self.group = group
        self.state = state

    async def get(self, store: StateReader) -> Mapping[StateKey, str]:
        if self.state is None:
            self.state = await store.get_state_ids(self.group)
        return self.state

    async def get_for_keys(
        self, store: StateReader, keys: Collection[StateKey]
    ) -> dict[StateKey, str]:
        # A map already held costs nothing to pick from; otherwise only the
        # keys are read, and the map stays unread for whoever needs it whole.
        if self.state is not None:
            return {key: self.state[key] for key in keys if key in self.state}
        return dict(await store.get_state_ids_for_keys(self.group, keys))


@dataclass(frozen=True, slots=True, kw_only=True)
class EventContext:
    """The state around one event, and what the auth checks made of it.

    ``state_group_after`` None means storage derives it when the event is
    written: the state before plus the event, for an accepted state event;
    the state before otherwise. An outlier has neither group.
    """

    state_group_before: int | None = None
    state_group_after: int | None = None
    #: The auth rule that rejected the event; None while it is accepted.
    rejected_reason: str | None = None
    #: Failed against the room's current state only: kept, with its state,
    #: but never a forward extremity.
    soft_failed: bool = False
    #: The state before was computed from partial state and may be wrong
    #: until the room's full state is known.
    partial_state: bool = False
    _before: _StateBefore | None = field(default=None, repr=False, compare=False)

    @classmethod
    def for_outlier(cls) -> EventContext:
        """The context of an event outside the room's DAG: no state at all."""
        return cls()

    @property
    def is_outlier(self) -> bool:
        return self.state_group_before is None

    @property
    def accepted(self) -> bool:
        """Whether the event may become a forward extremity and move current state."""
        return not (self.is_outlier or self.soft_failed or self.rejected_reason is not None)

    async def get_state_before(self, store: StateReader) -> Mapping[StateKey, str]:
        """The whole state before the event, read at most once per context."""
        if self._before is None:
            raise MatrixError(
                "an outlier has no state before it", errcode="M_INVALID_PARAM", http_status=400
            )
        return await self._before.get(store)

    async def get_state_before_for_keys(
        self, store: StateReader, keys: Collection[StateKey]
    ) -> dict[StateKey, str]:
        """The entries of the state before the event for ``keys``.

        Reads only those keys unless the whole map is held already, and never
        reads the whole map: checking an event needs a handful of keys of a
        state that may have tens of thousands.
        """
        if self._before is None:
            raise MatrixError(
                "an outlier has no state before it", errcode="M_INVALID_PARAM", http_status=400
            )
        return await self._before.get_for_keys(store, keys)

    def as_rejected(self, reason: str) -> EventContext:
        """This context for an event rejected for ``reason``: state after = state before."""
        return dataclasses.replace(
            self, rejected_reason=reason, state_group_after=self.state_group_before
        )

    def as_soft_failed(self) -> EventContext:
        """This context for an event that failed against the current state only."""
        return dataclasses.replace(self, soft_failed=True)

    def to_storage(self) -> EventStateContext | None:
        """The context as storage records it; None for an outlier."""
        if self.state_group_before is None:
            return None
        return EventStateContext(
            state_group_before=self.state_group_before,
            state_group_after=self.state_group_after,
            partial_state=self.partial_state,
        )


def event_to_persist(event: Pdu, context: EventContext) -> EventToPersist:
    """The event and its context as storage writes them, with the bytes as received."""
    return EventToPersist(
        event_id=event.event_id,
        room_id=event.room_id,
        room_version=event.room_version.identifier,
        type=event.type,
        state_key=event.state_key,
        sender=event.sender,
        depth=event.depth,
        origin_server_ts=event.origin_server_ts,
        json=event.raw,
        prev_event_ids=event.prev_event_ids,
        auth_event_ids=event.auth_event_ids,
        outlier=context.is_outlier,
        rejected_reason=context.rejected_reason,
        soft_failed=context.soft_failed,
        context=context.to_storage(),
    )


def out_of_band_to_persist(event: Pdu, *, sent_through: str | None = None) -> EventToPersist:
    """A membership of one of our users in a room this server is not in,
    as storage writes it: an outlier that is the user's newest membership
    there, whatever the room's state here (from when we were in it) says.
    ``sent_through`` names the server a knock was made through.
    """
    return msgspec.structs.replace(
        event_to_persist(event, EventContext.for_outlier()),
        out_of_band=True,
        sent_through=sent_through,
    )


async def compute_event_context(
    event: Pdu,
    store: StateReader,
    persister: EventPersister,
    *,
    outlier: bool = False,
    state_ids_before: Mapping[StateKey, str] | None = None,
    partial_state: bool = False,
    known_room: bool = False,
) -> EventContext:
    """Work out the state before ``event`` and store it as a group if it is new.

    ``state_ids_before`` is the state before the event when the caller has
    it from elsewhere: the state a send_join response gives for a join, or
    the state a remote server gives for an event whose prev events are
    missing here. ``partial_state`` says it came from a partial join
    response. Without it, every prev event must have its state here, or
    :class:`UnknownPrevStateError` is raised. Outliers get no state, take no
    ``state_ids_before`` and are never partial. ``known_room``: the room
    is stored here already (ingestion, the un-partial-state task), so a
    state stored whole does not make it known: one purged meanwhile stays
    gone (:class:`~ranvier.errors.RoomGoneError`).
    """
    if outlier:
        if state_ids_before is not None or partial_state:
            raise MatrixError(
                f"{event.event_id} is an outlier: it takes no state before it",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        return EventContext.for_outlier()

    prev_ids = tuple(dict.fromkeys(event.prev_event_ids))
    # Partial state is asked before the groups are read. The un-partial-state
    # task gives events their full state without the room's lock, and may do
    # so between the two reads: asked first, a prev event redone in between
    # only makes a full group look partial, and the event is redone too;
    # asked after, its partial group would be taken for full and kept.
    partial = partial_state or await _any_partial(store, prev_ids)
    after_groups: dict[str, int] = {}
    for prev_id in prev_ids:
        groups = await store.get_event_state_groups(prev_id)
        if groups is not None:
            after_groups[prev_id] = groups.after

    if state_ids_before is not None:
        bases: dict[int, Mapping[StateKey, str]] = {}
        if after_groups:
            # One known prev event's state is enough to store a delta against.
            first = next(iter(after_groups.values()))
            bases[first] = await store.get_state_ids(first)
        state = dict(state_ids_before)
        group = await _store_state(persister, event, state, bases, make_known=not known_room)
        return _context(group, partial, state)

    unknown = [prev_id for prev_id in prev_ids if prev_id not in after_groups]
    if unknown or (not prev_ids and event.type != "m.room.create"):
        raise UnknownPrevStateError(event.event_id, unknown)
    if not prev_ids:
        # The create event: the room starts from no state at all.
        group = await _store_state(persister, event, {}, {}, make_known=not known_room)
        return _context(group, partial, {})

    distinct = list(dict.fromkeys(after_groups.values()))
    if len(distinct) == 1:
        return _context(distinct[0], partial, None)
    resolved = await resolve_state_groups(store, event.room_id, event.room_version, distinct)
    group = await _store_resolved(persister, event.room_id, resolved)
    return _context(group, partial, None)


def _context(group: int, partial: bool, state: Mapping[StateKey, str] | None) -> EventContext:
    return EventContext(
        state_group_before=group,
        partial_state=partial,
        _before=_StateBefore(group, state),
    )


async def _any_partial(store: StateReader, event_ids: Collection[str]) -> bool:
    """Whether any of ``event_ids`` has partial state.

    Asked of the events themselves, not of the room's list of partial-state
    events, which a big room joined moments ago may have thousands of.
    """
    if not event_ids:
        return False
    return bool(await store.get_partial_state_event_ids(event_ids))


async def _store_resolved(persister: EventPersister, room_id: str, resolved: ResolvedGroups) -> int:
    """The group of a resolved state, stored as changes against the closest
    of the groups resolved; one of them if it is that state already.
    """
    group, delta = resolved.closest()
    if not delta:
        return group
    return await persister.store_state_group(room_id, group, delta)


async def _store_state(
    persister: EventPersister,
    event: Pdu,
    state: Mapping[StateKey, str],
    bases: Mapping[int, Mapping[StateKey, str]],
    *,
    make_known: bool = True,
) -> int:
    """The group of ``state``, given whole, stored as changes against the
    closest of ``bases``.

    With no base, the state is stored whole, in a room made known first
    (unless told not to: it must be known already).
    """
    if not bases:
        if make_known:
            await persister.store_room(event.room_id, event.room_version.identifier)
        return await persister.store_state_group(event.room_id, None, dict(state))
    deltas = {group: changes_between(base, state) for group, base in bases.items()}
    group = min(deltas, key=lambda candidate: len(deltas[candidate]))
    if not deltas[group]:
        return group
    return await persister.store_state_group(event.room_id, group, deltas[group])


async def compute_current_state_after(
    event: Pdu,
    context: EventContext,
    store: StateReader,
    persister: EventPersister,
) -> int | None:
    """The state group that is the room's current state once ``event`` is written.

    Writing an accepted event replaces its prev events among the room's
    forward extremities. When it is then the only one, storage makes the
    state after it current by itself and this returns None; so it does for
    an event that is not accepted, which moves nothing. Otherwise the
    states after the remaining extremities are resolved, the result stored
    as a group, and that group returned, for the caller to name to
    :meth:`~ranvier.core.interfaces.EventPersister.persist_events` as the
    room's current state.
    """
    if not context.accepted or context.state_group_before is None:
        return None
    extremities = set(await store.get_forward_extremities(event.room_id))
    extremities.difference_update(event.prev_event_ids)
    extremities.discard(event.event_id)
    if not extremities:
        return None

    # The state after the event: it is not written yet, so its group is the
    # state before it with the event on top, and the loader is given it.
    on_top: dict[StateKey, str | None] = {}
    if event.state_key is not None:
        on_top[(event.type, event.state_key)] = event.event_id
    state_sets = [GroupState(context.state_group_before, on_top)]
    others: set[int] = set()
    for extremity in sorted(extremities):
        groups = await store.get_event_state_groups(extremity)
        if groups is None or groups.after in others:
            continue
        others.add(groups.after)
        state_sets.append(GroupState(groups.after))
    loader = EventLoader(store, event.room_version)
    loader.add(event)
    resolved = await resolve_state_groups(
        store, event.room_id, event.room_version, state_sets, loader=loader
    )
    return await _store_resolved(persister, event.room_id, resolved)
