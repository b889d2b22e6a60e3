"""Filters: what a client asks ``/sync`` and ``/messages`` to leave out.

A filter is the spec's ``Filter`` object, checked here into frozen typed
values; a malformed one is refused with ``M_BAD_JSON`` naming the field at
fault. Unknown fields are ignored, as the spec lets servers do, so a client
written against a newer spec version is not refused. Users store filters
and get an ID back (``POST /user/{userId}/filter``); ``/sync`` takes that
ID or the filter inline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final, Literal, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.property_paths import property_path
from ranvier.protocol.untrusted_json import decode_untrusted_json

__all__ = [
    "EventFilter",
    "Filter",
    "FilterStore",
    "RoomEventFilter",
    "RoomFilter",
    "UserFilters",
    "parse_filter",
    "parse_room_event_filter",
]


# Filter IDs are the small integers storage hands out.
_FILTER_ID: Final = re.compile(r"[0-9]{1,15}")


@lru_cache(maxsize=1024)
def _pattern(glob: str) -> re.Pattern[str]:
    # The spec's wildcard is '*' alone: any run of characters.
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)


def _any_matches(globs: tuple[str, ...], value: str) -> bool:
    return any(_pattern(glob).fullmatch(value) for glob in globs)


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which events of a kind to send, and how many."""

    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive integer, not {self.limit}")
        _check_ids("senders", (*(self.senders or ()), *self.not_senders), "@")

    def matches(self, event_type: str, sender: str) -> bool:
        """Whether an event of ``event_type`` from ``sender`` passes."""
        if self.not_senders and sender in self.not_senders:
            return False
        if self.senders is not None and sender not in self.senders:
            return False
        if self.not_types and _any_matches(self.not_types, event_type):
            return False
        return self.types is None or _any_matches(self.types, event_type)

    @property
    def passes_everything(self) -> bool:
        return (
            self.types is None
            and self.senders is None
            and not self.not_types
            and not self.not_senders
        )

    def predicate(self) -> Callable[[str, str], bool] | None:
        """:meth:`matches`, or None when it lets every event through."""
        return None if self.passes_everything else self.matches


class RoomEventFilter(EventFilter, frozen=True, kw_only=True):
    """An :class:`EventFilter` for a room's events, with the room-specific options."""

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    #: ``/sync`` splits a room's notification counts by thread.
    unread_thread_notifications: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids("rooms", (*(self.rooms or ()), *self.not_rooms), "!")

    def includes_room(self, room_id: str) -> bool:
        return _includes(self.rooms, self.not_rooms, room_id)


def _check_ids(field: str, ids: tuple[str, ...], sigil: str) -> None:
    """A filter naming rooms or users by something that is not their ID is
    a client's mistake, better told than silently matching nothing."""
    for identifier in ids:
        if not identifier.startswith(sigil) or len(identifier) < 2:
            raise ValueError(f"{field} holds {identifier!r}, which is not an ID starting {sigil!r}")


def _includes(rooms: tuple[str, ...] | None, not_rooms: tuple[str, ...], room_id: str) -> bool:
    """The spec's rule for ``rooms`` and ``not_rooms``, alike at both levels of
    a filter: ``not_rooms`` wins, and no ``rooms`` list means every room."""
    if room_id in not_rooms:
        return False
    return rooms is None or room_id in rooms


class RoomFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which rooms to sync, and the filters of their parts."""

    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: RoomEventFilter = RoomEventFilter()
    state: RoomEventFilter = RoomEventFilter()
    ephemeral: RoomEventFilter = RoomEventFilter()
    account_data: RoomEventFilter = RoomEventFilter()

    def __post_init__(self) -> None:
        _check_ids("rooms", (*(self.rooms or ()), *self.not_rooms), "!")

    def includes_room(self, room_id: str) -> bool:
        return _includes(self.rooms, self.not_rooms, room_id)


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's top-level ``Filter``."""

    event_fields: tuple[str, ...] | None = None
    event_format: Literal["client", "federation"] = "client"
    presence: EventFilter = EventFilter()
    account_data: EventFilter = EventFilter()
    room: RoomFilter = RoomFilter()

    def project(self, event: dict[str, Any]) -> dict[str, Any]:
        """A client event cut down to ``event_fields``; the whole event when
        the filter names none.
        """
        if self.event_fields is None:
            return event
        projected: dict[str, Any] = {}
        for path in self.event_fields:
            _copy_path(event, projected, property_path(path))
        return projected

    @property
    def lazy_load_members(self) -> bool:
        """Whether a sync with this filter lazy-loads room members (MSC3902
        lets such a sync see rooms whose state is still partial).
        """
        return self.room.state.lazy_load_members


