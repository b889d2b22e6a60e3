"""State resolution on Trio, with the events it needs read from storage.

:func:`resolve_state_groups` resolves room states stored as state groups,
and :func:`resolve_state_maps` states given whole (a remote server's), the
way :mod:`ranvier.protocol.state_res` defines. Around the algorithm they add
what a running server needs:

- only the changes of a fork are read. State groups are stored as chains of
  deltas, and storage gives the groups' changes against one of them (the
  base) from the rows between them; the resolution works on those, reads
  the base's entries at the few keys the auth checks look up, and answers
  with the resolved state as changes against the base, which is what a new
  state group stores. A fork in a room of 50,000 members costs the fork;
- only the events the algorithm looks at are read. The conflicted state
  set is worked out first; where the states agree, nothing is read. Then
  the auth difference and (v2.1) the conflicted state subgraph are computed
  by walking ``auth_events`` through storage, and the events the resolution
  reads are loaded: the full conflicted set, the events they cite, the
  states' events at the keys the auth checks look up, and the power levels
  events the mainline ordering follows;
- it drives the resolution a few dozen events at a time with a Trio
  checkpoint between steps, so a long resolution in a big room does not
  stall other tasks.

The auth difference is the one the deployed servers compute (see
:mod:`ranvier.protocol.auth_chain` for the reading and why): a state set's
full auth chain is its events and the union of their auth chains. An event
every state set holds is then in every full chain, and so is its auth
chain, so only the events that differ between the sets and their chains
can hold events of the difference; those are walked first. An event found
in some of them and not in all is in the difference unless every set holds
it, which one lookup of its key in the states shows, or the chain of the
shared events holds it. The conflicted events need neither test: the full
conflicted set holds them whatever the difference says, so the difference
computed here leaves them out. Only an event still in doubt after that,
one that no state set holds (an older membership or power levels event
cited on one side), has the shared events read (the whole base state) and
their chains walked a batch at a time until it is found: one that many
shared events cite is found in the first batch. Showing that an event is
*not* in that chain takes all of it, as storage keeps no index of which
events cite an event; that happens when one side cites an event that the
states have since replaced, as a member who joined and then changed their
name on one side of a fork.
"""

from __future__ import annotations

from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ranvier.errors import MatrixError
from ranvier.protocol.auth import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    StateKey,
    auth_state_keys,
    create_event_id_for_room,
)
from ranvier.protocol.auth_chain import conflicted_state_subgraph
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import RoomVersion, StateResAlgorithm
from ranvier.protocol.state_res import (
    DEFAULT_YIELD_EVERY,
    ChangedState,
    StateDelta,
    StateMap,
    resolve_state_delta_steps,
    resolve_state_steps,
    separate_state,
)

from .interfaces import StateReader
from .loading import EventLoader

__all__ = [
    "GroupState",
    "ResolvedGroups",
    "changes_between",
    "drive_steps",
    "resolve_state_groups",
    "resolve_state_maps",
]

_Result = TypeVar("_Result")

#: How many shared events' chains the auth difference walks first.
_FIRST_SHARED_BATCH = 64


