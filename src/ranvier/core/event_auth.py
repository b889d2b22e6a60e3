"""The three points at which an event is authorised.

The server-server spec ("Checks performed on receipt of a PDU") checks an
event against the authorization rules three times, each time against a
different state:

1. against its own ``auth_events``: failing, the event is rejected;
2. against the state before it (its context): failing, it is rejected;
3. against the room's current state: failing, it is *soft failed*, kept
   with its state but never made a forward extremity, so a user cannot
   evade a ban by citing old parts of the room's history.

The checks return what they found instead of raising, because a failure is
an ordinary outcome that is stored with the event. :func:`run_auth_checks`
runs them in order on one context and returns the context updated with
the verdict. Outliers are checked only against their auth events: they
have no state.

The checks read events as :meth:`~ranvier.core.loading.EventLoader.load_for_auth`
does, redacted where a redaction applies, as Synapse's do; only an
outlier's check reads its auth events as stored, as Synapse's check of the
outliers it takes in does (see :mod:`ranvier.core.loading`).

The rules look at a handful of state entries: those of the auth events
selection (:func:`~ranvier.protocol.auth.auth_types_for_event`) and, from
v12, the create event, which the room ID names. Checks 2 and 3 read just
those keys of the state before and of the current state, so checking an
event costs the same in a room of 50,000 members as in a room of three.

Two choices where the spec leaves the way open, as Synapse makes them:

- when the state before the event is partial, it may lack the memberships
  the event depends on, so the state for check 2 is the resolution of the
  state before (at the keys the check reads) with the events the event
  cites; where they disagree, state resolution decides;
- check 3 is skipped while the room has partial state, whose current
  state may lack the sender's membership; when the room has no forward
  extremity yet; and when the event's prev events are exactly the room's
  forward extremities, because the current state is then the state before
  the event, already checked.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass

from ranvier.errors import AuthError
from ranvier.protocol.auth import (
    CREATE_KEY,
    StateKey,
    auth_types_for_event,
    authorize_event,
    check_auth_rules,
    create_event_id_for_room,
)
from ranvier.protocol.events import Pdu

from .context import EventContext
from .interfaces import StateReader
from .loading import EventLoader
from .state import resolve_state_maps

__all__ = [
    "AuthFailure",
    "AuthOutcome",
    "AuthPoint",
    "check_against_auth_events",
    "check_against_current_state",
    "check_against_state_before",
    "run_auth_checks",
]


class AuthPoint(enum.Enum):
    """Which state an event failed against."""

    AUTH_EVENTS = "auth_events"
    STATE_BEFORE = "state_before"
    CURRENT_STATE = "current_state"


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """An event failed the auth rules at ``point``, as ``error`` says."""

    point: AuthPoint
    error: AuthError

    @property
    def rule(self) -> str:
        """The stable name of the rule that failed, e.g. ``member.join.banned``."""
        return self.error.rule


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The context updated with the checks' verdict, and the failure if any."""

    context: EventContext
    failure: AuthFailure | None = None


async def run_auth_checks(event: Pdu, context: EventContext, store: StateReader) -> AuthOutcome:
    """Check ``event`` at the three points in turn; stop at the first failure.

    A failure against the auth events or the state before rejects the event
    (its rule becomes the context's ``rejected_reason``); a failure against
    the current state soft-fails it.
    """
    loader = EventLoader(store, event.room_version)
    failure = await check_against_auth_events(
        event, store, loader=loader, outlier=context.is_outlier
    )
    if failure is not None:
        return AuthOutcome(context.as_rejected(failure.rule), failure)
    if context.is_outlier:
        return AuthOutcome(context)
    failure = await check_against_state_before(event, context, store, loader=loader)
    if failure is not None:
        return AuthOutcome(context.as_rejected(failure.rule), failure)
    failure = await check_against_current_state(event, context, store, loader=loader)
    if failure is not None:
        return AuthOutcome(context.as_soft_failed(), failure)
    return AuthOutcome(context)


