"""``POST /search``: full-text search of the messages, names and topics of
the rooms a user is joined to.

The index (:mod:`ranvier.storage.search`) is SQLite FTS5. The user's
search term is never handed to FTS5 as a query: it is cut into words (runs
of letters and digits, as the index's tokenizer cuts text), and each word
becomes a quoted prefix term, all of them required. So ``martian men``
finds "Martians and men", and no FTS5 syntax in the term (``OR``, ``NEAR``,
quotes, ``*``, column filters) can change the query or break it. A term
without a word finds nothing.

Who sees what is ``/messages``'s rule (:mod:`ranvier.core.pagination`),
narrowed to rooms the user is joined to now, as the spec's search covers:
each event as the history visibility at it allows, so a user who joined
later does not find what was said before under ``joined`` visibility. Nor
does a user find an erased user's message they are served redacted
(:mod:`ranvier.core.erasure`): it has lost its content for them, as a
redacted event has, and a match would tell what it said. The
filter's ``rooms``/``not_rooms`` pick the rooms, its ``types`` and
``senders`` the events, its ``limit`` the page size.

Order is ``rank`` (the index's BM25 score, closest first) or ``recent``
(newest first). ``next_batch`` is opaque to clients: the stream position of
the last event looked at for ``recent``, which new messages do not shift,
and the number of matches looked at for ``rank``. ``count`` is the number of
matching events in those rooms before the events' own visibility and the
filter's types and senders are applied: the spec asks for an approximate
count. ``highlights`` are the words of the results that matched a term.
``event_context`` gives at most :data:`MAX_CONTEXT` events on either side
of a result, as ``/context`` finds them (the search's filter applied).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.records import StoredEvent
from ranvier.storage.search import SEARCHABLE_KEYS, SearchHit, SearchPage

from .accounts import Requester
from .client_events import client_event, event_content
from .erasure import ErasedEvent
from .event_context import Bundler, ContextStore, surrounding_events, visible_within
from .filters import RoomEventFilter
from .pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    format_pagination_token,
    readable_upto,
    senders_memberships,
    sent_client_events,
)

__all__ = [
    "ALL_KEYS",
    "MAX_CONTEXT",
    "ContextRequest",
    "RoomEventsSearch",
    "Search",
    "SearchStore",
    "fts_query",
    "search_words",
]

#: The keys searched when a request names none.
ALL_KEYS: Final = tuple(SEARCHABLE_KEYS.values())
#: Matches read from the index at a time, before visibility and filters.
_BATCH: Final = 50
#: The most events of context on either side of a result, whatever asked.
MAX_CONTEXT: Final = 100
# Letters and digits: what the index's unicode61 tokenizer keeps as words.
_WORD: Final = re.compile(r"[^\W_]+")
_TOKEN: Final = re.compile(r"([or])(-?[0-9]{1,18})")


def _fold(word: str) -> str:
    """``word`` as the index compares it: lower case, without diacritics."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def search_words(search_term: str) -> list[str]:
    """The words of a search term, each once, in the order given."""
    return list(dict.fromkeys(_fold(word) for word in _WORD.findall(search_term)))


def fts_query(words: Sequence[str]) -> str | None:
    """An FTS5 query requiring each of ``words`` as a prefix; None for no words.

    Each word is a quoted string (a quote inside doubled, though words
    hold none), so nothing in it is read as FTS5 syntax.
    """
    if not words:
        return None
    return " AND ".join('"' + word.replace('"', '""') + '"*' for word in words)


@dataclass(frozen=True, slots=True)
class ContextRequest:
    """``event_context``: how many events around each result, and profiles."""

    before_limit: int = 5
    after_limit: int = 5
    include_profile: bool = False


@dataclass(frozen=True, slots=True)
class RoomEventsSearch:
    """The ``room_events`` criteria of a search, checked."""

    search_term: str
    keys: tuple[str, ...] = ALL_KEYS
    event_filter: RoomEventFilter | None = None
    order_by: Literal["rank", "recent"] = "rank"
    event_context: ContextRequest | None = None
    include_state: bool = False
    group_by: tuple[Literal["room_id", "sender"], ...] = field(default_factory=tuple)


class SearchStore(Protocol):
    """The reads of the index (:class:`ranvier.storage.search.SearchStorage`)."""

    async def joined_rooms(self, user_id: str) -> list[str]: ...

    async def search_events(
        self,
        query: str,
        *,
        room_ids: Sequence[str],
        keys: Collection[str],
        order_by: Literal["rank", "recent"],
        below: int | None,
        offset: int,
        limit: int,
        count: bool = True,
    ) -> SearchPage: ...


@dataclass(frozen=True, slots=True)
class _Readable:
    visible: int
    checked_before: int
    joined_now: bool


def _invalid_token(token: str) -> MatrixError:
    return MatrixError(
        f"{token[:40]!r} is not a next_batch this server handed out for this order",
        errcode="M_INVALID_PARAM",
        http_status=400,
    )


