"""Relations and threads for clients: ``GET /rooms/{roomId}/relations/{eventId}``
(with ``/{relType}`` and ``/{relType}/{eventType}``) and
``GET /rooms/{roomId}/threads``.

An event relates to another through the ``m.relates_to`` of its content
(:mod:`ranvier.storage.relations` keeps them). Both endpoints see a room as
``/messages`` does (:mod:`ranvier.core.pagination`): a user reads it up to
now when joined, up to their leave or ban after, each event as the history
visibility at it allows.

``/relations`` answers 404 ``M_NOT_FOUND`` when the parent event is not one
the user may see (or the room not one they may read), as its spec asks. It
pages the related events by stream position, newest first unless
``dir=f``; its tokens are ``/messages`` tokens, so a ``/messages`` or
``/sync`` token works as ``from`` or ``to``. With ``recurse`` it follows
relations of related events down to :data:`RECURSION_DEPTH` relations from
the parent and says so in ``recursion_depth``.

``/threads`` lists the roots of the room's threads (events with
``m.thread`` replies), the one with the newest reply first; with
``include=participated`` only threads the user started or replied in. Each
root carries its ``m.thread`` aggregation.

Every event served here carries its bundled aggregations
(:mod:`ranvier.core.aggregations`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.records import StoredEvent

from .accounts import Requester
from .aggregations import Aggregations
from .event_context import readable_event
from .pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MessagesStore,
    format_pagination_token,
    parse_pagination_token,
    readable_upto,
    sent_client_events,
    visible_with_memberships,
)

__all__ = ["RECURSION_DEPTH", "RelationStore", "Relations"]

#: How many relations away from the parent ``recurse`` goes (the spec
#: recommends at least 3).
RECURSION_DEPTH: Final = 3
_TOP: Final = 2**62


class RelationStore(Protocol):
    """The reads of relations (:class:`ranvier.storage.relations.RelationStorage`)."""

    async def related_events(
        self,
        room_id: str,
        event_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        after: int,
        upto: int,
        limit: int,
        backwards: bool,
        depth: int,
    ) -> tuple[list[StoredEvent], bool]: ...

    async def thread_roots(
        self,
        room_id: str,
        *,
        user_id: str,
        participated: bool,
        before: int,
        upto: int,
        limit: int,
    ) -> tuple[list[tuple[StoredEvent, int]], bool]: ...


def _limit(limit: int | None) -> int:
    return DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)


class Relations:
    """Serves relations and threads from ``store`` (the reads of ``/messages``)
    and ``relations``, the events with ``aggregations``' bundles.
    """

    def __init__(
        self, store: MessagesStore, relations: RelationStore, aggregations: Aggregations
    ) -> None:
        self._store = store
        self._relations = relations
        self._aggregations = aggregations

    async def get_relations(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        *,
        rel_type: str | None = None,
        event_type: str | None = None,
        direction: Literal["b", "f"] = "b",
        from_token: str | None = None,
        to_token: str | None = None,
        limit: int | None = None,
        recurse: bool | None = None,
    ) -> dict[str, Any]:
        from_position = None if from_token is None else parse_pagination_token(from_token)
        to_position = None if to_token is None else parse_pagination_token(to_token)
        count = _limit(limit)
        try:
            found = await readable_event(self._store, requester.user_id, room_id, event_id)
        except MatrixError as exc:
            if exc.errcode != "M_FORBIDDEN":
                raise
            raise MatrixError(
                f"event {event_id} is not known in {room_id}, or not visible",
                errcode="M_NOT_FOUND",
                http_status=404,
            ) from None
        if direction == "b":
            upto = found.visible if from_position is None else min(from_position, found.visible)
            after = -_TOP if to_position is None else to_position
        else:
            after = -_TOP if from_position is None else from_position
            upto = found.visible if to_position is None else min(to_position, found.visible)
        events, more = await self._relations.related_events(
            room_id,
            event_id,
            rel_type=rel_type,
            event_type=event_type,
            after=after,
            upto=upto,
            limit=count,
            backwards=direction == "b",
            depth=RECURSION_DEPTH if recurse else 1,
        )
        next_position = None
        if events and more:
            last = events[-1].stream_ordering
            next_position = last - 1 if direction == "b" else last
        events, memberships = await visible_with_memberships(
            self._store,
            requester.user_id,
            events,
            joined_now=found.joined_now,
            checked_before=found.checked_before,
        )
        answer: dict[str, Any] = {
            "chunk": await self.formatted(
                requester, room_id, events, upto=found.visible, memberships=memberships
            )
        }
        if next_position is not None:
            answer["next_batch"] = format_pagination_token(next_position)
        if from_token is not None:
            answer["prev_batch"] = from_token
        if recurse is not None:
            answer["recursion_depth"] = RECURSION_DEPTH if recurse else 1
        return answer

    async def get_threads(
        self,
        requester: Requester,
        room_id: str,
        *,
        include: Literal["all", "participated"] = "all",
        from_token: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        before = _TOP if from_token is None else parse_pagination_token(from_token)
        count = _limit(limit)
        user_id = requester.user_id
        visible, checked_before, joined_now = await readable_upto(self._store, user_id, room_id)
        roots, more = await self._relations.thread_roots(
            room_id,
            user_id=user_id,
            participated=include == "participated",
            before=before,
            upto=visible,
            limit=count,
        )
        shown, memberships = await visible_with_memberships(
            self._store,
            user_id,
            [root for root, _ in roots],
            joined_now=joined_now,
            checked_before=checked_before,
        )
        answer: dict[str, Any] = {
            "chunk": await self.formatted(
                requester, room_id, shown, upto=visible, memberships=memberships
            )
        }
        if roots and more:
            answer["next_batch"] = format_pagination_token(roots[-1][1])
        return answer

    async def formatted(
        self,
        requester: Requester,
        room_id: str,
        events: Sequence[StoredEvent],
        *,
        upto: int,
        memberships: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """``events`` in the client format, each with the transaction ID the
        requester's device sent it under, the requester's membership at it
        from ``memberships``, and its bundled aggregations as ``requester``
        may see them (up to ``upto``).
        """
        formatted = await sent_client_events(self._store, requester, events, memberships)
        await self._aggregations.add_bundles(requester.user_id, room_id, formatted, upto=upto)
        return formatted
