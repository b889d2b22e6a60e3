"""The records storage takes in and hands back.

They are plain msgspec Structs of strings, numbers and bytes rather than the
core's own types, so that storage depends on nothing above it and a worker can
send the same records to the event persister over HTTP unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import msgspec

from ranvier.errors import BadJsonError

__all__ = [
    "STORED_EVENT_COLUMNS",
    "DestinationRetry",
    "EventStateContext",
    "EventStateGroups",
    "EventToPersist",
    "PartialStateRoom",
    "ReceivedTransaction",
    "ReplacedState",
    "ServerKey",
    "StateDelta",
    "StateKey",
    "StateMap",
    "StoredEvent",
    "stored_event_from_row",
]

#: ``(event type, state key)``.
StateKey: TypeAlias = tuple[str, str]
#: A room's state: each key to the ID of the event that holds it.
StateMap: TypeAlias = dict[StateKey, str]
#: Changes to a state: a key to its new event ID, or to None when it goes.
StateDelta: TypeAlias = Mapping[StateKey, str | None]


class EventStateContext(msgspec.Struct, frozen=True, kw_only=True):
    """The state around an event, computed before it is written.

    ``state_group_after`` may be left out: storage then derives it from
    ``state_group_before`` in the same transaction, as the before-group plus
    the event itself for an accepted state event, or the before-group itself
    otherwise.
    """

    state_group_before: int
    state_group_after: int | None = None
    #: The state before the event was computed from a partial-state room's
    #: state, so it may be wrong until the room's full state is known.
    partial_state: bool = False


class EventToPersist(msgspec.Struct, frozen=True, kw_only=True):
    """One event to write, with what storage needs to know about it."""

    event_id: str
    room_id: str
    room_version: str
    type: str
    #: None for an event that is not a state event.
    state_key: str | None
    sender: str
    depth: int
    origin_server_ts: int
    #: The event exactly as received: signatures and hashes cover every byte.
    json: bytes
    prev_event_ids: tuple[str, ...] = ()
    auth_event_ids: tuple[str, ...] = ()
    #: An event outside the room's DAG as we know it (an auth event fetched
    #: on its own, say): no state, not an extremity, never partial state.
    outlier: bool = False
    #: Why the event failed authorization; None when it passed.
    rejected_reason: str | None = None
    #: Passed authorization at its own position but not against the current
    #: state: kept, with state, but not an extremity and not current state.
    soft_failed: bool = False
    #: None exactly for outliers.
    context: EventStateContext | None = None
    #: An outlier membership of one of our users in a room this server is
    #: not in (an invite from another server, a knock made through one, the
    #: room's answer to either, a declined invite's leave): a membership of
    #: the user's own, newer than what the room's state here says, unlike an
    #: outlier fetched for the DAG (see :mod:`ranvier.storage.local_memberships`).
    out_of_band: bool = False
    #: For an out-of-band knock made through another server: that server,
    #: the one whose refusal of the knock is believed (see
    #: :mod:`ranvier.core.out_of_band`). None for every other event.
    sent_through: str | None = None

    def __post_init__(self) -> None:
        if self.outlier and self.context is not None:
            raise BadJsonError(f"{self.event_id}: an outlier has no state context")
        if not self.outlier and self.context is None:
            raise BadJsonError(f"{self.event_id}: an event in the room's DAG needs a state context")
        if not self.event_id or not self.room_id:
            raise BadJsonError("an event to persist needs an event ID and a room ID")
        if self.out_of_band and not self.outlier:
            raise BadJsonError(f"{self.event_id}: only an outlier is an out-of-band membership")
        if self.sent_through is not None and not self.out_of_band:
            raise BadJsonError(
                f"{self.event_id}: only an out-of-band knock is sent through a server"
            )

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def accepted(self) -> bool:
        """Whether the event may move the room's extremities and current state."""
        return not (self.outlier or self.soft_failed or self.rejected_reason is not None)


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as storage holds it."""

    stream_ordering: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    depth: int
    origin_server_ts: int
    json: bytes
    outlier: bool
    soft_failed: bool
    rejected_reason: str | None


#: The ``events`` columns a :class:`StoredEvent` is read from, in the order
#: :func:`stored_event_from_row` takes them.
STORED_EVENT_COLUMNS: tuple[str, ...] = (
    "stream_ordering",
    "event_id",
    "room_id",
    "type",
    "state_key",
    "sender",
    "depth",
    "origin_server_ts",
    "json",
    "outlier",
    "soft_failed",
    "rejected_reason",
)


def stored_event_from_row(row: Sequence[Any]) -> StoredEvent:
    """The event a row of :data:`STORED_EVENT_COLUMNS` holds.

    SQLite keeps the flags as integers; every read that hands events out
    decodes them here so they all agree on what a row means.
    """
    return StoredEvent(
        stream_ordering=row[0],
        event_id=row[1],
        room_id=row[2],
        type=row[3],
        state_key=row[4],
        sender=row[5],
        depth=row[6],
        origin_server_ts=row[7],
        json=bytes(row[8]),
        outlier=bool(row[9]),
        soft_failed=bool(row[10]),
        rejected_reason=row[11],
    )


class EventStateGroups(msgspec.Struct, frozen=True):
    """The state groups before and after an event."""

    before: int
    after: int


class ReplacedState(msgspec.Struct, frozen=True):
    """The state entry a state event replaced
    (:mod:`ranvier.storage.replaced_state`)."""

    #: The replaced event's ID: ``unsigned.replaces_state``.
    event_id: str
    #: The replaced event as served (redacted where a redaction applies);
    #: None when it is not stored here.
    event: StoredEvent | None


class PartialStateRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A room joined with partial state, and what the join learned."""

    room_id: str
    room_version: str
    join_event_id: str
    #: The server the join went through.
    joined_via: str
    #: The servers believed to be in the room at the join.
    servers: frozenset[str]


class ReceivedTransaction(msgspec.Struct, frozen=True, kw_only=True):
    """A federation transaction already answered, kept to answer a resend the
    same way.
    """

    origin: str
    transaction_id: str
    response_code: int
    response_json: bytes
    received_ts: int


class ServerKey(msgspec.Struct, frozen=True, kw_only=True):
    """One signing key of a remote server."""

    server_name: str
    key_id: str
    #: The raw 32-byte ed25519 public key.
    verify_key: bytes
    #: Until when signatures made with the key may be trusted, in ms.
    valid_until_ts: int
    #: For a key listed in ``old_verify_keys``: when it stopped being used.
    expired_ts: int | None = None
    #: The server that answered with the key (itself, or a notary).
    from_server: str
    fetched_ts: int
    #: The signed key response as received, to serve it on as a notary.
    key_json: bytes


class DestinationRetry(msgspec.Struct, frozen=True, kw_only=True):
    """How long to leave a remote server alone after it failed us."""

    destination: str
    #: When the current run of failures started; None if it is not failing.
    failure_ts: int | None
    retry_last_ts: int
    retry_interval_ms: int
