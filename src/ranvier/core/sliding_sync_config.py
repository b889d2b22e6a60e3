"""What a sliding sync request asks for (MSC4186), read and checked.

The body is the one Element X sends to the unstable endpoint: lists with
``ranges``, ``timeline_limit``, ``required_state`` as ``[type, state_key]``
pairs (``*`` for any, ``$LAZY`` for the members of the timeline's senders,
``$ME`` for the user), ``filters``; ``room_subscriptions``; ``extensions``.
The later forms the MSC moved to are read too where they cost nothing:
``range`` beside ``ranges``, ``is_invited`` beside ``is_invite``, and
``required_state`` as ``{include, exclude, lazy_members}``.

A room that several lists and subscriptions choose gets their configs
combined: the greatest ``timeline_limit`` and every ``required_state``
entry of them all. The combined config is kept per room on the connection
as :meth:`RoomConfig.key`, so a room sent under another config is sent
again in full.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from ranvier.errors import MatrixError

__all__ = [
    "ANY",
    "LAZY",
    "MAX_LISTS",
    "MAX_TIMELINE_LIMIT",
    "ME",
    "ExtensionConfig",
    "ListConfig",
    "ListFilters",
    "RoomConfig",
    "SlidingSyncRequest",
    "parse_request",
]

ANY: Final = "*"
LAZY: Final = "$LAZY"
ME: Final = "$ME"
_MEMBER: Final = "m.room.member"
#: The MSC's bound on lists in one request.
MAX_LISTS: Final = 100
#: The most timeline events a room is sent with, whatever the client asks.
MAX_TIMELINE_LIMIT: Final = 100
#: The most ranges one list may have, and required_state entries a config.
_MAX_RANGES: Final = 100
_MAX_STATE_ENTRIES: Final = 1000


_StoredConfig = tuple[int, list[tuple[str, str]], list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """How much of a room to send: timeline events and state entries."""

    timeline_limit: int = 0
    #: ``(type, state_key)`` pairs to send, with ``*``, ``$ME`` and ``$LAZY``.
    include: frozenset[tuple[str, str]] = frozenset()
    #: Pairs not to send even where ``include`` matches.
    exclude: frozenset[tuple[str, str]] = frozenset()

    def combined(self, other: RoomConfig) -> RoomConfig:
        return RoomConfig(
            max(self.timeline_limit, other.timeline_limit),
            self.include | other.include,
            self.exclude & other.exclude,
        )

    @property
    def lazy_members(self) -> bool:
        return (_MEMBER, LAZY) in self.include

    @property
    def all_members(self) -> bool:
        """Whether every membership is asked for: what a room with partial
        state cannot answer yet."""
        return any(
            kind in (_MEMBER, ANY) and key == ANY and (kind, key) not in self.exclude
            for kind, key in self.include
        )

    def exact_keys(self, user_id: str) -> frozenset[tuple[str, str]] | None:
        """The state keys to read, or None when a wildcard needs the whole
        state."""
        keys = set()
        for kind, key in self.include:
            if key == LAZY:
                continue
            if kind == ANY or key == ANY:
                return None
            keys.add((kind, user_id if key == ME else key))
        return frozenset(keys)

    def matches(self, kind: str, key: str, user_id: str) -> bool:
        def hit(pairs: Iterable[tuple[str, str]]) -> bool:
            return any(
                (want_kind in (ANY, kind))
                and (want_key in (ANY, key) or (want_key == ME and key == user_id))
                for want_kind, want_key in pairs
            )

        return hit(self.include) and not hit(self.exclude)

    def key(self) -> str:
        """A stable text of the config, stored per room on the connection."""
        return msgspec.json.encode(
            [self.timeline_limit, sorted(self.include), sorted(self.exclude)]
        ).decode()

    @classmethod
    def from_key(cls, key: str) -> RoomConfig | None:
        """The config of a :meth:`key`; None for a text that is not one."""
        try:
            limit, include, exclude = msgspec.json.decode(key, type=_StoredConfig)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return cls(limit, frozenset(include), frozenset(exclude))

    def covers(self, other: RoomConfig) -> bool:
        """Whether ``other`` asks for nothing this one did not: a room sent
        under this config needs nothing sent again under ``other`` (the
        MSC's "expansion" is the opposite). Wildcards are compared as
        written, so a narrower pattern under a wildcard counts as new.
        """
        return (
            other.timeline_limit <= self.timeline_limit
            and other.include <= self.include
            and self.exclude <= other.exclude
        )


@dataclass(frozen=True, slots=True)
class ListFilters:
    """A list's filters; None means the filter is not applied."""

    is_dm: bool | None = None
    spaces: tuple[str, ...] | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    #: Create event types to keep; None inside means rooms without a type.
    room_types: frozenset[str | None] | None = None
    not_room_types: frozenset[str | None] = frozenset()
    #: Room tags (``m.tag``) of which a room needs one, and may have none.
    tags: frozenset[str] | None = None
    not_tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ListConfig:
    name: str
    ranges: tuple[tuple[int, int], ...] | None
    room: RoomConfig
    filters: ListFilters


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """An extension's settings: which lists' and subscriptions' rooms it
    covers (None: all), and, for ``to_device``, where it goes on from."""

    lists: frozenset[str] | None = None
    rooms: frozenset[str] | None = None
    since: str | None = None


@dataclass(frozen=True, slots=True)
class SlidingSyncRequest:
    conn_id: str = ""
    lists: tuple[ListConfig, ...] = ()
    subscriptions: dict[str, RoomConfig] | None = None
    #: The extensions enabled, by name.
    extensions: dict[str, ExtensionConfig] | None = None
    #: ``pos``, ``timeout`` and ``set_presence`` when the body carries them.
    pos: str | None = None
    timeout_ms: int | None = None
    set_presence: str | None = None


# The body as sent.


class _StateElement(msgspec.Struct, forbid_unknown_fields=False):
    type: str = ANY
    state_key: str = ANY


class _StateObject(msgspec.Struct):
    include: list[_StateElement] = []
    exclude: list[_StateElement] = []
    lazy_members: bool = False


class _Filters(msgspec.Struct):
    is_dm: bool | None = None
    spaces: list[str] | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    is_invited: bool | None = None
    room_types: list[str | None] | None = None
    not_room_types: list[str | None] = []
    tags: list[str] | None = None
    not_tags: list[str] = []


class _Subscription(msgspec.Struct):
    timeline_limit: int = 0
    required_state: list[tuple[str, str]] | _StateObject = []


class _List(_Subscription):
    ranges: list[tuple[int, int]] | None = None
    range: tuple[int, int] | None = None
    filters: _Filters | None = None


class _Extension(msgspec.Struct):
    enabled: bool | None = None
    lists: list[str] | None = None
    rooms: list[str] | None = None
    since: str | None = None


class _Body(msgspec.Struct):
    conn_id: str = ""
    lists: dict[str, _List] = {}
    room_subscriptions: dict[str, _Subscription] = {}
    extensions: dict[str, _Extension] = {}
    pos: str | None = None
    timeout: int | None = None
    set_presence: str | None = None


_EXTENSIONS: Final = frozenset(
    {"to_device", "e2ee", "account_data", "receipts", "typing", "presence"}
)


def _bad(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_JSON", http_status=400)


def _room_config(body: _Subscription, where: str) -> RoomConfig:
    if body.timeline_limit < 0:
        raise _bad(f"{where}: timeline_limit must not be negative")
    state = body.required_state
    if isinstance(state, _StateObject):
        include = {(element.type, element.state_key) for element in state.include}
        if state.lazy_members:
            include.add((_MEMBER, LAZY))
        exclude = frozenset((element.type, element.state_key) for element in state.exclude)
    else:
        include, exclude = set(state), frozenset()
    if len(include) + len(exclude) > _MAX_STATE_ENTRIES:
        raise _bad(f"{where}: at most {_MAX_STATE_ENTRIES} required_state entries")
    return RoomConfig(min(body.timeline_limit, MAX_TIMELINE_LIMIT), frozenset(include), exclude)


def _ranges(body: _List, name: str) -> tuple[tuple[int, int], ...] | None:
    ranges = body.ranges if body.ranges is not None else None
    if body.range is not None:
        ranges = [*(ranges or []), body.range]
    if ranges is None:
        return None
    if len(ranges) > _MAX_RANGES:
        raise _bad(f"list {name}: at most {_MAX_RANGES} ranges")
    for start, end in ranges:
        if start < 0 or end < start:
            raise _bad(f"list {name}: a range is [start, end] with 0 <= start <= end")
    return tuple(ranges)


def _filters(body: _Filters | None) -> ListFilters:
    if body is None:
        return ListFilters()
    return ListFilters(
        is_dm=body.is_dm,
        spaces=None if body.spaces is None else tuple(body.spaces),
        is_encrypted=body.is_encrypted,
        is_invite=body.is_invite if body.is_invite is not None else body.is_invited,
        room_types=None if body.room_types is None else frozenset(body.room_types),
        not_room_types=frozenset(body.not_room_types),
        tags=None if body.tags is None else frozenset(body.tags),
        not_tags=frozenset(body.not_tags),
    )


def parse_request(content: Any) -> SlidingSyncRequest:
    """The request of a body; 400 ``M_NOT_JSON`` or ``M_BAD_JSON`` when it
    is not one."""
    if not isinstance(content, dict):
        raise MatrixError(
            "the request body must be a JSON object", errcode="M_NOT_JSON", http_status=400
        )
    try:
        body = msgspec.convert(content, _Body)
    except msgspec.ValidationError as exc:
        raise _bad(f"invalid sliding sync request: {exc}") from None
    if len(body.lists) > MAX_LISTS:
        raise _bad(f"at most {MAX_LISTS} lists")
    lists = tuple(
        ListConfig(
            name,
            _ranges(entry, name),
            _room_config(entry, f"list {name}"),
            _filters(entry.filters),
        )
        for name, entry in sorted(body.lists.items())
    )
    subscriptions = {
        room_id: _room_config(entry, f"subscription {room_id}")
        for room_id, entry in body.room_subscriptions.items()
    }
    extensions = {
        name: ExtensionConfig(
            None if entry.lists is None else frozenset(entry.lists),
            None if entry.rooms is None else frozenset(entry.rooms),
            entry.since,
        )
        for name, entry in body.extensions.items()
        if name in _EXTENSIONS and entry.enabled
    }
    if body.timeout is not None and body.timeout < 0:
        raise _bad("timeout must not be negative")
    return SlidingSyncRequest(
        body.conn_id, lists, subscriptions, extensions, body.pos, body.timeout, body.set_presence
    )
