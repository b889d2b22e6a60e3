"""What core needs from the layers below it, as structural types.

core never imports storage, replication or federation concretely: it is
handed objects that have these methods. The main process hands it the
storage facade (:class:`ranvier.storage.Storage` has all of them); a worker
hands it a replication client for :class:`EventPersister`. So every argument
and result of :class:`EventPersister` is a plain value or a msgspec Struct
from :mod:`ranvier.storage.records`, which can cross a process boundary.

A room may have tens of thousands of state entries, so besides the whole
maps there are narrow reads: a state group's entries for a few keys, the
room's current state for a few keys, and which of some events have partial
state. Checking an event uses only those; whole maps are for the work that
needs every key (state resolution, storing a state as changes against
another).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Set
from typing import Any, Protocol, runtime_checkable

import msgspec

from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import VerifyKeyLike
from ranvier.storage.records import (
    EventStateGroups,
    EventToPersist,
    PartialStateRoom,
    StateDelta,
    StateKey,
    StoredEvent,
)

__all__ = [
    "BatchStateReader",
    "EventNotifier",
    "EventPersister",
    "EventSender",
    "FederationEventClient",
    "JoinClient",
    "Leaves",
    "PartialStateStore",
    "RemoteInviter",
    "ResyncClient",
    "RoomStateAtEvent",
    "StateIdsAtEvent",
    "StateReader",
    "VerifyKeySource",
]


class Leaves(Protocol):
    """Users' own leaves: :class:`ranvier.core.room_leaves.RoomLeaves`, or
    :class:`ranvier.core.server_notices.NoticeGuardedLeaves` in front of it.
    """

    async def leave(
        self,
        user_id: str,
        room_id: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Leave ``room_id``, decline an invite to it or withdraw a knock;
        return the leave's event ID."""
        ...


@runtime_checkable
class StateReader(Protocol):
    """Reads of events, state groups and the room's current position."""

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        """The stored events among ``event_ids``, outliers and rejected ones too."""
        ...

    async def get_events_for_auth(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        """The stored events among ``event_ids`` as the auth checks read
        them: redacted where a redaction applies, create events excepted
        (:func:`ranvier.storage.redactions.events_for_auth`)."""
        ...

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        """The groups before and after an event; None for outliers and unknown events."""
        ...

    async def get_state_ids(self, state_group: int) -> Mapping[StateKey, str]:
        """The whole state a group stands for."""
        ...

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        """The room's current state: the resolved state of its forward extremities."""
        ...

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        """The entries of a group's state for ``keys``; keys not in it are left out."""
        ...

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        """The entries of the room's current state for ``keys``; keys not in it are left out."""
        ...

    async def get_state_deltas(
        self, state_groups: Sequence[int]
    ) -> tuple[int, Mapping[int, StateDelta]]:
        """The first of ``state_groups`` as a base, and each group's state as
        changes against the base's (None: a key the group lacks).

        Costs the changes between the groups, not their states: resolving a
        fork in a big room reads what the fork changed.
        """
        ...

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        """The accepted events of the room that no accepted event follows yet."""
        ...

    async def is_partial_state_room(self, room_id: str) -> bool:
        """Whether the room was joined with partial state that is not yet complete."""
        ...

    async def get_partial_state_events(self, room_id: str) -> Sequence[str]:
        """The room's events whose state is still partial."""
        ...

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> Set[str]:
        """Which of ``event_ids`` still have partial state."""
        ...

    async def get_room_version(self, room_id: str) -> str | None:
        """The room's version identifier; None for a room not known here."""
        ...


@runtime_checkable
class BatchStateReader(StateReader, Protocol):
    """The reads above, and those that take in a run of one room's events
    with one read each instead of one per event: federation ingestion's
    store.
    """

    async def get_events_state_groups(
        self, event_ids: Collection[str]
    ) -> Mapping[str, EventStateGroups]:
        """The groups before and after each of ``event_ids`` that has them;
        outliers and unknown events are left out.
        """
        ...

    async def get_events_with_accepted_children(self, event_ids: Collection[str]) -> Set[str]:
        """Which of ``event_ids`` an accepted event in the DAG cites as a prev
        event: written, such an event does not become a forward extremity.
        """
        ...

    async def get_redaction_targets(self, event_ids: Collection[str]) -> Set[str]:
        """Which of ``event_ids`` a stored redaction names, stored or not:
        once written, such an event may be read redacted.
        """
        ...

    # How far back the room's DAG reaches here: filling a gap asks for
    # nothing older.

    async def get_min_depth(self, room_id: str) -> int | None:
        """The smallest depth of the room's events in its DAG here (outliers
        left out); None when it has none.
        """
        ...


@runtime_checkable
class EventPersister(Protocol):
    """Writes of events and state groups: the storage actor, or a worker's
    client of it.
    """

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        """Write ``events``; return their stream orderings by event ID.

        ``current_state_groups`` names, per room, the group that is its
        current state afterwards, where the caller resolved it. Raises
        :class:`~ranvier.errors.PartialStateConflictError` when an event has
        partial state and its room no longer does.
        """
        ...

    async def store_room(self, room_id: str, room_version: str) -> None:
        """Make a room known before any of its state is stored."""
        ...

    async def store_state_group(
        self, room_id: str, prev_group: int | None, delta: StateDelta
    ) -> int:
        """Store ``prev_group`` with ``delta`` applied (a snapshot when None)."""
        ...


# --- Local events: who hears of them, and invites to other servers --------------


@runtime_checkable
class EventNotifier(Protocol):
    """Told of each event this server's users create, once it is written:
    the homeserver sends it on to the other servers in the room.
    """

    async def on_new_event(self, event: Pdu, stream_ordering: int) -> None:
        """``event`` was written with ``stream_ordering``; it must not be changed."""
        ...


class EventSender(Protocol):
    """Sends an event as a local user, through every check a client's
    event goes through (:meth:`ranvier.core.creation.EventCreator.send_event`);
    returns its ID."""

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
    ) -> str: ...