async def check_against_auth_events(
    event: Pdu,
    store: StateReader,
    *,
    loader: EventLoader | None = None,
    outlier: bool = False,
) -> AuthFailure | None:
    """Check 1: the rules about the cited events, then every rule against them.

    An auth event that is not stored fails the check (rule
    ``auth_events.missing``): the caller fetches missing auth events first.
    The auth events of an ``outlier`` are read as stored, those of any
    other event as the auth checks read them (see the module's doc).
    """
    loader = loader or EventLoader(store, event.room_version)
    wanted = list(event.auth_event_ids)
    if event.room_version.room_id_from_create_event and event.type != CREATE_KEY[0]:
        wanted.append(create_event_id_for_room(event.room_id))
    events = await (loader.load(wanted) if outlier else loader.load_for_auth(wanted))
    try:
        authorize_event(event, events, rejected=loader.rejected)
    except AuthError as error:
        return AuthFailure(AuthPoint.AUTH_EVENTS, error)
    return None


async def check_against_state_before(
    event: Pdu,
    context: EventContext,
    store: StateReader,
    *,
    loader: EventLoader | None = None,
) -> AuthFailure | None:
    """Check 2: every rule against the state before the event."""
    loader = loader or EventLoader(store, event.room_version)
    keys = auth_types_for_event(event)
    at_keys = _with_room_create(event, await context.get_state_before_for_keys(store, keys))
    if context.partial_state:
        # Only the keys are read: loaded as check 1 read them.
        cited = await loader.load_for_auth(event.auth_event_ids)
        claimed = {
            (auth_event.type, auth_event.state_key): auth_id
            for auth_id, auth_event in cited.items()
            if auth_event.state_key is not None and auth_id not in loader.rejected
        }
        resolved = await resolve_state_maps(
            store,
            event.room_id,
            event.room_version,
            [at_keys, _with_room_create(event, claimed)],
            loader=loader,
        )
        at_keys = _with_room_create(event, _at(resolved, keys))
    return await _check_against(event, at_keys, loader, AuthPoint.STATE_BEFORE)


async def check_against_current_state(
    event: Pdu,
    context: EventContext,
    store: StateReader,
    *,
    loader: EventLoader | None = None,
) -> AuthFailure | None:
    """Check 3, the soft-fail check: every rule against the room's current state.

    Skipped (None) for outliers, rejected events, rooms with partial state,
    rooms with no events in the DAG yet (no current state to speak of: the
    first event after a join) and events whose prev events are the room's
    forward extremities.
    """
    if context.is_outlier or context.rejected_reason is not None:
        return None
    if await store.is_partial_state_room(event.room_id):
        return None
    extremities = await store.get_forward_extremities(event.room_id)
    if not extremities or set(extremities) == set(event.prev_event_ids):
        return None
    loader = loader or EventLoader(store, event.room_version)
    current = await store.get_current_state_ids_for_keys(event.room_id, auth_types_for_event(event))
    return await _check_against(
        event, _with_room_create(event, current), loader, AuthPoint.CURRENT_STATE
    )


def _at(state: Mapping[StateKey, str], keys: Set[StateKey]) -> dict[StateKey, str]:
    return {key: event_id for key, event_id in state.items() if key in keys}


def _with_room_create(event: Pdu, state_ids: Mapping[StateKey, str]) -> dict[StateKey, str]:
    """``state_ids`` with, from v12, the create event the room ID names.

    The auth events selection leaves it out from v12 because the room ID
    stands for it; the rules still read it, and no other create event can
    speak for the room.
    """
    with_create = dict(state_ids)
    if event.room_version.room_id_from_create_event and event.type != CREATE_KEY[0]:
        with_create[CREATE_KEY] = create_event_id_for_room(event.room_id)
    return with_create


async def _check_against(
    event: Pdu, state_ids: Mapping[StateKey, str], loader: EventLoader, point: AuthPoint
) -> AuthFailure | None:
    """Check ``event`` against the events of ``state_ids``.

    A rejected event authorises nothing, and an event not stored cannot be
    looked at: both are left out, as the rules treat a key with no event.
    """
    events = await loader.load_for_auth(state_ids.values())
    auth_state = {
        key: events[event_id]
        for key, event_id in state_ids.items()
        if event_id in events and event_id not in loader.rejected
    }
    try:
        check_auth_rules(event, auth_state)
    except AuthError as error:
        return AuthFailure(point, error)
    return None
