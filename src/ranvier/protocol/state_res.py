"""State resolution v2 (room versions 6-11) and v2.1 (room version 12).

Given the states of a room at several points (the states after each of an
event's ``prev_events``, say), state resolution picks the one state they
resolve to, the same on every server. The algorithm is the spec's, step by
step (see "State resolution" in the room version pages):

1. split the states into the *unconflicted state map* and the *conflicted
   state set*; the *full conflicted set* adds the auth difference and, in
   v2.1, the conflicted state subgraph;
2. sort the power events of the full conflicted set, with the events of
   their auth chains that are in it, in reverse topological power order,
   and apply them by the *iterative auth checks*, starting (v2) from the
   unconflicted state or (v2.1) from nothing;
3. sort the other events of the full conflicted set by mainline order
   based on the power levels reached, and apply them the same way;
4. put the unconflicted state back on top.

Cost follows the full conflicted set and the auth events it leads to, not
the size of the room. The states are handled as one *base* state and, per
state set, its changes against the base (:data:`StateDelta`): only keys some
set changes can be conflicted, so splitting costs the size of the changes,
and the resolved state comes back as changes against the same base
(:class:`ChangedState` reads them as a whole state without a copy).
Storage keeps state groups as such delta chains, so a caller holding a
base state and each fork's changes against it passes them as they are to
:func:`resolve_state_delta`. :func:`resolve_state` takes whole state maps:
it reads the first as the base and finds the others' differences from it,
which is a pass over whole maps, but a cheap one where the maps were
copied from one another: their entries line up and are compared a slice
at a time, the same objects without looking into them.

So that a long resolution does not stall an event loop, the work is a
generator that yields every few dozen events (:func:`resolve_state_steps`,
:func:`resolve_state_delta_steps`); the plain functions run it to the end.

Where the spec is open to reading, ranvier reads it as Synapse, ruma and
gomatrixserverlib do, so that servers agree: the events "in the auth chain
of P which also belong to the full conflicted set" are found by walking
``auth_events`` through events of the full conflicted set only; and from
room version 12, where events no longer cite the create event, the auth
checks and the power level of a sender take the create event that the room
ID names. The auth difference is Synapse's: each state set's own events
count as part of its full auth chain, so no event every set holds is ever
replayed (see :mod:`ranvier.protocol.auth_chain` for the spec's words and
the states that resolve otherwise).
"""

from __future__ import annotations

