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

Tokens are the ``/messages`` ones (``t<position>``), so ``start`` pages back
with ``/messages`` and ``end`` follows on with ``/events``; ``/events`` also
takes a sync token (``next_batch``) as ``from``.

``/events`` waits, like a ``/sync`` long-poll, on the stream notifier for a
write that concerns the room or the user, and looks again; with nothing new
when its timeout ends it answers an empty chunk whose ``end`` is its
``from``. Each look checks again who may read the room, so a room that
stops being ``world_readable`` stops feeding a preview.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any, Final, Protocol

import trio

from .account_data import AccountDataUpdates
from .accounts import Requester
from .notifier import StreamPosition
from .pagination import (
    MAX_LIMIT,
    HistoryReader,
    MessagesStore,
    format_pagination_token,
    parse_pagination_token,
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


def _limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PREVIEW_LIMIT
    return min(max(limit, 0), MAX_LIMIT)


class RoomPreviews:
    """``initialSync`` and ``/events`` of one room, by the rules above."""

    def __init__(
        self,
        store: MessagesStore,
        rooms: RoomStateView,
        notifier: StreamWaiter,
        *,
        account_data: RoomAccountData,
        directory: DirectoryVisibility,
    ) -> None:
        self._store = store
        self._rooms = rooms
        self._notifier = notifier
        self._account_data = account_data
        self._directory = directory

    async def initial_sync(
        self, requester: Requester, room_id: str, *, limit: int | None = None
    ) -> dict[str, Any]:
        """The room's state and newest events as ``requester`` may see them.

        ``presence`` and ``receipts`` are empty lists: ``/sync`` carries
        them for a member, and a preview does not show who is in a room
        beyond its state.
        """
        user_id = requester.user_id
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
        # The token where the reads stopped, whether or not the oldest event
        # read is shown: paging back from it goes on past what was hidden.
        shown = page.events[::-1]
        answer: dict[str, Any] = {
            "room_id": room_id,
            "messages": {
                "chunk": await sent_client_events(self._store, requester, shown, page.memberships),
                "start": format_pagination_token(page.edge),
                "end": format_pagination_token(visible),
            },
            "state": state,
            "visibility": await self._directory.get_visibility(room_id),
            "account_data": await self._room_account_data(user_id, room_id),
            "presence": [],
            "receipts": [],
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
        ``requester`` may see, waiting up to ``timeout_ms`` for some.
        """
        position = None if from_token is None else parse_pagination_token(from_token)
        count = max(_limit(limit), 1)
        waited_ms = DEFAULT_EVENTS_TIMEOUT_MS if timeout_ms is None else timeout_ms
        deadline = trio.current_time() + min(max(waited_ms, 0), MAX_TIMEOUT_MS) / 1000
        user_id = requester.user_id
        start = position
        while True:
            # The notifier's position before storage is read: a write after
            # the read moves it on, and wakes the wait below.
            before = self._notifier.position
            top, _ = await self._store.positions()
            visible, checked_before, joined_now = await readable_upto(self._store, user_id, room_id)
            if position is None:
                position = start = visible
            events, more = await self._store.room_events(
                room_id, after=position, upto=visible, limit=count, backwards=False
            )
            if events:
                end = events[-1].stream_ordering if more else visible
                shown, memberships = await visible_with_memberships(
                    self._store,
                    user_id,
                    events,
                    joined_now=joined_now,
                    checked_before=checked_before,
                )
                position = end
                if shown:
                    assert start is not None
                    return self._answer(
                        from_token,
                        start,
                        end,
                        await sent_client_events(self._store, requester, shown, memberships),
                    )
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
        assert position is not None
        return self._answer(from_token, start, position, [])

    @staticmethod
    def _answer(
        from_token: str | None, start: int, end: int, chunk: list[dict[str, Any]]
    ) -> dict[str, Any]:
        start_token = from_token if from_token is not None else format_pagination_token(start)
        end_token = start_token if end == start else format_pagination_token(end)
        return {"chunk": chunk, "start": start_token, "end": end_token}

    async def _room_account_data(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        """The user's account data of the room (tags included, as ``m.tag``)."""
        upto = await self._account_data.position()
        updates = await self._account_data.updates(user_id, None, upto)
        return updates.room_events.get(room_id, [])
