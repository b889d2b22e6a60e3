"""Events written into storage the way core writes them.

A test of anything that reads a room (federation queries, joins through a
resident server, the state at an event) first needs the room in storage,
written as ranvier itself would have written it: each event's context
computed, the three auth checks run, the current state moved. These
functions do exactly that, one event at a time, with the storage actor
(:class:`ranvier.storage.Storage`, or anything with its reads and writes)::

    room = RoomBuilder("12", "@alice:a.test", keys=keys)
    room.public_room()
    await ingest_all(storage, room.order)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ranvier.core import (
    AuthOutcome,
    EventContext,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
    run_auth_checks,
)
from ranvier.core.interfaces import EventPersister, StateReader
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu

__all__ = ["EventStore", "ingest", "ingest_all"]


class EventStore(StateReader, EventPersister, Protocol):
    """What core reads from and writes to: the storage actor is one."""


async def ingest(
    store: EventStore,
    event: Pdu,
    *,
    outlier: bool = False,
    state_ids_before: Mapping[StateKey, str] | None = None,
    partial_state: bool = False,
) -> AuthOutcome:
    """Take ``event`` through core and write it, whatever the auth checks say.

    The options are those of :func:`ranvier.core.compute_event_context`.
    The outcome tells whether it was accepted, rejected or soft-failed. An
    outlier makes its room known first, as a join's answer does: storage
    keeps no event of a room it does not know.
    """
    if outlier:
        await store.store_room(event.room_id, event.room_version.identifier)
    context = await compute_event_context(
        event,
        store,
        store,
        outlier=outlier,
        state_ids_before=state_ids_before,
        partial_state=partial_state,
    )
    outcome = await run_auth_checks(event, context, store)
    current = await compute_current_state_after(event, outcome.context, store, store)
    await store.persist_events(
        [event_to_persist(event, outcome.context)],
        current_state_groups=None if current is None else {event.room_id: current},
    )
    return outcome


async def ingest_all(store: EventStore, events: Sequence[Pdu]) -> list[EventContext]:
    """Write ``events`` in order with :func:`ingest`; each must pass the auth checks.

    Raises :class:`AssertionError` naming the first event that does not
    (it is written, as rejected or soft-failed, before the error).
    """
    contexts = []
    for event in events:
        outcome = await ingest(store, event)
        if outcome.failure is not None:
            raise AssertionError(f"{event!r} failed the auth checks: {outcome.failure}")
        contexts.append(outcome.context)
    return contexts
