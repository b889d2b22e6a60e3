"""Room previews (the spec's "Room Previews" module): a room's snapshot
(``GET /rooms/{roomId}/initialSync``) and its new events as they come
(``GET /events?room_id=...``), for its members and, in a room whose history
is ``world_readable``, for anyone.

Who may read what is the rule ``/messages`` keeps
(:func:`ranvier.core.pagination.readable_upto` and
:func:`~ranvier.core.pagination.visible_to`), and the state shown is what
``/state`` shows (:class:`ranvier.core.rooms.RoomReader`), so a preview never
shows more than those do:

* a member joined now reads up to now, one who left or was banned up to
  that event (the state then, the messages before it);
* anyone else reads a room whose history is ``world_readable`` now, each
  event only where the room's history visibility at it allowed (so the
  events from before a room became ``world_readable`` stay hidden);
* everyone else, and a room unknown here, gets 403 ``M_FORBIDDEN``, the
  answer the spec gives.

Whoever sees the room as it is now (a member joined now, or anyone
peeking a ``world_readable`` room) also gets its receipts and its joined
members' presence, as Synapse gives them: ``receipts`` holds the room's
``m.receipt`` event and ``presence`` an ``m.presence`` event of each joined
member whose presence is known (a user never heard from is offline, which
clients assume anyway). Private receipts (``m.read.private``) are shown
to their owner alone, and only the room's joined members' presence is
shown, never that of a user who left it or shares another room with the
reader. A member who left or was banned sees the room as it was when they
left, with neither: they share it no more.

``start`` is a ``/messages`` token (``t<position>``), to page back with.
``end`` is a sync token, which ``/messages`` takes too, carrying the
receipts and presence positions the answer reached as well, so that
``/events`` from it hands over each receipt and each change of presence
once; from a ``/messages`` token it starts them at the time of its first
look.

``/events`` waits, like a ``/sync`` long-poll, on the stream notifier for a
write that concerns the room or the user, and looks again; with nothing new
when its timeout ends it answers an empty chunk whose ``end`` is its
``from``. Its chunk holds the room's new events the reader may see, then
the receipts changed since ``from``, then the members' changes of
presence. Each look checks again who may read the room, so a room that
stops being ``world_readable`` stops feeding a preview.
"""

from __future__ import annotations

from collections.abc import Collection, Set
from typing import Any, Final, NamedTuple, Protocol

import trio

from .account_data import AccountDataUpdates
from .accounts import Requester
from .notifier import StreamPosition
from .pagination import (
    MAX_LIMIT,
    HistoryReader,
    MessagesStore,
    format_pagination_token,
    format_sync_token,
    parse_pagination_token,
    parse_sync_token,
    readable_upto,
    sent_client_events,
    visible_page,
    visible_with_memberships,
)
from .sync import MAX_TIMEOUT_MS

__all__ = [
    "DEFAULT_EVENTS_TIMEOUT_MS",
    "DEFAULT_PREVIEW_LIMIT",
    "RoomPreviews",
]

#: Events in a snapshot or an ``/events`` answer unless the client asks
#: otherwise; the number Synapse uses, which clients have been written against.
DEFAULT_PREVIEW_LIMIT: Final = 10
#: How long ``/events`` waits without a ``timeout``, as Synapse does.
DEFAULT_EVENTS_TIMEOUT_MS: Final = 30_000
#: Below every stream position, backfilled events' included.
_BEFORE_ALL: Final = -(2**62)
#: The memberships ``membership`` in a snapshot may name (the spec's enum).
_SHOWN_MEMBERSHIPS: Final = frozenset({"invite", "join", "leave", "ban"})


class RoomStateView(Protocol):
    """The state of a room as a user may see it (:class:`ranvier.core.rooms.RoomReader`)."""

    async def state(self, user_id: str, room_id: str) -> list[dict[str, Any]]: ...

    async def membership(self, user_id: str, room_id: str) -> str | None: ...


class RoomAccountData(Protocol):
    """Users' account data (:class:`ranvier.core.account_data.AccountData`)."""

    async def position(self) -> int: ...

    async def updates(self, user_id: str, after: int | None, upto: int) -> AccountDataUpdates: ...


class DirectoryVisibility(Protocol):
    """Whether a room is in the room directory (:class:`ranvier.core.room_list.RoomList`)."""

    async def get_visibility(self, room_id: str) -> str: ...


class StreamWaiter(Protocol):
    """Waits for writes (:class:`ranvier.core.notifier.StreamNotifier`)."""

    @property
    def position(self) -> StreamPosition: ...

    async def wait_beyond(
        self,
        position: StreamPosition,
        *,
        rooms: Set[str] | None = None,
        user_id: str | None = None,
    ) -> None: ...


