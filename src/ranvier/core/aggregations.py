"""Bundled aggregations: what the spec's "Server-side aggregation of events"
asks servers to add to an event's ``unsigned.m.relations`` wherever they
serve it to a client.

* ``m.thread`` on a thread root: the newest reply, how many replies there
  are, and whether the user asking started the thread or replied in it.
* ``m.replace`` on an edited event: its most recent valid edit, whole.
  Valid as the spec's "Validity of replacement events" says: of the
  original's sender and type, with ``m.new_content``, neither event a
  state event, the original no edit itself; most recent by
  ``origin_server_ts``, then event ID. A redacted event has none.
* ``m.reference`` on a referenced event: the IDs of the events
  referencing it.

The latest event of a thread carries its own bundles (one level down).
A latest event or edit of an erased user comes redacted to a user not
joined at it, as in a timeline (:mod:`ranvier.core.erasure`).
Reactions (``m.annotation``) are not bundled; clients page them with
``/relations``. Relations count as the user may see the room: up
to now for a member, up to their leave or ban after it.

:class:`Aggregations` bundles events already in the client format, one read
for any number of rooms. The classes below it are the endpoints that serve
events with their bundles: ``/messages``, ``/rooms/{roomId}/event`` and the
timelines of ``/sync`` (``/context``, ``/relations`` and ``/threads`` call
:class:`Aggregations` themselves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.records import StoredEvent

from .accounts import Requester
from .client_events import client_event
from .client_txns import TxnOwner
from .erasure import erasure_applied
from .filters import RoomEventFilter
from .pagination import (
    HistoryFiller,
    MessagesStore,
    RoomMessages,
    parse_sync_token,
    readable_upto,
)
from .rooms import RoomReader
from .sync import SyncHandler

__all__ = [
    "AggregationStore",
    "Aggregations",
    "BundlingRoomMessages",
    "BundlingRoomReader",
    "BundlingSyncHandler",
]

_THREAD: Final = "m.thread"
_REPLACE: Final = "m.replace"
_REFERENCE: Final = "m.reference"


class ThreadSummaryLike(Protocol):
    """A thread's aggregation (:class:`ranvier.storage.relations.ThreadSummary`)."""

    @property
    def count(self) -> int: ...
    @property
    def latest(self) -> StoredEvent: ...
    @property
    def replied(self) -> bool: ...


class AggregatedLike(Protocol):
    """What the read found (:class:`ranvier.storage.relations.Aggregated`),
    by the ID of the event aggregated.
    """

    @property
    def threads(self) -> Mapping[str, ThreadSummaryLike]: ...
    @property
    def edits(self) -> Mapping[str, StoredEvent]: ...
    @property
    def references(self) -> Mapping[str, Sequence[str]]: ...


class AggregationStore(Protocol):
    """The read of aggregations (:meth:`ranvier.storage.relations.RelationStorage.aggregations`)."""

    async def aggregations(
        self,
        user_id: str,
        rooms: Sequence[tuple[str, Sequence[str], Mapping[str, tuple[str, str]], int]],
    ) -> AggregatedLike:
        """Per room ``(room ID, event IDs, the sender and type of those
        that may be edited by event ID, the last position the user may
        read)``: the thread summaries, newest valid edits and references
        of those events.
        """
        ...


#: ``(room ID, its client-format events, the last position the user may read)``.
RoomEvents = tuple[str, Sequence[dict[str, Any]], int]