class Search:
    """Answers ``POST /search`` from ``store`` (the events and rooms) and
    ``index``; ``bundler``, when given, adds the results' bundled
    aggregations.
    """

    def __init__(
        self, store: ContextStore, index: SearchStore, bundler: Bundler | None = None
    ) -> None:
        self._store = store
        self._index = index
        self._bundler = bundler

    async def search(
        self, requester: Requester, criteria: RoomEventsSearch | None, next_batch: str | None
    ) -> dict[str, Any]:
        """The ``search_categories`` answer; no category asked, none answered."""
        if criteria is None:
            return {"search_categories": {}}
        answer = await self._room_events(requester, criteria, next_batch)
        return {"search_categories": {"room_events": answer}}

    async def _room_events(
        self, requester: Requester, criteria: RoomEventsSearch, next_batch: str | None
    ) -> dict[str, Any]:
        user_id = requester.user_id
        event_filter = criteria.event_filter
        below, offset = self._parse_token(next_batch, criteria.order_by)
        limit = min(
            event_filter.limit if event_filter and event_filter.limit else DEFAULT_LIMIT,
            MAX_LIMIT,
        )
        rooms = [
            room_id
            for room_id in await self._index.joined_rooms(user_id)
            if event_filter is None or event_filter.includes_room(room_id)
        ]
        words = search_words(criteria.search_term)
        query = fts_query(words)
        empty: dict[str, Any] = {"results": [], "count": 0, "highlights": []}
        if query is None or not rooms:
            return empty
        accept = None if event_filter is None else event_filter.predicate()
        readable: dict[str, _Readable | None] = {}
        found: list[SearchHit] = []
        memberships: dict[str, str] = {}
        count: int | None = None
        more = False
        while True:
            page = await self._index.search_events(
                query,
                room_ids=rooms,
                keys=criteria.keys,
                order_by=criteria.order_by,
                below=below,
                offset=offset,
                limit=_BATCH,
                count=count is None,
            )
            if count is None:
                count = page.count
            shown = await self._shown(user_id, page.hits, accept, readable, memberships)
            for index, hit in enumerate(page.hits):
                below, offset = hit.event.stream_ordering, offset + 1
                if hit.event.event_id in shown:
                    found.append(hit)
                    if len(found) == limit:
                        more = index + 1 < len(page.hits) or len(page.hits) == _BATCH
                        break
            else:
                if len(page.hits) == _BATCH:
                    continue
            break
        answer: dict[str, Any] = {
            "results": await self._results(requester, found, criteria, readable, memberships),
            "count": count or 0,
            "highlights": _highlights(words, found),
        }
        if more:
            token = f"o{below}" if criteria.order_by == "recent" else f"r{offset}"
            answer["next_batch"] = token
        if criteria.include_state:
            answer["state"] = await self._states(found, readable)
        if criteria.group_by:
            answer["groups"] = _groups(found, criteria.group_by)
        return answer

    @staticmethod
    def _parse_token(
        next_batch: str | None, order_by: Literal["rank", "recent"]
    ) -> tuple[int | None, int]:
        """``(below, offset)``: where the page starts in each order."""
        if next_batch is None:
            return None, 0
        match = _TOKEN.fullmatch(next_batch)
        wanted = "o" if order_by == "recent" else "r"
        if match is None or match[1] != wanted:
            raise _invalid_token(next_batch)
        value = int(match[2])
        if order_by == "recent":
            return value, 0
        if value < 0:
            raise _invalid_token(next_batch)
        return None, value

    async def _readable(
        self, user_id: str, room_id: str, readable: dict[str, _Readable | None]
    ) -> _Readable | None:
        if room_id not in readable:
            try:
                visible, checked_before, joined_now = await readable_upto(
                    self._store, user_id, room_id
                )
            except MatrixError:
                # Left since the rooms were listed.
                readable[room_id] = None
            else:
                readable[room_id] = _Readable(visible, checked_before, joined_now)
        return readable[room_id]

    async def _shown(
        self,
        user_id: str,
        hits: Sequence[SearchHit],
        accept: Any,
        readable: dict[str, _Readable | None],
        memberships: dict[str, str],
    ) -> set[str]:
        """The IDs of the events of ``hits`` the filter lets through and
        the user may see; the user's membership at each goes into
        ``memberships``.
        """
        by_room: dict[str, list[StoredEvent]] = {}
        for hit in hits:
            event = hit.event
            if accept is None or accept(event.type, event.sender):
                by_room.setdefault(event.room_id, []).append(event)
        shown: set[str] = set()
        # Read once for the page, not once a room.
        ignored = await self._store.ignored_users(user_id) if by_room else frozenset()
        for room_id, events in by_room.items():
            room = await self._readable(user_id, room_id, readable)
            if room is None:
                continue
            candidates = [event for event in events if event.stream_ordering <= room.visible]
            visible, at = await visible_within(
                self._store, user_id, candidates, room, ignored=ignored
            )
            shown.update(event.event_id for event in visible if not isinstance(event, ErasedEvent))
            memberships.update(at)
        return shown

    async def _results(
        self,
        requester: Requester,
        found: Sequence[SearchHit],
        criteria: RoomEventsSearch,
        readable: dict[str, _Readable | None],
        memberships: Mapping[str, str],
    ) -> list[dict[str, Any]]:
        events = [hit.event for hit in found]
        formatted = await self._formatted(requester, events, memberships)
        if self._bundler is not None:
            by_room: dict[str, list[dict[str, Any]]] = {}
            for event in formatted:
                by_room.setdefault(event["room_id"], []).append(event)
            for room_id, room_events in by_room.items():
                room = readable[room_id]
                assert room is not None
                await self._bundler.add_bundles(
                    requester.user_id, room_id, room_events, upto=room.visible
                )
        results = []
        for hit, event in zip(found, formatted, strict=True):
            result: dict[str, Any] = {"rank": hit.rank, "result": event}
            if criteria.event_context is not None:
                room = readable[hit.event.room_id]
                assert room is not None
                result["context"] = await self._context(
                    requester, hit.event, room, criteria.event_context, criteria.event_filter
                )
            results.append(result)
        return results

    async def _formatted(
        self, requester: Requester, events: Sequence[StoredEvent], memberships: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """``events`` as ``/messages`` serves them."""
        return await sent_client_events(self._store, requester, events, memberships)

    async def _context(
        self,
        requester: Requester,
        event: StoredEvent,
        room: _Readable,
        wanted: ContextRequest,
        event_filter: RoomEventFilter | None,
    ) -> dict[str, Any]:
        """The events around a result as ``/context`` finds them, and the
        profiles of their senders as the room's state before the result had
        them.
        """
        around = await surrounding_events(
            self._store,
            requester.user_id,
            event,
            room,
            before_limit=min(wanted.before_limit, MAX_CONTEXT),
            after_limit=min(wanted.after_limit, MAX_CONTEXT),
            accept=None if event_filter is None else event_filter.predicate(),
        )
        context: dict[str, Any] = {
            "start": format_pagination_token(around.start),
            "end": format_pagination_token(around.end),
            "events_before": await self._formatted(requester, around.before, around.memberships),
            "events_after": await self._formatted(requester, around.after, around.memberships),
        }
        if wanted.include_profile:
            context["profile_info"] = await self._profiles(
                event, [*reversed(around.before), *around.after]
            )
        return context

    async def _profiles(
        self, event: StoredEvent, around: Sequence[StoredEvent]
    ) -> dict[str, dict[str, str]]:
        members = await senders_memberships(
            self._store, [event, *around], state_event_id=event.event_id
        )
        stored = await self._store.get_events(members.values())
        profiles: dict[str, dict[str, str]] = {}
        for sender, member_id in members.items():
            member = stored.get(member_id)
            content = {} if member is None else event_content(member)
            profile = {
                name: value
                for name in ("displayname", "avatar_url")
                if isinstance(value := content.get(name), str)
            }
            profiles[sender] = profile
        return profiles

    async def _states(
        self, found: Sequence[SearchHit], readable: dict[str, _Readable | None]
    ) -> dict[str, list[dict[str, Any]]]:
        """The current state of each room of the results (as far as the
        user may read it, which for a joined user is now).
        """
        states: dict[str, list[dict[str, Any]]] = {}
        for room_id in dict.fromkeys(hit.event.room_id for hit in found):
            room = readable[room_id]
            assert room is not None
            state = await self._store.state_at(room_id, room.visible)
            stored = await self._store.get_events(state.values())
            states[room_id] = [
                client_event(stored[event_id])
                for _, event_id in sorted(state.items())
                if event_id in stored
            ]
        return states


def _highlights(words: Sequence[str], found: Sequence[SearchHit]) -> list[str]:
    """The words of the results' text that a search word is a prefix of."""
    highlights: dict[str, None] = {}
    for hit in found:
        for word in _WORD.findall(hit.text):
            folded = _fold(word)
            if any(folded.startswith(term) for term in words):
                highlights[word.casefold()] = None
    return sorted(highlights)


def _groups(
    found: Sequence[SearchHit], group_by: Sequence[Literal["room_id", "sender"]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """The results' event IDs grouped by room or sender, each group's
    ``order`` that of its first result.
    """
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for key in group_by:
        grouped: dict[str, dict[str, Any]] = {}
        for hit in found:
            value = hit.event.room_id if key == "room_id" else hit.event.sender
            group = grouped.setdefault(value, {"order": len(grouped) + 1, "results": []})
            group["results"].append(hit.event.event_id)
        groups[key] = grouped
    return groups
