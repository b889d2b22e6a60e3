"""Synapse's state resolution v2, driven on events held in memory.

Synapse resolves state inside its homeserver: events come from its
database through a ``StateResolutionStore``, and the auth difference from an
index over the auth graph (its chain cover). Here the store is a dict, and
the auth difference either comes precomputed, as an index would give it, or
Synapse computes it itself from events it is handed as not yet persisted.

Synapse's resolver is a coroutine that awaits only the store and a clock it
asks to sleep for no time between chunks of work. Both answer at once here,
so the coroutine never suspends and runs to the end on its first step: no
reactor is involved, and what is timed is Synapse's own code.

Synapse is used as an installed library (``pip install matrix-synapse``,
which ``nox -s bench`` does); nothing of it is copied here.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from typing import Any

# synapse.event_auth first: importing synapse.state first runs into an
# import cycle between the two.
import synapse.event_auth  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
from synapse.api.room_versions import (  # type: ignore[import-not-found, unused-ignore]
    KNOWN_ROOM_VERSIONS,
)
from synapse.events import make_event_from_dict  # type: ignore[import-not-found, unused-ignore]
from synapse.state.v2 import (  # type: ignore[import-not-found, unused-ignore]
    resolve_events_with_store,
)
from synapse.storage.databases.main.event_federation import (  # type: ignore[import-not-found, unused-ignore]
    StateDifference,
)

__all__ = ["SYNAPSE_VERSION", "SynapseRoom", "supports_room_version"]

SYNAPSE_VERSION: str = importlib.metadata.version("matrix-synapse")

StateKey = tuple[str, str]


def supports_room_version(room_version: str) -> bool:
    """Whether the installed Synapse knows ``room_version``."""
    return room_version in KNOWN_ROOM_VERSIONS


class _Clock:
    """What the resolver needs of Synapse's clock: a sleep it yields to the reactor with."""

    async def sleep(self, duration: object) -> None:
        return None


class _Store:
    """A ``StateResolutionStore`` over a dict of events.

    With ``difference`` it answers the auth difference (and, for v2.1, the
    conflicted subgraph) as an index would, without walking the graph.
    Without it, it holds no events of its own: every event is in the
    caller's event map, so Synapse treats all of them as not yet persisted
    and walks their auth chains itself, leaving nothing for the store.
    """

    def __init__(
        self, events: Mapping[str, Any], difference: tuple[set[str], set[str]] | None
    ) -> None:
        self._events = events
        self._difference = difference

    async def get_events(
        self, event_ids: Collection[str], allow_rejected: bool = False
    ) -> dict[str, Any]:
        # No event here is rejected, so allow_rejected changes nothing.
        return {
            event_id: self._events[event_id] for event_id in event_ids if event_id in self._events
        }

    async def get_auth_chain_difference(
        self,
        room_id: str,
        state_sets: list[set[str]],
        conflicted_state: set[str] | None,
        additional_backwards_reachable_conflicted_events: set[str] | None,
    ) -> Any:
        if self._difference is None:
            if any(state_sets):
                raise RuntimeError(
                    "Synapse asked the store for the auth difference of events it holds"
                    " as persisted, but every event was given to it in memory"
                )
            return StateDifference(
                auth_difference=set(),
                conflicted_subgraph=None if conflicted_state is None else set(),
            )
        auth_difference, subgraph = self._difference
        # Synapse adds to the sets it gets back: hand out copies.
        return StateDifference(
            auth_difference=set(auth_difference),
            conflicted_subgraph=None if conflicted_state is None else set(subgraph),
        )


def _run_to_end(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("Synapse's state resolution waited on something other than the store")


class SynapseRoom:
    """One room's events as Synapse's own event objects, ready to be resolved.

    The events are parsed once, here, from the JSON they were signed as,
    and each event ID Synapse computes is checked against the one given.
    """

    def __init__(
        self, room_version: str, room_id: str, events: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> None:
        self.room_version = KNOWN_ROOM_VERSIONS[room_version]
        self.room_id = room_id
        self.events: dict[str, Any] = {}
        for event_id, event_json in events:
            event = make_event_from_dict(dict(event_json), self.room_version)
            if event.event_id != event_id:
                raise RuntimeError(
                    f"Synapse computes event ID {event.event_id} for the event ranvier"
                    f" calls {event_id}"
                )
            self.events[event_id] = event

    def resolver(
        self,
        state_sets: Sequence[Mapping[StateKey, str]],
        *,
        auth_difference: Collection[str] | None = None,
        conflicted_subgraph: Collection[str] = (),
    ) -> Callable[[], Mapping[StateKey, str]]:
        """A call that runs one resolution of ``state_sets``, all set up beforehand.

        With ``auth_difference`` (and ``conflicted_subgraph`` for v2.1) the
        store answers them and Synapse fetches events from it; without,
        Synapse gets every event in memory and computes both itself. Each
        resolver runs once: Synapse fills its event map as it goes.
        """
        if auth_difference is None:
            store = _Store({}, None)
            event_map: dict[str, Any] = dict(self.events)
        else:
            store = _Store(self.events, (set(auth_difference), set(conflicted_subgraph)))
            event_map = {}
        sets = [dict(state_set) for state_set in state_sets]

        def resolve() -> Mapping[StateKey, str]:
            coroutine = resolve_events_with_store(
                _Clock(), self.room_id, self.room_version, sets, event_map, store
            )
            # A ChainMap of the unconflicted and the resolved state, as
            # Synapse returns it: flattening it is the caller's business.
            resolved: Mapping[StateKey, str] = _run_to_end(coroutine)
            return resolved

        return resolve
