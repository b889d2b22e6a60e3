"""The homeserver's handlers, on Trio: event contexts, authorization at the
three points the spec names, and state resolution with storage behind it.

core talks to storage (or a worker's replication client) only through the
small protocols of :mod:`ranvier.core.interfaces`.
"""

from .context import (
    EventContext,
    UnknownPrevStateError,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
)
from .event_auth import (
    AuthFailure,
    AuthOutcome,
    AuthPoint,
    check_against_auth_events,
    check_against_current_state,
    check_against_state_before,
    run_auth_checks,
)
from .interfaces import EventPersister, StateReader
from .state import resolve_state_maps

__all__ = [
    "AuthFailure",
    "AuthOutcome",
    "AuthPoint",
    "EventContext",
    "EventPersister",
    "StateReader",
    "UnknownPrevStateError",
    "check_against_auth_events",
    "check_against_current_state",
    "check_against_state_before",
    "compute_current_state_after",
    "compute_event_context",
    "event_to_persist",
    "resolve_state_maps",
    "run_auth_checks",
]