class PreviewStore(MessagesStore, Protocol):
    """The reads of a preview (:class:`ranvier.storage.sync_reads.SyncReads`)."""

    async def joined_members(self, room_ids: Collection[str]) -> set[str]: ...


class ReceiptSource(Protocol):
    """Rooms' receipts (:class:`ranvier.core.receipts.Receipts`)."""

    async def position(self) -> int: ...

    async def for_sync(
        self, user_id: str, room_ids: Collection[str], after: int | None, upto: int
    ) -> dict[str, dict[str, Any]]: ...


class PresenceSource(Protocol):
    """Users' presence (:class:`ranvier.core.presence.Presence`)."""

    async def position(self) -> int: ...

    async def of_users(
        self, user_ids: Collection[str], after: int | None, upto: int
    ) -> list[dict[str, Any]]: ...


class _Mark(NamedTuple):
    """Where a preview stands in the streams it follows."""

    events: int
    receipts: int
    presence: int

    def token(self) -> str:
        return format_sync_token(
            StreamPosition(self.events, 0, receipts=self.receipts, presence=self.presence)
        )


def _parse_from(token: str) -> tuple[int, int | None, int | None]:
    """The events, receipts and presence positions of a ``from`` token; a
    ``/messages`` token has no receipts or presence position.
    """
    events = parse_pagination_token(token)
    if token.startswith("t"):
        return events, None, None
    position = parse_sync_token(token)
    return events, position.receipts, position.presence


def _limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PREVIEW_LIMIT
    return min(max(limit, 0), MAX_LIMIT)