class Aggregations:
    """Adds bundled aggregations to client-format events, from ``relations``;
    ``store`` tells how far a user may read a room.
    """

    def __init__(self, store: MessagesStore, relations: AggregationStore) -> None:
        self._store = store
        self._relations = relations

    async def add_bundles(
        self, user_id: str, room_id: str, events: Sequence[dict[str, Any]], *, upto: int
    ) -> None:
        """Give each of ``events`` (client-format events of the room) that
        has any its bundled aggregations in ``unsigned.m.relations``, as
        ``user_id`` may see them (relations up to ``upto``).
        """
        await self.add_bundles_in_rooms(user_id, [(room_id, events, upto)])

    async def add_bundles_as_read(
        self, user_id: str, room_id: str, events: Sequence[dict[str, Any]]
    ) -> None:
        """:meth:`add_bundles` up to where ``user_id`` may read the room."""
        if events:
            upto = await self.readable_upto(user_id, room_id)
            if upto is not None:
                await self.add_bundles(user_id, room_id, events, upto=upto)

    async def readable_upto(self, user_id: str, room_id: str) -> int | None:
        """The last position ``user_id`` may read in the room; None if none."""
        try:
            upto, _, _ = await readable_upto(self._store, user_id, room_id)
        except MatrixError:
            return None
        return upto

    async def add_bundles_in_rooms(
        self, user_id: str, rooms: Sequence[RoomEvents], *, nested: bool = True
    ) -> None:
        """:meth:`add_bundles` for the events of several rooms, in one read
        (and one more for the latest events of threads, which carry their
        own bundles unless ``nested`` is false).

        Events cut down by a filter's ``event_fields`` to lack their ID or
        sender are left as they are.
        """
        queries = []
        shown: list[tuple[str, dict[str, Any]]] = []
        for room_id, events, upto in rooms:
            whole = [event for event in events if "event_id" in event and "sender" in event]
            if not whole:
                continue
            shown.extend((room_id, event) for event in whole)
            editable = {
                event["event_id"]: (event["sender"], event.get("type", ""))
                for event in whole
                if _may_be_edited(event)
            }
            queries.append((room_id, [event["event_id"] for event in whole], editable, upto))
        if not queries:
            return
        found = await self._relations.aggregations(user_id, queries)
        served = await self._served(
            user_id,
            [
                *(summary.latest for summary in found.threads.values()),
                *found.edits.values(),
            ],
        )
        latest: dict[str, list[dict[str, Any]]] = {}
        for room_id, event in shown:
            event_id = event["event_id"]
            bundle: dict[str, Any] = {}
            summary = found.threads.get(event_id)
            if summary is not None:
                latest_event = client_event(served.get(summary.latest.event_id, summary.latest))
                latest.setdefault(room_id, []).append(latest_event)
                bundle[_THREAD] = {
                    "latest_event": latest_event,
                    "count": summary.count,
                    "current_user_participated": summary.replied or event["sender"] == user_id,
                }
            edit = found.edits.get(event_id)
            if edit is not None:
                bundle[_REPLACE] = client_event(served.get(edit.event_id, edit))
            referencing = found.references.get(event_id)
            if referencing:
                bundle[_REFERENCE] = {"chunk": [{"event_id": ref} for ref in referencing]}
            if bundle:
                event.setdefault("unsigned", {})["m.relations"] = bundle
        if latest and nested:
            uptos = {room_id: upto for room_id, _, upto in rooms}
            await self.add_bundles_in_rooms(
                user_id,
                [(room_id, events, uptos[room_id]) for room_id, events in latest.items()],
                nested=False,
            )

    async def _served(
        self, user_id: str, events: Sequence[StoredEvent]
    ) -> Mapping[str, StoredEvent]:
        """Those of ``events`` (bundled ones) served to ``user_id`` otherwise
        than as read: erased senders' the user was not joined at, redacted.

        The user's membership at each is read only for events of erased
        senders, which are few: most reads find none.
        """
        erased = await self._store.erased_forms(events)
        if not erased:
            return {}
        verdicts = await self._store.visibility_at(user_id, list(erased))
        memberships = {
            event_id: membership or "leave" for event_id, (_, membership) in verdicts.items()
        }
        chosen = [event for event in events if event.event_id in erased]
        return {
            event.event_id: event
            for event in await erasure_applied(self._store, chosen, memberships)
        }


def _may_be_edited(event: Mapping[str, Any]) -> bool:
    """Whether the spec lets ``event`` (client format) be replaced: not a
    state event, not redacted, not itself a replacement.
    """
    if "state_key" in event or "redacted_because" in event.get("unsigned", {}):
        return False
    content = event.get("content")
    relates_to = content.get("m.relates_to") if isinstance(content, dict) else None
    return not (isinstance(relates_to, dict) and relates_to.get("rel_type") == _REPLACE)


class BundlingRoomMessages(RoomMessages):
    """``/messages`` whose events carry their bundled aggregations."""

    def __init__(
        self,
        store: MessagesStore,
        aggregations: Aggregations,
        backfill: HistoryFiller | None = None,
    ) -> None:
        super().__init__(store, backfill)
        self._aggregations = aggregations

    async def get_messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        direction: Literal["b", "f"],
        from_token: str | None = None,
        to_token: str | None = None,
        limit: int | None = None,
        event_filter: RoomEventFilter | None = None,
        everything: bool = False,
    ) -> dict[str, Any]:
        answer = await super().get_messages(
            requester,
            room_id,
            direction=direction,
            from_token=from_token,
            to_token=to_token,
            limit=limit,
            event_filter=event_filter,
            everything=everything,
        )
        await self._aggregations.add_bundles_as_read(requester.user_id, room_id, answer["chunk"])
        return answer


class BundlingRoomReader(RoomReader):
    """A :class:`RoomReader` whose ``/event`` answers carry their bundled
    aggregations; the rest of its arguments are :class:`RoomReader`'s.
    """

    def __init__(self, aggregations: Aggregations, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bundler = aggregations

    async def event(
        self, user_id: str, room_id: str, event_id: str, *, sent_by: TxnOwner | None = None
    ) -> dict[str, Any]:
        answer = await super().event(user_id, room_id, event_id, sent_by=sent_by)
        await self._bundler.add_bundles_as_read(user_id, room_id, [answer])
        return answer


class BundlingSyncHandler(SyncHandler):
    """``/sync`` whose timelines' events carry their bundled aggregations:
    those of joined rooms up to the sync's position, those of rooms left up
    to the user's leave. The rest of its arguments are :class:`SyncHandler`'s.
    """

    def __init__(self, aggregations: Aggregations, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bundler = aggregations

    async def sync(self, requester: Requester, **options: Any) -> dict[str, Any]:
        response = await super().sync(requester, **options)
        rooms = response.get("rooms", {})
        position = parse_sync_token(response["next_batch"]).events
        wanted: list[RoomEvents] = []
        for section in ("join", "leave"):
            for room_id, room in rooms.get(section, {}).items():
                events = room.get("timeline", {}).get("events")
                if not events:
                    continue
                upto: int | None = position
                if section == "leave":
                    upto = await self._bundler.readable_upto(requester.user_id, room_id)
                if upto is not None:
                    wanted.append((room_id, events, upto))
        await self._bundler.add_bundles_in_rooms(requester.user_id, wanted)
        return response
