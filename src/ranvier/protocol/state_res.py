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
the size of the room: the unconflicted state is only split off and laid
back (dictionary work on the whole maps), never walked event by event. So
that a long resolution does not stall an event loop, the work is a
generator, :func:`resolve_state_steps`, that yields every few dozen events;
:func:`resolve_state` runs it to the end.

Where the spec is open to reading, ranvier reads it as Synapse, ruma and
gomatrixserverlib do, so that servers agree: the events "in the auth chain
of P which also belong to the full conflicted set" are found by walking
``auth_events`` through events of the full conflicted set only; and from
room version 12, where events no longer cite the create event, the auth
checks and the power level of a sender take the create event that the room
ID names.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Container, Generator, Iterator, Mapping, Sequence
from typing import Final

from ranvier.errors import AuthError
from ranvier.protocol.auth import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    StateKey,
    auth_types_for_event,
    check_auth_rules,
    create_event_id_for_room,
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
    "StateMap",
    "is_power_event",
    "resolve_state",
    "resolve_state_steps",
    "reverse_topological_power_order",
    "separate_state",
]

#: A room state: ``(type, state_key)`` to event ID.
StateMap = Mapping[StateKey, str]

#: How many events :func:`resolve_state_steps` handles between two yields.
DEFAULT_YIELD_EVERY: Final = 50