class RoomPreviews:
    """``initialSync`` and ``/events`` of one room, by the rules above."""

    def __init__(
        self,
        store: PreviewStore,
        rooms: RoomStateView,
        notifier: StreamWaiter,
        *,
        account_data: RoomAccountData,
        directory: DirectoryVisibility,
        receipts: ReceiptSource | None = None,
        presence: PresenceSource | None = None,
    ) -> None:
        self._store = store
        self._rooms = rooms
        self._notifier = notifier
        self._account_data = account_data
        self._directory = directory
        self._receipts = receipts
        self._presence = presence

    async def initial_sync(
        self, requester: Requester, room_id: str, *, limit: int | None = None
    ) -> dict[str, Any]:
        """The room's state and newest events as ``requester`` may see them,
        with its receipts and its joined members' presence when they see
        the room as it is now.
        """
        user_id = requester.user_id
        # Read before what they cover, so /events from the answer's end
        # hands over what changes while this is made.
        receipts_at, presence_at = await self._ephemeral_positions()
        visible, checked_before, joined_now = await readable_upto(self._store, user_id, room_id)
        state = await self._rooms.state(user_id, room_id)
        membership = await self._rooms.membership(user_id, room_id)
        page = await visible_page(
            self._store,
            room_id,
            HistoryReader(user_id, joined_now, checked_before),
            after=_BEFORE_ALL,
            upto=visible,
            limit=_limit(limit),
            backwards=True,
        )
        receipts: list[dict[str, Any]] = []
        presence: list[dict[str, Any]] = []
        if await self._sees_now(user_id, room_id, joined_now=joined_now):
            receipts = await self._receipt_events(user_id, room_id, None, receipts_at)
            members = {
                event["state_key"]
                for event in state
                if event["type"] == "m.room.member" and event["content"].get("membership") == "join"
            }
            presence = await self._presence_events(members, None, presence_at)
        # The token where the reads stopped, whether or not the oldest event
        # read is shown: paging back from it goes on past what was hidden.
        shown = page.events[::-1]
        answer: dict[str, Any] = {
            "room_id": room_id,
            "messages": {
                "chunk": await sent_client_events(self._store, requester, shown, page.memberships),
                "start": format_pagination_token(page.edge),
                "end": _Mark(visible, receipts_at, presence_at).token(),
            },
            "state": state,
            "visibility": await self._directory.get_visibility(room_id),
            "account_data": await self._room_account_data(user_id, room_id),
            "presence": presence,
            "receipts": receipts,
        }
        if membership in _SHOWN_MEMBERSHIPS:
            answer["membership"] = membership
        return answer

    async def events(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: str | None = None,
        timeout_ms: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """The room's events after ``from_token`` (now, when not given) that
        ``requester`` may see, with the receipts and presence that changed
        since, waiting up to ``timeout_ms`` for some.
        """
        given = None if from_token is None else _parse_from(from_token)
        count = max(_limit(limit), 1)
        waited_ms = DEFAULT_EVENTS_TIMEOUT_MS if timeout_ms is None else timeout_ms
        deadline = trio.current_time() + min(max(waited_ms, 0), MAX_TIMEOUT_MS) / 1000
        user_id = requester.user_id
        mark: _Mark | None = None
        start: _Mark | None = None
        while True:
            # The notifier's position before storage is read: a write after
            # the read moves it on, and wakes the wait below.
            before = self._notifier.position
            receipts_at, presence_at = await self._ephemeral_positions()
            top, _ = await self._store.positions()
            visible, checked_before, joined_now = await readable_upto(self._store, user_id, room_id)
            if mark is None:
                if given is None:
                    mark = _Mark(visible, receipts_at, presence_at)
                else:
                    events_from, receipts_from, presence_from = given
                    mark = _Mark(
                        events_from,
                        receipts_at if receipts_from is None else receipts_from,
                        presence_at if presence_from is None else presence_from,
                    )
                start = mark
            chunk: list[dict[str, Any]] = []
            events_end = mark.events
            events, more = await self._store.room_events(
                room_id, after=mark.events, upto=visible, limit=count, backwards=False
            )
            if events:
                events_end = events[-1].stream_ordering if more else visible
                shown, memberships = await visible_with_memberships(
                    self._store,
                    user_id,
                    events,
                    joined_now=joined_now,
                    checked_before=checked_before,
                )
                chunk += await sent_client_events(self._store, requester, shown, memberships)
            if await self._sees_now(user_id, room_id, joined_now=joined_now):
                chunk += await self._receipt_events(user_id, room_id, mark.receipts, receipts_at)
                members = await self._store.joined_members([room_id])
                chunk += await self._presence_events(members, mark.presence, presence_at)
                mark = _Mark(events_end, receipts_at, presence_at)
            else:
                mark = mark._replace(events=events_end)
            if chunk:
                break
            if more:
                continue
            if visible < top:
                # The user reads the room no further (they left it): nothing
                # new will ever be theirs to see.
                break
            with trio.move_on_at(deadline) as waited:
                await self._notifier.wait_beyond(
                    before._replace(events=top), rooms=frozenset({room_id}), user_id=user_id
                )
            if waited.cancelled_caught:
                break
        assert start is not None
        start_token = from_token if from_token is not None else start.token()
        # A /messages token as from is answered a token with the receipts
        # and presence positions, even with nothing new, so that what comes
        # before the next request is not missed.
        whole = given is None or None not in given
        end_token = start_token if mark == start and whole else mark.token()
        return {"chunk": chunk, "start": start_token, "end": end_token}

    async def _ephemeral_positions(self) -> tuple[int, int]:
        """The receipts and presence streams' newest positions."""
        receipts_at = 0 if self._receipts is None else await self._receipts.position()
        presence_at = 0 if self._presence is None else await self._presence.position()
        return receipts_at, presence_at

    async def _sees_now(self, user_id: str, room_id: str, *, joined_now: bool) -> bool:
        """Whether the user reads the room as it is now (joined, or peeking
        a ``world_readable`` room), not as it was when they left it; the
        rule :func:`~ranvier.core.pagination.readable_upto` applies, which
        has let them read the room at all.
        """
        if joined_now:
            return True
        membership = await self._store.current_membership(room_id, user_id)
        if membership is None or membership[0] not in ("leave", "ban"):
            return True
        return await self._store.has_forgotten(user_id, room_id)

    async def _receipt_events(
        self, user_id: str, room_id: str, after: int | None, upto: int
    ) -> list[dict[str, Any]]:
        """The room's ``m.receipt`` event of the receipts changed in
        ``(after, upto]`` (all of them when ``after`` is None), others'
        private ones left out; none when there are none.
        """
        if self._receipts is None or (after is not None and after >= upto):
            return []
        found = await self._receipts.for_sync(user_id, [room_id], after, upto)
        event = found.get(room_id)
        if event is None or not event.get("content"):
            return []
        # Outside a room's section of /sync, the event says whose room it is.
        return [{**event, "room_id": room_id}]

    async def _presence_events(
        self, members: Collection[str], after: int | None, upto: int
    ) -> list[dict[str, Any]]:
        """The ``m.presence`` events of ``members`` whose presence changed in
        ``(after, upto]`` (all known when ``after`` is None), each naming its
        user in ``content`` too, where the clients of these older APIs look
        for it (Synapse gives it there).
        """
        if self._presence is None or not members or (after is not None and after >= upto):
            return []
        found = await self._presence.of_users(members, after, upto)
        return [
            {**event, "content": {**event["content"], "user_id": event["sender"]}}
            for event in found
        ]

    async def _room_account_data(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        """The user's account data of the room (tags included, as ``m.tag``)."""
        upto = await self._account_data.position()
        updates = await self._account_data.updates(user_id, None, upto)
        return updates.room_events.get(room_id, [])