def _copy_path(source: dict[str, Any], target: dict[str, Any], path: Sequence[str]) -> None:
    head, rest = path[0], path[1:]
    if head not in source:
        return
    if not rest:
        target[head] = source[head]
        return
    inner = source[head]
    if not isinstance(inner, dict):
        return
    nested = target.setdefault(head, {})
    if isinstance(nested, dict):
        _copy_path(inner, nested, rest)


def _bad_filter(exc: msgspec.ValidationError | ValueError) -> MatrixError:
    return MatrixError(f"invalid filter: {exc}", errcode="M_BAD_JSON", http_status=400)


def parse_filter(content: Any) -> Filter:
    """The filter a client sent, checked; ``M_BAD_JSON`` if malformed."""
    if not isinstance(content, dict):
        raise MatrixError("a filter must be a JSON object", errcode="M_BAD_JSON", http_status=400)
    try:
        return msgspec.convert(content, Filter)
    except (msgspec.ValidationError, ValueError) as exc:
        raise _bad_filter(exc) from None


def parse_room_event_filter(content: Any) -> RoomEventFilter:
    """A ``RoomEventFilter`` (``/messages``' ``filter``), checked."""
    if not isinstance(content, dict):
        raise MatrixError("a filter must be a JSON object", errcode="M_BAD_JSON", http_status=400)
    try:
        return msgspec.convert(content, RoomEventFilter)
    except (msgspec.ValidationError, ValueError) as exc:
        raise _bad_filter(exc) from None


class FilterStore(Protocol):
    """Where users' filters are kept: as the JSON the user sent, checked."""

    async def store_filter(self, user_id: str, filter_json: bytes) -> int: ...

    async def get_filter(self, user_id: str, filter_id: int) -> bytes | None: ...


class UserFilters:
    """Users' stored filters, and the filter a ``/sync`` names."""

    def __init__(self, store: FilterStore) -> None:
        self._store = store

    async def create(self, user_id: str, content: Any) -> str:
        """Check and store a filter; return its ID."""
        parse_filter(content)
        filter_id = await self._store.store_filter(user_id, encode_canonical_json(content))
        return str(filter_id)

    async def get(self, user_id: str, filter_id: str) -> dict[str, Any]:
        """A filter the user stored, as they sent it; ``M_NOT_FOUND`` if none."""
        stored = None
        if _FILTER_ID.fullmatch(filter_id):
            stored = await self._store.get_filter(user_id, int(filter_id))
        if stored is None:
            raise MatrixError(
                f"{user_id} has no filter {filter_id!r}", errcode="M_NOT_FOUND", http_status=404
            )
        content: dict[str, Any] = msgspec.json.decode(stored)
        return content

    async def resolve(self, user_id: str, param: str | None) -> Filter:
        """The filter of a ``/sync`` request's ``filter`` parameter: a stored
        filter's ID, or a filter inline as JSON.
        """
        if param is None:
            return Filter()
        if param.lstrip().startswith("{"):
            try:
                content = decode_untrusted_json(param)
            except msgspec.DecodeError as exc:
                raise MatrixError(
                    f"the filter parameter is not valid JSON: {exc}",
                    errcode="M_INVALID_PARAM",
                    http_status=400,
                ) from None
            return parse_filter(content)
        stored = None
        if _FILTER_ID.fullmatch(param):
            stored = await self._store.get_filter(user_id, int(param))
        if stored is None:
            raise MatrixError(
                f"{user_id} has no filter {param!r}", errcode="M_INVALID_PARAM", http_status=400
            )
        return parse_filter(_without_foreign_ids(msgspec.json.decode(stored)))


#: The ID lists of a filter, at any level, and the sigil their IDs start with.
_ID_LISTS: Final = {"rooms": "!", "not_rooms": "!", "senders": "@", "not_senders": "@"}


def _without_foreign_ids(content: Any) -> Any:
    """A stored filter without the entries of its room and user lists that
    are not such IDs.

    Filters stored before such entries were refused may hold them; as they
    never matched a room or a user, leaving them out changes nothing the
    filter lets through, where refusing the filter would break every sync
    that names it.
    """
    if isinstance(content, dict):
        return {
            key: [
                item
                for item in value
                if isinstance(item, str) and item.startswith(_ID_LISTS[key]) and len(item) > 1
            ]
            if key in _ID_LISTS and isinstance(value, list)
            else _without_foreign_ids(value)
            for key, value in content.items()
        }
    return content