def separate_state(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split state sets into the unconflicted state map and the conflicted state set.

    A key is unconflicted when every set has it with the same event; the
    conflicted state set holds, by key, the events the sets disagree on (a
    set that lacks the key disagrees with the others, but adds no event).

    This is the one pass over whole states that resolution makes: one
    lookup per key of the first set in each other set, and set arithmetic
    on keys only for a set that has keys the first lacks.
    """
    if not state_sets:
        return {}, {}
    first, rest = state_sets[0], state_sets[1:]
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    shared_keys = [0] * len(rest)
    for key, event_id in first.items():
        agree = True
        for index, other in enumerate(rest):
            other_id = other.get(key)
            if other_id is not None:
                shared_keys[index] += 1
            if other_id != event_id:
                agree = False
        if agree:
            unconflicted[key] = event_id
            continue
        ids = conflicted[key] = {event_id}
        for other in rest:
            other_id = other.get(key)
            if other_id is not None:
                ids.add(other_id)
    for index, other in enumerate(rest):
        if shared_keys[index] == len(other):
            continue
        # Keys missing from the first set are conflicted wherever they are.
        for key in other.keys() - first.keys():
            conflicted.setdefault(key, set()).add(other[key])
    return unconflicted, conflicted


def is_power_event(event: Pdu) -> bool:
    """Whether ``event`` is a *power event*: one that may take a power away.

    Those are power levels and join rules events, and kicks and bans (a
    leave or ban membership whose sender is not its target).
    """
    if event.state_key is None:
        return False
    if event.type in (POWER_LEVELS_KEY[0], "m.room.join_rules"):
        return event.state_key == ""
    return (
        event.type == "m.room.member"
        and event.membership in ("leave", "ban")
        and event.sender != event.state_key
    )


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
    for event_id, auth_ids in auth_graph.items():
        waiting_on[event_id] = len(auth_ids)
        for auth_id in auth_ids:
            cited_by[auth_id].append(event_id)

    def entry(event_id: str) -> tuple[int, int, str]:
        power, ts = sort_key[event_id]
        return -power, ts, event_id

    ready = [entry(event_id) for event_id, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        event_id = heapq.heappop(ready)[2]
        order.append(event_id)
        for child in cited_by[event_id]:
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                heapq.heappush(ready, entry(child))
    if len(order) != len(auth_graph):
        raise ValueError("the auth events of the events to sort form a cycle")
    return order


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
    steps = resolve_state_steps(
        room_version,
        state_sets,
        events,
        auth_chain_difference=auth_chain_difference,
        conflicted_subgraph=conflicted_subgraph,
        rejected=rejected,
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            resolved: dict[StateKey, str] = done.value
            return resolved


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
    rv = get_room_version(room_version)
    unconflicted, conflicted = separate_state(state_sets)
    if not conflicted:
        return unconflicted
    conflicted_ids = set().union(*conflicted.values())
    yield
    edges = auth_edges_of(events)
    if auth_chain_difference is None:
        auth_chain_difference = compute_auth_chain_difference(
            [state_set.values() for state_set in state_sets], edges
        )
        yield
    full_conflicted = conflicted_ids | set(auth_chain_difference)
    if rv.state_res is StateResAlgorithm.V2_1:
        if conflicted_subgraph is None:
            conflicted_subgraph = conflicted_state_subgraph(conflicted_ids, edges)
            yield
        full_conflicted |= set(conflicted_subgraph)
    full_conflicted = {event_id for event_id in full_conflicted if event_id in events}
    resolver = _Resolver(rv, events, rejected, yield_every)

    # Power events and the events of their auth chains in the full
    # conflicted set, in reverse topological power order.
    graph: dict[str, list[str]] = {}
    pending = [event_id for event_id in full_conflicted if is_power_event(events[event_id])]
    while pending:
        event_id = pending.pop()
        if event_id in graph:
            continue
        cited = [a for a in events[event_id].auth_event_ids if a in full_conflicted]
        graph[event_id] = cited
        pending.extend(a for a in cited if a not in graph)
        yield from resolver.tick()
    sort_key: dict[str, tuple[int, int]] = {}
    for event_id in graph:
        event = events[event_id]
        sort_key[event_id] = (resolver.sender_power_level(event), event.origin_server_ts)
        yield from resolver.tick()
    power_order = reverse_topological_power_order(graph, sort_key)
    yield

    base: StateMap = {} if rv.state_res is StateResAlgorithm.V2_1 else unconflicted
    state = _Overlay(base)
    yield from resolver.iterative_auth_checks(power_order, state)

    # Everything else, in mainline order of the power levels reached.
    others = [event_id for event_id in full_conflicted if event_id not in graph]
    ordered = yield from resolver.mainline_order(others, state.get(POWER_LEVELS_KEY))
    yield from resolver.iterative_auth_checks(ordered, state)

    resolved = dict(state.changes)
    resolved.update(unconflicted)
    return resolved


class _Overlay(Mapping[StateKey, str]):
    """A state map of changes laid over a base that is never copied.

    In v2 the base is the unconflicted state, which may be a whole large
    room's; only the few keys the resolution touches are written.
    """

    def __init__(self, base: StateMap) -> None:
        self.base = base
        self.changes: dict[StateKey, str] = {}

    def __getitem__(self, key: StateKey) -> str:
        if key in self.changes:
            return self.changes[key]
        return self.base[key]

    def __setitem__(self, key: StateKey, value: str) -> None:
        self.changes[key] = value

    def __iter__(self) -> Iterator[StateKey]:
        yield from self.changes
        yield from (key for key in self.base if key not in self.changes)

    def __len__(self) -> int:
        return len(self.changes) + sum(1 for key in self.base if key not in self.changes)


class _Resolver:
    """The steps of one resolution that look events up, sharing the lookup and counters."""

    def __init__(
        self,
        room_version: RoomVersion,
        events: Mapping[str, Pdu],
        rejected: Container[str],
        yield_every: int,
    ) -> None:
        self.room_version = room_version
        self.events = events
        self.rejected = rejected
        self.yield_every = max(1, yield_every)
        self.work = 0

    def tick(self) -> Generator[None, None, None]:
        self.work += 1
        if self.work % self.yield_every == 0:
            yield

    def _create_for(self, event: Pdu) -> Pdu | None:
        # From v12 no event cites the create event: the room ID names it.
        if self.room_version.room_id_from_create_event:
            return self.events.get(create_event_id_for_room(event.room_id))
        return None

    def _cited(self, event: Pdu, key: StateKey) -> Pdu | None:
        for auth_id in event.auth_event_ids:
            auth_event = self.events.get(auth_id)
            if auth_event is not None and (auth_event.type, auth_event.state_key) == key:
                return auth_event
        return None

    def sender_power_level(self, event: Pdu) -> int:
        """The power level of ``event``'s sender according to its own auth events."""
        create = self._create_for(event) or self._cited(event, CREATE_KEY)
        power_levels = self._cited(event, POWER_LEVELS_KEY)
        return get_user_power_level(event.sender, power_levels=power_levels, create=create)

    def iterative_auth_checks(
        self, order: Sequence[str], state: _Overlay
    ) -> Generator[None, None, None]:
        """Apply each event of ``order`` to ``state`` if the auth rules allow it there."""
        rv = self.room_version
        for event_id in order:
            yield from self.tick()
            event = self.events[event_id]
            if event.state_key is None:
                continue
            auth_state: dict[StateKey, Pdu] = {}
            for auth_id in event.auth_event_ids:
                auth_event = self.events.get(auth_id)
                if (
                    auth_event is not None
                    and auth_event.state_key is not None
                    and auth_id not in self.rejected
                ):
                    auth_state[(auth_event.type, auth_event.state_key)] = auth_event
            keys = auth_types_for_event(event)
            if rv.room_id_from_create_event:
                create = self._create_for(event)
                if create is not None and create.event_id not in self.rejected:
                    auth_state[CREATE_KEY] = create
                keys.add(CREATE_KEY)
            for key in keys:
                state_id = state.get(key)
                if state_id is None or state_id in self.rejected:
                    continue
                state_event = self.events.get(state_id)
                if state_event is not None:
                    auth_state[key] = state_event
            try:
                check_auth_rules(event, auth_state)
            except AuthError:
                continue
            state[(event.type, event.state_key)] = event_id

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
        position: dict[str, int] = {}
        current = power_levels_id
        while current is not None and current not in position:
            position[current] = len(position)
            yield from self.tick()
            event = self.events.get(current)
            found = self._cited(event, POWER_LEVELS_KEY) if event is not None else None
            current = found.event_id if found is not None else None
        never = len(position)
        # Positions of power levels events off the mainline, found on the way.
        reached: dict[str, int] = {}

        def mainline_position(event: Pdu) -> Generator[None, None, int]:
            path: list[str] = []
            found = self._cited(event, POWER_LEVELS_KEY)
            result = never
            while found is not None:
                if found.event_id in position:
                    result = position[found.event_id]
                    break
                if found.event_id in reached:
                    result = reached[found.event_id]
                    break
                path.append(found.event_id)
                yield from self.tick()
                found = self._cited(found, POWER_LEVELS_KEY)
            for event_id in path:
                reached[event_id] = result
            return result

        keys: dict[str, tuple[int, int, str]] = {}
        for event_id in event_ids:
            event = self.events[event_id]
            at = yield from mainline_position(event)
            keys[event_id] = (-at, event.origin_server_ts, event_id)
            yield from self.tick()
        return sorted(event_ids, key=keys.__getitem__)
