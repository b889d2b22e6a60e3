"""State resolution on Trio, with the events it needs read from storage.

:func:`resolve_state_maps` resolves room states the way
:mod:`ranvier.protocol.state_res` defines, and adds what a running server
needs around it:

- it reads from storage only the events the algorithm looks at. The
  conflicted state set is worked out first; where the states agree, nothing
  is read. Then the auth difference and (v2.1) the conflicted state subgraph
  are computed by walking ``auth_events`` through storage, and the events
  the resolution reads are loaded: the full conflicted set, the events they
  cite, the states' events at the keys the auth checks look up, and the
  power levels events the mainline ordering follows;
- it drives the resolution a few dozen events at a time with a Trio
  checkpoint between steps, so a long resolution in a big room does not
  stall other tasks.

The auth difference is computed exactly without walking the whole state:
an event in every state set is in every full auth chain together with its
own chain, so only the chains of the events that differ between the sets
can hold events of the difference. Those are walked first. Only if some
event is in one of their chains and not another is the chain of the shared
events walked, and only until every such event is found in it. Without an
auth chain index in storage that last walk can read much of a big room.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from typing import TypeVar

import trio

from ranvier.protocol.auth import (
    CREATE_KEY,
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
    StateMap,
    resolve_state_steps,
    separate_state,
)

from .interfaces import StateReader
from .loading import EventLoader

__all__ = ["changes_between", "drive_steps", "resolve_state_maps"]

_Result = TypeVar("_Result")


async def drive_steps(steps: Generator[None, None, _Result]) -> _Result:
    """Run a yielding computation to its end, letting other tasks run at each yield."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _Result = done.value
            return result
        await trio.lowlevel.checkpoint()


async def resolve_state_maps(
    store: StateReader,
    room_id: str,
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    *,
    loader: EventLoader | None = None,
    yield_every: int = DEFAULT_YIELD_EVERY,
) -> dict[StateKey, str]:
    """Resolve the states ``state_sets`` of room ``room_id`` into one.

    Events are read through ``loader`` (a new one on ``store`` if None), so
    a caller that loads other events of the same work can share them.
    """
    if not state_sets:
        return {}
    unconflicted, conflicted = separate_state(state_sets)
    if not conflicted:
        return unconflicted
    if loader is None:
        loader = EventLoader(store, room_version)
    conflicted_ids: set[str] = set().union(*conflicted.values())

    auth_difference = await _auth_difference(loader, state_sets)
    full_conflicted = conflicted_ids | auth_difference
    subgraph: set[str] | None = None
    if room_version.state_res is StateResAlgorithm.V2_1:
        # The chains of the conflicted events were walked for the auth
        # difference: they differ between the sets.
        await loader.auth_chain(conflicted_ids)
        subgraph = conflicted_state_subgraph(conflicted_ids, loader.edges)
        full_conflicted |= subgraph
    await _load_for_resolution(loader, room_id, room_version, state_sets, full_conflicted)
    return await _resolve(room_version, state_sets, loader, auth_difference, subgraph, yield_every)


async def _resolve(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    loader: EventLoader,
    auth_difference: Collection[str],
    subgraph: Collection[str] | None,
    yield_every: int,
) -> dict[StateKey, str]:
    """The one call into the resolution algorithm."""
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


async def _auth_difference(loader: EventLoader, state_sets: Sequence[StateMap]) -> set[str]:
    """The events in some but not all of the state sets' full auth chains."""
    sets = [set(state_set.values()) for state_set in state_sets]
    shared = sets[0].intersection(*sets[1:])
    chains = [await loader.auth_chain(state_set - shared) for state_set in sets]
    candidates = set().union(*chains) - chains[0].intersection(*chains[1:])
    if not candidates:
        return candidates
    # An event of the shared events' chain is in every full chain.
    shared_chain = await loader.auth_chain(shared, until_found=candidates)
    return candidates - shared_chain


async def _load_for_resolution(
    loader: EventLoader,
    room_id: str,
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    full_conflicted: Iterable[str],
) -> None:
    """Load every event the resolution of ``state_sets`` reads (see
    :func:`~ranvier.protocol.state_res.resolve_state_steps`).
    """
    wanted = set(full_conflicted)
    if room_version.room_id_from_create_event:
        wanted.add(create_event_id_for_room(room_id))
    conflicted_events = await loader.load(wanted)

    # The events they cite, and the states' events at the keys their auth
    # checks look up.
    keys: set[StateKey] = {CREATE_KEY, POWER_LEVELS_KEY}
    cited: set[str] = set()
    for event in conflicted_events.values():
        keys.update(auth_state_keys(event))
        cited.update(event.auth_event_ids)
    at_keys = {
        event_id
        for state_set in state_sets
        for key in keys
        if (event_id := state_set.get(key)) is not None
    }
    await loader.load(cited | at_keys)

    # The mainlines: power levels events, followed through the power
    # levels events each cites, back to the room's first.
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