async def drive_steps(steps: Generator[None, None, _Result]) -> _Result:
    """Run a yielding computation to its end, letting other tasks run at each yield."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _Result = done.value
            return result
        await trio.lowlevel.checkpoint()


# --- States stored as state groups ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupState:
    """A state given as a stored state group with changes on top.

    The state after an event that is not written yet is its state-before
    group with the event itself on top: storage stores that state only
    together with the event.
    """

    group: int
    changes: StateDelta = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class ResolvedGroups:
    """A resolved state as changes against a stored group.

    ``changes`` turns the state of ``base_group`` (the first state set's
    group) into the resolved state, None marking a key of the base that the
    resolved state lacks. :meth:`closest` finds the given group a new state
    group is best stored against.
    """

    base_group: int
    changes: Mapping[StateKey, str | None]
    #: Every group given, in order, with its changes against the base.
    group_deltas: Mapping[int, StateDelta] = field(repr=False)
    #: The base's entries at every key that ``changes`` or a group's delta names.
    base_entries: Mapping[StateKey, str] = field(repr=False)

    def closest(self) -> tuple[int, dict[StateKey, str | None]]:
        """The given group with the fewest changes from the resolved state
        (the first of them on a tie), and those changes.

        Storing the resolved state as those changes against that group adds
        the fewest rows; empty changes mean the group is the resolved state.
        """
        best: tuple[int, dict[StateKey, str | None]] | None = None
        changes, base = self.changes, self.base_entries
        for group, delta in self.group_deltas.items():
            against: dict[StateKey, str | None] = {}
            for key in changes.keys() | delta.keys():
                at_base = base.get(key)
                resolved = changes.get(key, at_base)
                if resolved != delta.get(key, at_base):
                    against[key] = resolved
            if best is None or len(against) < len(best[1]):
                best = (group, against)
        assert best is not None  # a resolution has at least one state set
        return best


async def resolve_state_groups(
    store: StateReader,
    room_id: str,
    room_version: RoomVersion,
    state_sets: Sequence[int | GroupState],
    *,
    loader: EventLoader | None = None,
    yield_every: int = DEFAULT_YIELD_EVERY,
) -> ResolvedGroups:
    """Resolve the states of stored groups of room ``room_id`` into one.

    Each state set is a group, or a group with changes on top
    (:class:`GroupState`). Storage gives every group's changes against the
    first one's (:meth:`~ranvier.core.interfaces.StateReader.get_state_deltas`),
    and the result is the resolved state as changes against that group too:
    the entries where the states agree are never read, unless the auth
    difference needs the shared events' chain (see the module's docstring).

    Events are read through ``loader`` (a new one on ``store`` if None), so
    a caller that loads other events of the same work can share them.
    """
    sets = [entry if isinstance(entry, GroupState) else GroupState(entry) for entry in state_sets]
    if not sets:
        raise MatrixError(
            f"no state of {room_id} to resolve", errcode="M_INVALID_PARAM", http_status=400
        )
    groups = list(dict.fromkeys(entry.group for entry in sets))
    base_group, stored = await store.get_state_deltas(groups)
    group_deltas = {group: stored[group] for group in groups}
    deltas: list[StateDelta] = [
        {**group_deltas[entry.group], **entry.changes}
        if entry.changes
        else group_deltas[entry.group]
        for entry in sets
    ]
    base = _BaseEntries(store, base_group)
    changed_keys: set[StateKey] = set().union(*deltas)
    await base.read(changed_keys)

    def resolved(changes: Mapping[StateKey, str | None]) -> ResolvedGroups:
        return ResolvedGroups(base_group, changes, group_deltas, base)

    conflicted_ids: set[str] = set()
    # The events of each set at the keys some set changes.
    changed_ids: list[set[str]] = [set() for _ in deltas]
    for key in changed_keys:
        at_base = base.get(key)
        at_key = [delta.get(key, at_base) for delta in deltas]
        for ids, event_id in zip(changed_ids, at_key, strict=True):
            if event_id is not None:
                ids.add(event_id)
        if any(event_id != at_key[0] for event_id in at_key):
            conflicted_ids.update(event_id for event_id in at_key if event_id is not None)
    if not conflicted_ids:
        # Every set is the same state: the first one.
        return resolved(
            {key: event_id for key, event_id in deltas[0].items() if event_id != base.get(key)}
        )
    if loader is None:
        loader = EventLoader(store, room_version)

    shared_changed = changed_ids[0].intersection(*changed_ids[1:])

    async def shared_events() -> list[str]:
        # The base's events at the keys no set changes are in every set.
        whole = await store.get_state_ids(base_group)
        return [
            *shared_changed,
            *(event_id for key, event_id in whole.items() if key not in changed_keys),
        ]

    async def held_by_every_set(candidates: set[str]) -> set[str]:
        # Which candidates every set holds: the same event at a key every
        # set changes alike, or the base's at a key none changes.
        events = await loader.load(candidates)
        at_keys = [
            (event_id, (event.type, event.state_key))
            for event_id, event in events.items()
            if event.state_key is not None
        ]
        await base.read(key for _, key in at_keys)
        return {
            event_id
            for event_id, key in at_keys
            if event_id in shared_changed or (key not in changed_keys and base.get(key) == event_id)
        }

    auth_difference = await _auth_difference(
        loader,
        [ids - shared_changed for ids in changed_ids],
        held_by_every_set,
        shared_events,
    )
    full_conflicted, subgraph = await _full_conflicted(
        loader, room_version, conflicted_ids, auth_difference
    )
    keys, cited = await _load_conflicted(loader, room_id, room_version, full_conflicted)
    # The resolution reads the base wherever it looks a key up: the auth
    # checks' keys, the keys of the events it replays, the join rules.
    replayed_keys = {
        (event.type, event.state_key)
        for event_id in full_conflicted
        if (event := loader.get(event_id)) is not None and event.state_key is not None
    }
    await base.read(keys | replayed_keys | {JOIN_RULES_KEY})
    await _load_at_keys(loader, [ChangedState(base, delta) for delta in deltas], keys, cited)
    await _load_mainlines(loader)
    changes = await drive_steps(
        resolve_state_delta_steps(
            room_version,
            base,
            deltas,
            loader.events,
            auth_chain_difference=auth_difference,
            conflicted_subgraph=subgraph,
            rejected=loader.rejected,
            yield_every=yield_every,
        )
    )
    return resolved(changes)


class _UnreadKeyError(RuntimeError):
    """The resolution looked up a key of the base state that was not read.

    Never raised while this module reads every key the algorithm looks up;
    it stands in for a silently wrong answer if that ever stops being so.
    """


class _BaseEntries(Mapping[StateKey, str]):
    """The entries of a state group at the keys read so far, read on request.

    It is the base state the delta resolution reads: lookups of keys read
    answer as the whole state would, and a lookup of any other key raises
    :class:`_UnreadKeyError` instead of answering that the state lacks it.
    """

    __slots__ = ("_entries", "_group", "_read", "_store")

    def __init__(self, store: StateReader, group: int) -> None:
        self._store = store
        self._group = group
        self._entries: dict[StateKey, str] = {}
        self._read: set[StateKey] = set()

    async def read(self, keys: Iterable[StateKey]) -> None:
        """Read the group's entries at those of ``keys`` not read yet."""
        unread = {key for key in keys if key not in self._read}
        if unread:
            self._entries.update(await self._store.get_state_ids_for_keys(self._group, unread))
            self._read |= unread

    def __getitem__(self, key: StateKey) -> str:
        if key not in self._read:
            raise _UnreadKeyError(f"the entry of state group {self._group} at {key} was not read")
        return self._entries[key]

    def __iter__(self) -> Iterator[StateKey]:
        raise _UnreadKeyError(f"state group {self._group} is not read whole")

    def __len__(self) -> int:
        raise _UnreadKeyError(f"state group {self._group} is not read whole")