import heapq
from collections.abc import (
    Callable,
    Collection,
    Container,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Final, TypeVar

from ranvier.errors import AuthError
from ranvier.protocol.auth import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    StateKey,
    check_auth_rules,
    create_event_id_for_room,
    membership_auth_types,
)
from ranvier.protocol.auth_chain import (
    auth_chain_difference as compute_auth_chain_difference,
)
from ranvier.protocol.auth_chain import (
    auth_edges_of,
    conflicted_state_subgraph,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import get_user_power_level
from ranvier.protocol.room_versions import (
    RoomVersion,
    RoomVersionLike,
    StateResAlgorithm,
    get_room_version,
)

__all__ = [
    "DEFAULT_YIELD_EVERY",
    "ChangedState",
    "StateDelta",
    "StateMap",
    "is_power_event",
    "resolve_state",
    "resolve_state_delta",
    "resolve_state_delta_steps",
    "resolve_state_steps",
    "reverse_topological_power_order",
    "separate_state",
]

#: A room state: ``(type, state_key)`` to event ID.
StateMap = Mapping[StateKey, str]

#: Changes to a room state: a key's new event ID, or None where the key is
#: gone. Keys it leaves out are as they were. Storage's deltas have this form.
StateDelta = Mapping[StateKey, str | None]

#: How many events the resolution handles between two yields.
DEFAULT_YIELD_EVERY: Final = 50

_CREATE_TYPE: Final = CREATE_KEY[0]
_POWER_LEVELS_TYPE: Final = POWER_LEVELS_KEY[0]

#: How many entries of two state maps are compared at once while splitting.
_RUN_SLICE: Final = 256

# The keys whose events the auth rules read for nearly every event.
_SHARED_KEYS: Final = frozenset((CREATE_KEY, POWER_LEVELS_KEY, JOIN_RULES_KEY))

# Marks a key the state being built leaves to the base; never an event ID.
_FROM_BASE: Final = "\x00base"


# --- Splitting the states -------------------------------------------------------------


def _differences(first: StateMap, other: StateMap) -> list[tuple[StateKey, str | None, str | None]]:
    """Where ``other`` differs from ``first``: ``(key, first's event, other's event)``.

    None stands for no event: a key only one of the two has.

    Maps copied from one another list the keys they share in the same order,
    so the two are compared position by position, a slice of
    :data:`_RUN_SLICE` entries at a time (list comparison, which takes the
    same object as equal without comparing it), as long as their keys line
    up; only slices that differ are looked at entry by entry, and only keys
    past the point where the keys stop lining up are looked up by hash.
    Maps built apart are compared by lookups throughout.
    """
    first_keys, other_keys = list(first), list(other)
    first_ids, other_ids = list(first.values()), list(other.values())
    found: list[tuple[StateKey, str | None, str | None]] = []
    lined_up = min(len(first_keys), len(other_keys))
    for start in range(0, lined_up, _RUN_SLICE):
        end = min(start + _RUN_SLICE, lined_up)
        if first_keys[start:end] != other_keys[start:end]:
            lined_up = next(
                index for index in range(start, end) if first_keys[index] != other_keys[index]
            )
            end = lined_up
        if first_ids[start:end] != other_ids[start:end]:
            found.extend(
                (first_keys[index], first_ids[index], other_ids[index])
                for index in range(start, end)
                if first_ids[index] != other_ids[index]
            )
        if end == lined_up:
            break
    for index in range(lined_up, len(first_keys)):
        key = first_keys[index]
        other_id = other.get(key)
        if other_id != first_ids[index]:
            found.append((key, first_ids[index], other_id))
    for index in range(lined_up, len(other_keys)):
        key = other_keys[index]
        if key not in first:
            found.append((key, None, other_ids[index]))
    return found


class _Split:
    """State sets split against a base state: what the resolution needs of them.

    ``unconflicted_changes`` holds the unconflicted keys whose event is not
    the base's; ``conflicted`` the conflicted state set; ``dropped`` the
    base's keys that no set has. Every other key of the base is
    unconflicted with the base's event.
    """

    __slots__ = ("base", "base_at", "conflicted", "dropped", "unconflicted_changes")

    def __init__(self, base: StateMap) -> None:
        self.base = base
        self.unconflicted_changes: dict[StateKey, str] = {}
        self.conflicted: dict[StateKey, set[str]] = {}
        self.dropped: list[StateKey] = []
        # The base's events at the keys some set changes, where known.
        self.base_at: dict[StateKey, str | None] = {}

    @classmethod
    def of_deltas(cls, base: StateMap, deltas: Sequence[StateDelta]) -> _Split:
        """The split of the state sets ``base`` + each of ``deltas``."""
        split = cls(base)
        if not deltas:
            # No state at all: every key of the base is gone.
            split.dropped.extend(base)
            split.base_at.update(base)
            return split
        base_get = base.get
        base_at = split.base_at
        gets = [delta.get for delta in deltas]
        for key in set().union(*deltas):
            at_base = base_at[key] = base_get(key)
            event_id = gets[0](key, at_base)
            if any(get(key, at_base) != event_id for get in gets):
                ids: set[str] = set()
                for get in gets:
                    other_id = get(key, at_base)
                    if other_id is not None:
                        ids.add(other_id)
                split.conflicted[key] = ids
            elif event_id is None:
                if at_base is not None:
                    split.dropped.append(key)
            elif event_id != at_base:
                split.unconflicted_changes[key] = event_id
        return split

    @classmethod
    def of_maps(cls, state_sets: Sequence[StateMap]) -> _Split:
        """The split of whole state maps, against the first.

        Every key where a set differs from the first is conflicted, and
        every key of the first where none does is not, so only the
        differences are looked at.
        """
        first = state_sets[0]
        split = cls(first)
        conflicted = split.conflicted
        for other in state_sets[1:]:
            if other is first:
                continue
            for key, first_id, other_id in _differences(first, other):
                ids = conflicted.get(key)
                if ids is None:
                    ids = conflicted[key] = set() if first_id is None else {first_id}
                if other_id is not None:
                    ids.add(other_id)
        return split

    def unconflicted_overrides(self) -> dict[StateKey, str | None]:
        """Where the unconflicted state map differs from the base (None: no entry)."""
        overrides: dict[StateKey, str | None] = dict.fromkeys(self.conflicted)
        overrides.update(dict.fromkeys(self.dropped))
        overrides.update(self.unconflicted_changes)
        return overrides


def separate_state(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split state sets into the unconflicted state map and the conflicted state set.

    A key is unconflicted when every set has it with the same event; the
    conflicted state set holds, by key, the events the sets disagree on (a
    set that lacks the key disagrees with the others, but adds no event).
    """
    if not state_sets:
        return {}, {}
    split = _Split.of_maps(state_sets)
    unconflicted = dict(state_sets[0])
    for key in split.conflicted:
        unconflicted.pop(key, None)
    return unconflicted, split.conflicted


def is_power_event(event: Pdu) -> bool:
    """Whether ``event`` is a *power event*: one that may take a power away.

    Those are power levels and join rules events, and kicks and bans (a
    leave or ban membership whose sender is not its target).
    """
    state_key = event.state_key
    if state_key is None:
        return False
    if event.type == "m.room.member":
        return event.membership in ("leave", "ban") and event.sender != state_key
    return state_key == "" and event.type in (_POWER_LEVELS_TYPE, "m.room.join_rules")


def reverse_topological_power_order(
    auth_graph: Mapping[str, Collection[str]], sort_key: Mapping[str, tuple[int, int]]
) -> list[str]:
    """Order the events of ``auth_graph`` so that every event comes after its auth events.

    ``auth_graph`` maps each event to the events of the graph it cites. Among
    the events free to come next, the one whose sender has the highest power
    level comes first, then the lowest ``origin_server_ts``, then the lowest
    event ID: ``sort_key`` gives ``(power level, origin_server_ts)`` per
    event. This is Kahn's algorithm choosing the smallest candidate, which
    gives the lexicographically smallest topological order the spec asks for.
    """
    cited_by: dict[str, list[str]] = {event_id: [] for event_id in auth_graph}
    waiting_on: dict[str, int] = {}
    ready: list[tuple[int, int, str]] = []
    for event_id, auth_ids in auth_graph.items():
        waiting_on[event_id] = len(auth_ids)
        for auth_id in auth_ids:
            cited_by[auth_id].append(event_id)
        if not auth_ids:
            power, ts = sort_key[event_id]
            ready.append((-power, ts, event_id))
    heapq.heapify(ready)
    heappop, heappush = heapq.heappop, heapq.heappush
    order: list[str] = []
    while ready:
        event_id = heappop(ready)[2]
        order.append(event_id)
        for child in cited_by[event_id]:
            left = waiting_on[child] - 1
            waiting_on[child] = left
            if not left:
                power, ts = sort_key[child]
                heappush(ready, (-power, ts, child))
    if len(order) != len(auth_graph):
        raise ValueError("the auth events of the events to sort form a cycle")
    return order


# --- Entry points ---------------------------------------------------------------------


_Result = TypeVar("_Result")


def _run(steps: Generator[None, None, _Result]) -> _Result:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _Result = done.value
            return result


def resolve_state(
    room_version: RoomVersionLike,
    state_sets: Sequence[StateMap],
    events: Mapping[str, Pdu],
    *,
    auth_chain_difference: Collection[str] | None = None,
    conflicted_subgraph: Collection[str] | None = None,
    rejected: Container[str] = frozenset(),
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` to one state; see :func:`resolve_state_steps`."""
    return _run(
        resolve_state_steps(
            room_version,
            state_sets,
            events,
            auth_chain_difference=auth_chain_difference,
            conflicted_subgraph=conflicted_subgraph,
            rejected=rejected,
        )
    )


def resolve_state_delta(
    room_version: RoomVersionLike,
    base: StateMap,
    deltas: Sequence[StateDelta],
    events: Mapping[str, Pdu],
    *,
    auth_chain_difference: Collection[str] | None = None,
    conflicted_subgraph: Collection[str] | None = None,
    rejected: Container[str] = frozenset(),
) -> dict[StateKey, str | None]:
    """Resolve the states ``base`` + each of ``deltas``; see :func:`resolve_state_delta_steps`."""
    return _run(
        resolve_state_delta_steps(
            room_version,
            base,
            deltas,
            events,
            auth_chain_difference=auth_chain_difference,
            conflicted_subgraph=conflicted_subgraph,
            rejected=rejected,
        )
    )


def resolve_state_steps(
    room_version: RoomVersionLike,
    state_sets: Sequence[StateMap],
    events: Mapping[str, Pdu],
    *,
    auth_chain_difference: Collection[str] | None = None,
    conflicted_subgraph: Collection[str] | None = None,
    rejected: Container[str] = frozenset(),
    yield_every: int = DEFAULT_YIELD_EVERY,
) -> Generator[None, None, dict[StateKey, str]]:
    """Resolve ``state_sets``, yielding every ``yield_every`` events handled.

    The generator's return value (``StopIteration.value``) is the resolved
    state. An async caller drives it and lets other tasks run between steps::

        steps = resolve_state_steps(...)
        try:
            while True:
                next(steps)
                await trio.lowlevel.checkpoint()
        except StopIteration as done:
            state = done.value

    ``events`` maps event IDs to events. It must hold:

    - every event of the full conflicted set: the conflicted events, the
      auth difference and (v2.1) the conflicted state subgraph;
    - every event those cite in ``auth_events``, and the power levels
      events reached from them by following ``auth_events`` from power
      levels event to power levels event (the mainlines);
    - the events of the unconflicted state at the keys the auth checks
      look up: power levels, join rules, the create event and the
      memberships and third-party invites the conflicted events concern;
    - from room version 12, the create event.

    Events it lacks are left out, as servers that cannot fetch an event do:
    a missing auth event is not used, a missing member of the full
    conflicted set is not replayed. A mapping that loads events on demand
    works as well as a dict.

    ``auth_chain_difference`` is the auth difference of the state sets, if
    the caller has it (storage computes it with an index); without it,
    ``events`` must also hold the auth chains of every event of every state
    set, and it is computed from them. ``conflicted_subgraph`` likewise, for
    v2.1: without it, ``events`` must hold the auth chains of the conflicted
    events.

    ``rejected`` holds the IDs of events that were rejected. None of them
    ever authorises another event, whether cited in ``auth_events`` or
    found in the state being built. They are replayed like any other event
    otherwise, as the spec asks for events rejected against the state
    before them; events rejected against their own auth events should not
    be in the state sets or their auth chains at all.
    """
    if not state_sets:
        return {}
    first = state_sets[0]
    split = _Split.of_maps(state_sets)
    yield
    changed = yield from _resolve_split(
        get_room_version(room_version),
        split,
        lambda: [state_set.values() for state_set in state_sets],
        events,
        auth_chain_difference,
        conflicted_subgraph,
        rejected,
        yield_every,
    )
    resolved = dict(first)
    for key, event_id in changed.items():
        if event_id is None:
            resolved.pop(key, None)
        else:
            resolved[key] = event_id
    return resolved


def resolve_state_delta_steps(
    room_version: RoomVersionLike,
    base: StateMap,
    deltas: Sequence[StateDelta],
    events: Mapping[str, Pdu],
    *,
    auth_chain_difference: Collection[str] | None = None,
    conflicted_subgraph: Collection[str] | None = None,
    rejected: Container[str] = frozenset(),
    yield_every: int = DEFAULT_YIELD_EVERY,
) -> Generator[None, None, dict[StateKey, str | None]]:
    """Resolve the state sets given as ``base`` with each of ``deltas`` applied.

    This is :func:`resolve_state_steps` for states given as changes: each
    delta is one state set, ``base`` with that delta applied (an empty
    delta is ``base`` itself), and the return value is the resolved state
    as changes against ``base``, None marking a key of ``base`` the
    resolved state lacks; :class:`ChangedState` reads it as a whole state.
    Apart from reading ``base`` at the keys the deltas name and the auth
    checks look up, the cost is that of the deltas and the conflict,
    whatever the size of ``base``: the base is neither copied nor walked.
    Everything else is as for :func:`resolve_state_steps`.

    Any state serves as the base, and the closer it is to the sets, the
    less there is to do: the state where the forks parted, or one of the
    sets itself with the others' changes against it (storage finds those
    from the delta rows between their state groups). The result is the
    delta a new state group stores against the base's group.
    """
    split = _Split.of_deltas(base, deltas)
    yield
    changed = yield from _resolve_split(
        get_room_version(room_version),
        split,
        lambda: _state_set_ids(base, deltas),
        events,
        auth_chain_difference,
        conflicted_subgraph,
        rejected,
        yield_every,
    )
    # Every key it holds is one some set changes, or one the base lacks.
    base_at = split.base_at.get
    return {key: event_id for key, event_id in changed.items() if event_id != base_at(key)}


class ChangedState(Mapping[StateKey, str]):
    """The state ``base`` with ``changes`` applied, read through without copying ``base``.

    :func:`resolve_state_delta` returns the resolved state as changes
    against its base; this reads them as the whole state. A lookup costs a
    lookup in each, so a caller that reads a few keys of a large room never
    pays for the whole of it; iterating or counting walks the base.
    """

    __slots__ = ("base", "changes")

    def __init__(self, base: StateMap, changes: StateDelta) -> None:
        self.base = base
        self.changes = changes

    def __getitem__(self, key: StateKey) -> str:
        if key in self.changes:
            event_id = self.changes[key]
            if event_id is None:
                raise KeyError(key)
            return event_id
        return self.base[key]

    def __iter__(self) -> Iterator[StateKey]:
        changes = self.changes
        for key in self.base:
            if key not in changes:
                yield key
        for key, event_id in changes.items():
            if event_id is not None:
                yield key

    def __len__(self) -> int:
        size = len(self.base)
        for key, event_id in self.changes.items():
            if event_id is None:
                size -= key in self.base
            else:
                size += key not in self.base
        return size


def _state_set_ids(base: StateMap, deltas: Sequence[StateDelta]) -> list[list[str]]:
    # Only for an auth difference computed here, which walks whole auth
    # chains anyway: the event IDs of each whole state set.
    return [
        [event_id for key, event_id in base.items() if key not in delta]
        + [event_id for event_id in delta.values() if event_id is not None]
        for delta in deltas
    ]


# --- The resolution ---------------------------------------------------------------------


def _resolve_split(
    rv: RoomVersion,
    split: _Split,
    state_set_ids: Callable[[], Sequence[Collection[str]]],
    events: Mapping[str, Pdu],
    auth_chain_difference: Collection[str] | None,
    conflicted_subgraph: Collection[str] | None,
    rejected: Container[str],
    yield_every: int,
) -> Generator[None, None, dict[StateKey, str | None]]:
    """Resolve the split states.

    The return value holds the resolved state at every key where it may
    differ from the base (None: no entry there); some of them may not.
    """
    resolved: dict[StateKey, str | None] = dict(split.unconflicted_changes)
    if not split.conflicted:
        resolved.update(dict.fromkeys(split.dropped))
        return resolved
    conflicted_ids: set[str] = set().union(*split.conflicted.values())
    edges = auth_edges_of(events)
    if auth_chain_difference is None:
        auth_chain_difference = compute_auth_chain_difference(state_set_ids(), edges)
        yield
    full_conflicted = conflicted_ids.union(auth_chain_difference)
    if rv.state_res is StateResAlgorithm.V2_1:
        if conflicted_subgraph is None:
            conflicted_subgraph = conflicted_state_subgraph(conflicted_ids, edges)
            yield
        full_conflicted.update(conflicted_subgraph)
    # The events of the full conflicted set, each looked up once.
    get_event = events.get
    replayed: dict[str, Pdu] = {}
    for event_id in full_conflicted:
        event = get_event(event_id)
        if event is not None:
            replayed[event_id] = event

    overrides = split.unconflicted_overrides()
    if rv.state_res is StateResAlgorithm.V2_1:
        resolver = _Resolver(rv, events, replayed, rejected, yield_every, overrides={}, base={})
    else:
        # v2 starts from the unconflicted state: the base, overridden.
        resolver = _Resolver(
            rv, events, replayed, rejected, yield_every, overrides=overrides, base=split.base
        )

    # Power events and the events of their auth chains in the full
    # conflicted set, in reverse topological power order.
    graph: dict[str, list[str]] = {}
    pending = [event_id for event_id, event in replayed.items() if is_power_event(event)]
    while pending:
        event_id = pending.pop()
        if event_id in graph:
            continue
        cited = graph[event_id] = []
        for auth_id in replayed[event_id].auth_event_ids:
            if auth_id in replayed:
                cited.append(auth_id)
                if auth_id not in graph:
                    pending.append(auth_id)
        resolver.work += 1
        if resolver.work >= resolver.yield_every:
            resolver.work = 0
            yield
    sort_key: dict[str, tuple[int, int]] = {}
    for event_id in graph:
        resolver.work += 1
        if resolver.work >= resolver.yield_every:
            resolver.work = 0
            yield
        event = replayed[event_id]
        sort_key[event_id] = (resolver.sender_power_level(event), event.origin_server_ts)
    power_order = reverse_topological_power_order(graph, sort_key)
    yield

    yield from resolver.iterative_auth_checks(power_order)

    # Everything else, in mainline order of the power levels reached.
    others = [event_id for event_id in replayed if event_id not in graph]
    ordered = yield from resolver.mainline_order(others, resolver.lookup(POWER_LEVELS_KEY))
    yield from resolver.iterative_auth_checks(ordered)

    # The unconflicted state goes back on top of what the checks reached.
    changes = resolver.changes
    for key in (*split.conflicted, *split.dropped):
        resolved[key] = changes.get(key)
    base = split.base
    for key, event_id in changes.items():
        # A key no set has (one only an auth difference event holds).
        if key not in overrides and key not in base:
            resolved[key] = event_id
    return resolved


class _Resolver:
    """The steps of one resolution that look events up, sharing the state being built.

    The state is ``state`` over ``base``: in v2, ``state`` starts as the
    entries where the unconflicted state map differs from the base (None:
    no entry); in v2.1 both start empty. ``changes`` keeps what the auth
    checks applied.
    """

    def __init__(
        self,
        room_version: RoomVersion,
        events: Mapping[str, Pdu],
        replayed: Mapping[str, Pdu],
        rejected: Container[str],
        yield_every: int,
        *,
        overrides: Mapping[StateKey, str | None],
        base: StateMap,
    ) -> None:
        self.room_version = room_version
        self.events = events
        self.replayed = replayed
        self.rejected = rejected
        self.yield_every = max(1, yield_every)
        self.work = 0
        self.state: dict[StateKey, str | None] = dict(overrides)
        self.base = base
        self.changes: dict[StateKey, str] = {}
        self._room_creates: dict[str, Pdu | None] = {}

    def lookup(self, key: StateKey) -> str | None:
        """The event at ``key`` in the state being built."""
        event_id = self.state.get(key, _FROM_BASE)
        return self.base.get(key) if event_id is _FROM_BASE else event_id

    def _create_for(self, event: Pdu) -> Pdu | None:
        # From v12 no event cites the create event: the room ID names it.
        if not self.room_version.room_id_from_create_event:
            return None
        room_id = event.room_id
        if room_id not in self._room_creates:
            create_id = create_event_id_for_room(room_id)
            self._room_creates[room_id] = self.events.get(create_id)
        return self._room_creates[room_id]

    def _cited_power_levels(self, event: Pdu) -> Pdu | None:
        # The first cited power levels event.
        get = self.events.get
        for auth_id in event.auth_event_ids:
            auth_event = get(auth_id)
            if (
                auth_event is not None
                and auth_event.type == _POWER_LEVELS_TYPE
                and auth_event.state_key == ""
            ):
                return auth_event
        return None

    def sender_power_level(self, event: Pdu) -> int:
        """The power level of ``event``'s sender according to its own auth events.

        That takes the first cited power levels event, and the room's create
        event (v12) or else the first cited one.
        """
        create = self._create_for(event)
        power_levels = None
        get = self.events.get
        for auth_id in event.auth_event_ids:
            auth_event = get(auth_id)
            if auth_event is None or auth_event.state_key != "":
                continue
            if auth_event.type == _POWER_LEVELS_TYPE:
                if power_levels is None:
                    power_levels = auth_event
            elif auth_event.type == _CREATE_TYPE and create is None:
                create = auth_event
        return get_user_power_level(event.sender, power_levels=power_levels, create=create)

    def _add_cited(
        self, event: Pdu, keys: Sequence[StateKey], auth_state: dict[StateKey, Pdu]
    ) -> None:
        """Take each of ``keys`` from the usable events ``event`` cites, the last one citing it."""
        get = self.events.get
        for auth_id in reversed(event.auth_event_ids):
            auth_event = get(auth_id)
            if auth_event is None:
                continue
            for key in keys:
                if (
                    key[1] == auth_event.state_key
                    and key[0] == auth_event.type
                    and key not in auth_state
                    and auth_id not in self.rejected
                ):
                    auth_state[key] = auth_event

    def _usable(self, key: StateKey) -> Pdu | None:
        """The event at ``key`` in the state being built, if it may authorise others."""
        event_id = self.lookup(key)
        if event_id is None or event_id in self.rejected:
            return None
        return self.events.get(event_id)

    def iterative_auth_checks(self, order: Sequence[str]) -> Generator[None, None, None]:
        """Apply each event of ``order`` to the state if the auth rules allow it there.

        Each key the rules read is taken from the state being built and,
        where that has no usable event, from the event's own auth events
        (from v12, the create event from the room ID first). Every event
        reads the create, power levels and join rules events, so the
        usable ones are kept at hand in ``shared`` and passed whatever the
        event reads; the rules read only what they need.
        """
        replayed = self.replayed
        get_event = self.events.get
        rejected = self.rejected
        state = self.state
        state_get = state.get
        base_get = self.base.get
        changes = self.changes
        room_id_create = self.room_version.room_id_from_create_event
        yield_every = self.yield_every
        shared: dict[StateKey, Pdu] = {}
        for key in _SHARED_KEYS:
            found = self._usable(key)
            if found is not None:
                shared[key] = found
        # The keys every event's selection has (but a create event's, which
        # the rules do not look up) that the state has no usable event at.
        missing = self._missing_everywhere(shared)
        for event_id in order:
            self.work += 1
            if self.work >= yield_every:
                self.work = 0
                yield
            event = replayed[event_id]
            if event.state_key is None:
                continue
            auth_state = shared.copy()
            unresolved = list(missing)
            if room_id_create and CREATE_KEY not in auth_state:
                create = self._create_for(event)
                if create is None or create.event_id in rejected:
                    unresolved.append(CREATE_KEY)
                else:
                    auth_state[CREATE_KEY] = create
            for key in membership_auth_types(event):
                if key is JOIN_RULES_KEY and key in auth_state:
                    continue
                state_id = state_get(key, _FROM_BASE)
                if state_id is _FROM_BASE:
                    state_id = base_get(key)
                if state_id is not None and state_id not in rejected:
                    state_event = get_event(state_id)
                    if state_event is not None:
                        auth_state[key] = state_event
                        continue
                unresolved.append(key)
            if unresolved:
                self._add_cited(event, unresolved, auth_state)
            try:
                check_auth_rules(event, auth_state)
            except AuthError:
                continue
            key = (event.type, event.state_key)
            state[key] = changes[key] = event_id
            if key in _SHARED_KEYS:
                if event_id in rejected:
                    shared.pop(key, None)
                else:
                    shared[key] = event
                missing = self._missing_everywhere(shared)

    def _missing_everywhere(self, shared: Mapping[StateKey, Pdu]) -> tuple[StateKey, ...]:
        if self.room_version.room_id_from_create_event:
            # The room ID names the create event, looked up separately.
            return () if POWER_LEVELS_KEY in shared else (POWER_LEVELS_KEY,)
        return tuple(key for key in (CREATE_KEY, POWER_LEVELS_KEY) if key not in shared)

    def mainline_order(
        self, event_ids: Sequence[str], power_levels_id: str | None
    ) -> Generator[None, None, list[str]]:
        """Sort ``event_ids`` by mainline order based on the power levels event ``power_levels_id``.

        An event's mainline position is that of the first event of the
        mainline met by following power levels auth events from it; events
        that meet none come first, then earlier positions, then lower
        ``origin_server_ts``, then lower event ID.
        """
        if not event_ids:
            return []
        cited_power_levels = self._cited_power_levels
        position: dict[str, int] = {}
        current = power_levels_id
        while current is not None and current not in position:
            position[current] = len(position)
            event = self.events.get(current)
            found = cited_power_levels(event) if event is not None else None
            current = found.event_id if found is not None else None
        never = len(position)
        self.work += never
        # Positions of power levels events off the mainline, found on the way.
        reached: dict[str, int] = {}
        keys: dict[str, tuple[int, int, str]] = {}
        replayed = self.replayed
        for event_id in event_ids:
            if self.work >= self.yield_every:
                self.work = 0
                yield
            event = replayed[event_id]
            path: list[str] = []
            found = cited_power_levels(event)
            at = never
            while found is not None:
                found_id = found.event_id
                if found_id in position:
                    at = position[found_id]
                    break
                if found_id in reached:
                    at = reached[found_id]
                    break
                path.append(found_id)
                found = cited_power_levels(found)
            for path_id in path:
                reached[path_id] = at
            self.work += 1 + len(path)
            keys[event_id] = (-at, event.origin_server_ts, event_id)
        return sorted(event_ids, key=keys.__getitem__)
