"""``GET /rooms/{roomId}/context/{eventId}``: an event with the events
around it and the room's state, for a client jumping to an event (a
search result, a reply's original, a permalink).

Who may see what is :class:`~ranvier.core.pagination.RoomMessages`'s rule:
a user who may not read the room at all gets 403 ``M_FORBIDDEN``; an event
the user may not see (not in the room, after their leave, or hidden by the
history visibility at it) is answered as unknown, 404 ``M_NOT_FOUND``, as
the spec asks. The events around it are those ``/messages`` would show.

``limit`` counts the events before and after together: half of it (rounded
down) before, the rest after. ``start`` and ``end`` are ``/messages``
tokens, to page back from the first event returned and forward from the
last. ``state`` is the room's state at the last event returned; with
``lazy_load_members`` it names no members but the senders of the events
returned. The filter applies to the events around the event and to the
state, never to the event itself. The events carry their bundled
aggregations when a :class:`Bundler` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.records import StateKey, StateMap, StoredEvent

from .accounts import Requester
from .client_events import client_event
from .filters import RoomEventFilter
from .pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    HistoryReader,
    MessagesStore,
    format_pagination_token,
    readable_upto,
    sent_client_events,
    visible_page,
    visible_with_memberships,
)

__all__ = [
    "Bundler",
    "ContextStore",
    "EventContexts",
    "ReadableEvent",
    "ReadingLimits",
    "Surroundings",
    "readable_event",
    "surrounding_events",
    "visible_within",
]

_MEMBER: Final = "m.room.member"
#: Below every position, backfilled events' included.
_BOTTOM: Final = -(2**62)


class ContextStore(MessagesStore, Protocol):
    """The reads of ``/context``: those of ``/messages`` and the state at a position."""

    async def state_at(
        self, room_id: str, position: int, keys: Collection[StateKey] | None = None
    ) -> StateMap: ...


class Bundler(Protocol):
    """Adds bundled aggregations to events
    (:meth:`ranvier.core.relations.Relations.add_bundles`).
    """

    async def add_bundles(
        self, user_id: str, room_id: str, events: Sequence[dict[str, Any]], *, upto: int
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ReadableEvent:
    """An event a user may see, and how far they may read its room."""

    event: StoredEvent
    #: The last position the user may read.
    visible: int
    #: From here on events need no visibility check.
    checked_before: int
    joined_now: bool
    #: The user's membership at the event, for ``unsigned.membership``;
    #: None for an event without state here.
    membership: str | None = None


async def readable_event(
    store: MessagesStore, user_id: str, room_id: str, event_id: str
) -> ReadableEvent:
    """``event_id`` if ``user_id`` may see it in the room, by ``/messages``'s
    rules: 403 ``M_FORBIDDEN`` if they may not read the room at all, 404
    ``M_NOT_FOUND`` if the event is not a timeline event of the room they
    may see.
    """
    visible, checked_before, joined_now = await readable_upto(store, user_id, room_id)
    event = (await store.get_events([event_id])).get(event_id)
    shown: list[StoredEvent] = []
    memberships: dict[str, str] = {}
    if (
        event is not None
        and event.room_id == room_id
        and not event.outlier
        and event.rejected_reason is None
        and not event.soft_failed
        and event.stream_ordering <= visible
    ):
        shown, memberships = await visible_with_memberships(
            store, user_id, [event], joined_now=joined_now, checked_before=checked_before
        )
    if event is None or not shown:
        raise MatrixError(
            f"event {event_id} is not known in {room_id}, or not visible",
            errcode="M_NOT_FOUND",
            http_status=404,
        )
    # As served to the user (an erased sender's maybe redacted).
    return ReadableEvent(
        shown[0], visible, checked_before, joined_now, memberships.get(event.event_id)
    )


class ReadingLimits(Protocol):
    """How far a user may read a room (see :func:`readable_upto`)."""

    @property
    def visible(self) -> int: ...

    @property
    def checked_before(self) -> int: ...

    @property
    def joined_now(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Surroundings:
    """The events either side of an event that a user may see."""

    #: Nearest first.
    before: list[StoredEvent]
    after: list[StoredEvent]
    #: The tokens' positions: where the reads stopped, whatever the history
    #: visibility hid of what they read.
    start: int
    end: int
    #: The user's membership at each event shown, by event ID.
    memberships: dict[str, str]


async def surrounding_events(
    store: MessagesStore,
    user_id: str,
    event: StoredEvent,
    limits: ReadingLimits,
    *,
    before_limit: int,
    after_limit: int,
    accept: Callable[[str, str], bool] | None,
) -> Surroundings:
    """Up to ``before_limit`` events before ``event`` and ``after_limit``
    after it (those ``accept`` takes, when given) that ``user_id`` may see,
    as ``/context`` reads them: each side read past the events hidden from
    the user (:func:`ranvier.core.pagination.visible_page`), its token where
    its reads stopped.
    """
    reader = HistoryReader(
        user_id, limits.joined_now, limits.checked_before, await store.ignored_users(user_id)
    )
    before = await visible_page(
        store,
        event.room_id,
        reader,
        after=_BOTTOM,
        upto=event.stream_ordering - 1,
        limit=before_limit,
        backwards=True,
        accept=accept,
    )
    after = await visible_page(
        store,
        event.room_id,
        reader,
        after=event.stream_ordering,
        upto=limits.visible,
        limit=after_limit,
        backwards=False,
        accept=accept,
    )
    return Surroundings(
        before.events,
        after.events,
        before.edge,
        after.edge,
        {**before.memberships, **after.memberships},
    )


async def visible_within(
    store: MessagesStore,
    user_id: str,
    events: Sequence[StoredEvent],
    limits: ReadingLimits,
    *,
    ignored: Collection[str] | None = None,
) -> tuple[list[StoredEvent], dict[str, str]]:
    """Those of ``events`` the history visibility lets ``user_id`` see,
    and the user's membership at each (:func:`visible_with_memberships`,
    which ``ignored`` is handed to).
    """
    return await visible_with_memberships(
        store,
        user_id,
        events,
        joined_now=limits.joined_now,
        checked_before=limits.checked_before,
        ignored=ignored,
    )


class EventContexts:
    """Answers ``/context`` from ``store``; ``bundler``, when given, adds
    the events' bundled aggregations.
    """

    def __init__(self, store: ContextStore, bundler: Bundler | None = None) -> None:
        self._store = store
        self._bundler = bundler

    async def get_context(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        *,
        limit: int | None = None,
        event_filter: RoomEventFilter | None = None,
    ) -> dict[str, Any]:
        if limit is None:
            limit = event_filter.limit if event_filter and event_filter.limit else DEFAULT_LIMIT
        limit = min(limit, MAX_LIMIT)
        user_id = requester.user_id
        found = await readable_event(self._store, user_id, room_id, event_id)
        event = found.event
        accept = None if event_filter is None else event_filter.predicate()
        before_limit = limit // 2
        around = await surrounding_events(
            self._store,
            user_id,
            event,
            found,
            before_limit=before_limit,
            after_limit=limit - before_limit,
            accept=accept,
        )
        before, after, start, end = around.before, around.after, around.start, around.end
        returned = [*reversed(before), event, *after]
        memberships = dict(around.memberships)
        if found.membership is not None:
            memberships[event.event_id] = found.membership
        formatted = await sent_client_events(
            self._store, requester, [*before, event, *after], memberships
        )
        events_before = formatted[: len(before)]
        shown = formatted[len(before)]
        events_after = formatted[len(before) + 1 :]
        if self._bundler is not None:
            await self._bundler.add_bundles(
                user_id, room_id, [*events_before, shown, *events_after], upto=found.visible
            )
        return {
            "start": format_pagination_token(start),
            "end": format_pagination_token(end),
            "events_before": events_before,
            "event": shown,
            "events_after": events_after,
            "state": await self._state(room_id, returned, end, event_filter),
        }

    async def _state(
        self,
        room_id: str,
        returned: Sequence[StoredEvent],
        position: int,
        event_filter: RoomEventFilter | None,
    ) -> list[dict[str, Any]]:
        state = await self._store.state_at(room_id, position)
        if event_filter is not None and event_filter.lazy_load_members:
            senders = {stored.sender for stored in returned}
            state = {
                key: state_id
                for key, state_id in state.items()
                if key[0] != _MEMBER or key[1] in senders
            }
        stored = await self._store.get_events(state.values())
        accept = None if event_filter is None else event_filter.predicate()
        return [
            client_event(stored[state_id])
            for _, state_id in sorted(state.items())
            if state_id in stored
            and (accept is None or accept(stored[state_id].type, stored[state_id].sender))
        ]