# --- States given whole ----------------------------------------------------------------


async def resolve_state_maps(
    store: StateReader,
    room_id: str,
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    *,
    loader: EventLoader | None = None,
    yield_every: int = DEFAULT_YIELD_EVERY,
) -> dict[StateKey, str]:
    """Resolve the states ``state_sets`` of room ``room_id``, given whole, into one.

    For states that are not stored groups, such as states a remote server
    sent; stored states resolve for the cost of their changes with
    :func:`resolve_state_groups`. Events are read through ``loader`` (a new
    one on ``store`` if None), so a caller that loads other events of the
    same work can share them.
    """
    if not state_sets:
        return {}
    unconflicted, conflicted = separate_state(state_sets)
    if not conflicted:
        return unconflicted
    if loader is None:
        loader = EventLoader(store, room_version)
    conflicted_ids: set[str] = set().union(*conflicted.values())

    sets = [set(state_set.values()) for state_set in state_sets]
    shared = sets[0].intersection(*sets[1:])

    async def held_by_every_set(candidates: set[str]) -> set[str]:
        return candidates & shared

    async def shared_events() -> list[str]:
        return [event_id for event_id in state_sets[0].values() if event_id in shared]

    auth_difference = await _auth_difference(
        loader, [state_set - shared for state_set in sets], held_by_every_set, shared_events
    )
    full_conflicted, subgraph = await _full_conflicted(
        loader, room_version, conflicted_ids, auth_difference
    )
    keys, cited = await _load_conflicted(loader, room_id, room_version, full_conflicted)
    await _load_at_keys(loader, state_sets, keys, cited)
    await _load_mainlines(loader)
    return await drive_steps(
        resolve_state_steps(
            room_version,
            state_sets,
            loader.events,
            auth_chain_difference=auth_difference,
            conflicted_subgraph=subgraph,
            rejected=loader.rejected,
            yield_every=yield_every,
        )
    )


# --- The steps both share -------------------------------------------------------------


