"""The homeserver's handlers, on Trio: events created by local users, events
taken in from other servers, joins through other servers, event contexts,
authorization at the three points the spec names, and state resolution
with storage behind it.

core talks to storage (or a worker's replication client) and to other
servers only through the small protocols of :mod:`ranvier.core.interfaces`;
:class:`ranvier.server.HomeServer` hands it the real ones.
"""

from .context import (
    EventContext,
    UnknownPrevStateError,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
)
from .creation import EventCreator, NotInRoomError, Preset
from .event_auth import (
    AuthFailure,
    AuthOutcome,
    AuthPoint,
    check_against_auth_events,
    check_against_current_state,
    check_against_state_before,
    run_auth_checks,
)
from .ingest import EventVerifier, FederationIngester, IngestResult, PduOutcome, RoomLocks
from .interfaces import (
    EventNotifier,
    EventPersister,
    FederationEventClient,
    JoinClient,
    RemoteInviter,
    StateIdsAtEvent,
    StateReader,
    VerifyKeySource,
)
from .joins import RemoteJoin, RemoteJoiner, RemoteJoinError
from .room_servers import PduSink, RoomEventSender, RoomServers
from .state import resolve_state_maps

__all__ = [
    "AuthFailure",
    "AuthOutcome",
    "AuthPoint",
    "EventContext",
    "EventCreator",
    "EventNotifier",
    "EventPersister",
    "EventVerifier",
    "FederationEventClient",
    "FederationIngester",
    "IngestResult",
    "JoinClient",
    "NotInRoomError",
    "PduOutcome",
    "PduSink",
    "Preset",
    "RemoteInviter",
    "RemoteJoin",
    "RemoteJoinError",
    "RemoteJoiner",
    "RoomEventSender",
    "RoomLocks",
    "RoomServers",
    "StateIdsAtEvent",
    "StateReader",
    "UnknownPrevStateError",
    "VerifyKeySource",
    "check_against_auth_events",
    "check_against_current_state",
    "check_against_state_before",
    "compute_current_state_after",
    "compute_event_context",
    "event_to_persist",
    "resolve_state_maps",
    "run_auth_checks",
]