@runtime_checkable
class RemoteInviter(Protocol):
    """Sends an invite of a user of another server to that server (the
    federation ``/invite`` request), which must sign it before it is valid.
    """

    async def send_invite(self, event: Pdu) -> Pdu:
        """Return ``event`` with the invitee's server's signature added.

        Raises :class:`~ranvier.errors.MatrixError` when that server refuses
        the invite or cannot be reached; the invite is then not written.
        """
        ...


# --- Joining a room through another server; the keys its events are signed with --


@runtime_checkable
class JoinClient(Protocol):
    """The requests of the join handshake, sent to a server in the room.

    Both raise :class:`~ranvier.errors.MatrixError`: with the server's own
    errcode and HTTP status when it refuses, with 502 when it gives no
    usable answer (unreachable, timed out, not JSON).
    """

    async def make_join(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        """The decoded answer to ``make_join``, offering ``room_versions``."""
        ...

    async def send_join(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> bytes:
        """The answer to ``send_join`` (v2) as received: its events are kept
        byte for byte, as their signatures and hashes need.
        """
        ...


@runtime_checkable
class VerifyKeySource(Protocol):
    """Other servers' signing keys, for the signatures on their events
    (:class:`ranvier.federation.keys.KeyRing` is one).
    """

    async def get_verify_key(
        self, server_name: str, key_id: str, *, at_ts: int | None = None
    ) -> VerifyKeyLike:
        """Key ``key_id`` of ``server_name`` as trusted at ``at_ts`` (ms since
        the epoch; None means now).

        Raises :class:`~ranvier.errors.InvalidSignatureError` saying why,
        when no such key can be trusted.
        """
        ...


# --- A remote server's copy of a room, read while taking in its events ----------


class StateIdsAtEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A remote server's answer to ``/state_ids``: the state before an event
    and the auth chain of that state.
    """

    pdu_ids: tuple[str, ...]
    auth_chain_ids: tuple[str, ...]


@runtime_checkable
class FederationEventClient(Protocol):
    """The reads of a remote server's copy of a room that ingestion makes to
    fill gaps in our copy.

    Events come back as the bytes the remote sent, one JSON object each:
    they are stored as received. Every method raises
    :class:`~ranvier.errors.MatrixError` (502) when the remote gives no
    usable answer.
    """

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int = 0,
    ) -> Sequence[bytes]:
        """The events before ``latest_events`` back to ``earliest_events``."""
        ...

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIdsAtEvent:
        """The IDs of the state before ``event_id`` and of its auth chain."""
        ...

    async def get_event(self, destination: str, event_id: str) -> bytes:
        """One event, by its ID."""
        ...


# --- Finishing a room joined with partial state ------------------------------------


class RoomStateAtEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A remote server's answer to ``/state``: the events of the state before
    an event and of that state's auth chain, each as the bytes received.

    An event may be a :class:`msgspec.Raw` view into the answer's body rather
    than bytes of its own: a copy of each would hold a big room's state twice
    (some 33 MB more at 50,000 members) until the last event is parsed.
    """

    pdus: tuple[bytes | msgspec.Raw, ...]
    auth_chain: tuple[bytes | msgspec.Raw, ...]


@runtime_checkable
class ResyncClient(FederationEventClient, Protocol):
    """The reads that complete a partial-state room from the servers in it:
    the gap-filling reads, and ``/state`` for when most of a state is missing
    here and one request beats thousands of ``/event``.
    """

    async def get_state(self, destination: str, room_id: str, event_id: str) -> RoomStateAtEvent:
        """The events of the state before ``event_id`` and of its auth chain."""
        ...


@runtime_checkable
class PartialStateStore(StateReader, EventPersister, Protocol):
    """What the un-partial-state task reads and writes: which rooms and events
    have partial state, and the writes that replace it with full state.
    """

    async def get_partial_state_rooms(self) -> Mapping[str, PartialStateRoom]:
        """Every room that still has partial state, by room ID."""
        ...

    async def have_seen_events(self, event_ids: Collection[str]) -> Set[str]:
        """Which of ``event_ids`` are stored, outliers included."""
        ...

    async def update_state_for_partial_event(
        self,
        event_id: str,
        state_group_before: int,
        state_group_after: int | None,
        rejected_reason: str | None = None,
    ) -> None:
        """Give an event its full state and verdict, and drop its partial-state mark."""
        ...

    async def set_current_state(self, room_id: str, state_group: int) -> None:
        """Make a group's state the room's current state."""
        ...

    async def clear_partial_state(self, room_id: str) -> bool:
        """Forget the room's partial state; False if it had none.

        Raises :class:`~ranvier.errors.PartialStateEventsRemainError` while
        any of its events still has partial state.
        """
        ...