async def _auth_difference(
    loader: EventLoader,
    unshared: Sequence[set[str]],
    held_by_every_set: Callable[[set[str]], Awaitable[set[str]]],
    shared_events: Callable[[], Awaitable[Sequence[str]]],
) -> set[str]:
    """The events of the auth difference that are not conflicted.

    ``unshared`` holds, per state set, its events that are not in every
    set: together, the conflicted events. ``held_by_every_set`` tells which
    of some events every set holds. ``shared_events`` gives the events
    every set holds, and is asked only when an event that none of them is
    stays in doubt.
    """
    reached = [events | await loader.auth_chain(events) for events in unshared]
    candidates = set().union(*reached) - reached[0].intersection(*reached[1:])
    candidates -= set().union(*unshared)
    if candidates:
        candidates -= await held_by_every_set(candidates)
    if not candidates:
        return candidates
    # An event of the shared events' chain is in every full chain. Their
    # chains are walked a batch at a time, each batch twice the last, until
    # every candidate is found: one that many shared events cite (the join
    # rules, which every join cites) is found in the first batch, and only
    # a candidate outside the chain has the whole of it walked.
    shared = await shared_events()
    remaining = set(candidates)
    start, size = 0, _FIRST_SHARED_BATCH
    while remaining and start < len(shared):
        remaining -= await loader.auth_chain(shared[start : start + size], until_found=remaining)
        start += size
        size *= 2
    return remaining


async def _full_conflicted(
    loader: EventLoader,
    room_version: RoomVersion,
    conflicted_ids: set[str],
    auth_difference: set[str],
) -> tuple[set[str], set[str] | None]:
    """The full conflicted set, and (v2.1) the conflicted state subgraph in it."""
    full_conflicted = conflicted_ids | auth_difference
    if room_version.state_res is not StateResAlgorithm.V2_1:
        return full_conflicted, None
    # The chains of the conflicted events were walked for the auth
    # difference: they differ between the sets.
    await loader.auth_chain(conflicted_ids)
    subgraph = conflicted_state_subgraph(conflicted_ids, loader.edges)
    return full_conflicted | subgraph, subgraph


async def _load_conflicted(
    loader: EventLoader,
    room_id: str,
    room_version: RoomVersion,
    full_conflicted: Iterable[str],
) -> tuple[set[StateKey], set[str]]:
    """Load the full conflicted set (and, from v12, the create event).

    Returns the keys of the states the auth checks of those events look up,
    and the events they cite.
    """
    wanted = set(full_conflicted)
    if room_version.room_id_from_create_event:
        wanted.add(create_event_id_for_room(room_id))
    conflicted_events = await loader.load(wanted)
    keys: set[StateKey] = {CREATE_KEY, POWER_LEVELS_KEY}
    cited: set[str] = set()
    for event in conflicted_events.values():
        keys.update(auth_state_keys(event))
        cited.update(event.auth_event_ids)
    return keys, cited


async def _load_at_keys(
    loader: EventLoader,
    state_sets: Sequence[Mapping[StateKey, str]],
    keys: Iterable[StateKey],
    cited: set[str],
) -> None:
    """Load the events ``cited`` and the states' events at ``keys``."""
    at_keys = {
        event_id
        for state_set in state_sets
        for key in keys
        if (event_id := state_set.get(key)) is not None
    }
    await loader.load(cited | at_keys)


async def _load_mainlines(loader: EventLoader) -> None:
    """Load the mainlines: power levels events, followed through the power
    levels events each cites, back to the room's first.
    """
    pending = _power_levels_among(loader.events.values())
    seen: set[str] = set()
    while pending:
        seen |= pending
        found = await loader.load(
            auth_id for event_id in pending for auth_id in loader.edges(event_id)
        )
        pending = _power_levels_among(found.values()) - seen


def _power_levels_among(events: Iterable[Pdu]) -> set[str]:
    return {
        event.event_id
        for event in events
        if event.type == POWER_LEVELS_KEY[0] and event.state_key == ""
    }


def changes_between(
    base: Mapping[StateKey, str], state: Mapping[StateKey, str]
) -> dict[StateKey, str | None]:
    """``state`` as changes against ``base``: what a state group stores, None
    marking a key that is gone.
    """
    delta: dict[StateKey, str | None] = {
        key: event_id for key, event_id in state.items() if base.get(key) != event_id
    }
    delta.update((key, None) for key in base if key not in state)
    return delta
