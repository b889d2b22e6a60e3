"""Space hierarchies: ``GET /rooms/{roomId}/hierarchy`` and its federation
counterpart.

A space lists its children with ``m.space.child`` state events; a link
counts while its ``content.via`` is a non-empty list of server names.
The client walk is depth first, as the spec describes it: a room, then
each of its children in the spec's order (a valid ``order`` string first,
then the link's ``origin_server_ts``, then the child's room ID), each child
followed by its own subtree before the next. A room reached twice (spaces
may form loops) is shown once, where it was first reached.

What a user may see (the spec's list for this endpoint): rooms they are
joined or invited to, world-readable ones, public and knockable ones, and
restricted ones whose allow list names a room they are joined to. A room
they may not see is left out with its subtree; the link to it stays in its
parent's ``children_state``. Another server may see a room by the same
rules, with "joined" meaning one of its users is, both for the room itself
and for the rooms a restricted room allows. A room this server joined with
partial state may not yet hold the other servers' members: a server its
resident named among those in the room counts as joined meanwhile, or a
space's restricted rooms would stay hidden from the very server the space
was joined through.

A child room this server is not in is asked of the servers in its link's
``via`` (:class:`RemoteHierarchies`); their answer also summarises the
child's own children, which are then used as they are unless they are
spaces whose children the walk still needs.

Pages are cut by position in the walk: the token holds how many rooms came
before, with the root, ``max_depth`` and ``suggested_only`` it was made
for, so any process serving the API can continue it (nothing is kept
between requests). Each page walks again from the root, bounded by
:data:`MAX_WALK` rooms.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.room_versions import KNOWN_ROOM_VERSIONS
from ranvier.storage.hierarchy_reads import HierarchyRoomState, SpaceChildEvent

from .room_list import CHUNK_STRINGS, chunk_flags, chunk_strings

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_DEPTH",
    "MAX_LIMIT",
    "MAX_WALK",
    "HierarchyStore",
    "RemoteHierarchies",
    "RemoteSpace",
    "RoomHierarchy",
    "allow_list",
    "local_summary",
    "open_rule",
    "ordered_children",
]

#: Rooms per page when the client names no limit, and the most it may ask.
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 100
#: How deep the walk goes when the client does not say, and at most.
MAX_DEPTH: Final = 20
#: The most rooms one request walks through, skipped ones included.
MAX_WALK: Final = 2000

_SPACE: Final = "m.space"


class HierarchyStore(Protocol):
    """Reads of local rooms (:class:`ranvier.storage.hierarchy_reads.HierarchyReads`)."""

    async def room_states(
        self, room_ids: Collection[str], *, user_id: str | None = None
    ) -> dict[str, HierarchyRoomState]: ...

    async def rooms_joined_by_user(self, user_id: str, room_ids: Collection[str]) -> set[str]: ...

    async def rooms_joined_by_server(self, server: str, room_ids: Collection[str]) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class RemoteSpace:
    """Another server's answer about a room: its summary (with
    ``children_state``), summaries of the children it may show, and the
    children it says nobody here may see."""

    room: dict[str, Any]
    children: dict[str, dict[str, Any]] = field(default_factory=dict)
    inaccessible: frozenset[str] = frozenset()


class RemoteHierarchies(Protocol):
    """Asks other servers about rooms this one is not in
    (:class:`ranvier.federation.hierarchy.FederationHierarchyClient`)."""

    async def get_space(
        self, room_id: str, via: Sequence[str], *, suggested_only: bool
    ) -> RemoteSpace | None: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _order(content: Mapping[str, Any]) -> str | None:
    order = content.get("order")
    if not isinstance(order, str) or not 0 < len(order) <= 50:
        return None
    if any(not 0x20 <= ord(char) <= 0x7E for char in order):
        return None
    return order


def _is_valid_link(child: SpaceChildEvent) -> bool:
    via = child.content.get("via")
    return (
        child.state_key.startswith("!")
        and isinstance(via, list)
        and bool(via)
        and all(isinstance(server, str) and server for server in via)
    )


def ordered_children(
    children: Iterable[SpaceChildEvent], *, suggested_only: bool
) -> list[SpaceChildEvent]:
    """The valid links among ``children`` (only suggested ones if asked),
    in the spec's order."""
    kept = [
        child
        for child in children
        if _is_valid_link(child) and (not suggested_only or child.content.get("suggested") is True)
    ]

    def key(child: SpaceChildEvent) -> tuple[int, str, int, str]:
        order = _order(child.content)
        return (
            0 if order is not None else 1,
            order or "",
            child.origin_server_ts,
            child.state_key,
        )

    return sorted(kept, key=key)


def _stripped(child: SpaceChildEvent) -> dict[str, Any]:
    return {
        "type": "m.space.child",
        "state_key": child.state_key,
        "content": child.content,
        "sender": child.sender,
        "origin_server_ts": child.origin_server_ts,
    }


def _children_of_summary(summary: Mapping[str, Any]) -> list[SpaceChildEvent]:
    """The links of another server's ``children_state``, badly formed ones dropped."""
    found = []
    raw = summary.get("children_state")
    for event in raw if isinstance(raw, list) else ():
        if not isinstance(event, dict) or event.get("type") != "m.space.child":
            continue
        state_key, content = event.get("state_key"), event.get("content")
        sender, ts = event.get("sender"), event.get("origin_server_ts")
        if (
            isinstance(state_key, str)
            and isinstance(content, dict)
            and isinstance(sender, str)
            and type(ts) is int
        ):
            found.append(SpaceChildEvent(state_key, content, sender, ts))
    return found


def _allowed_room_ids(join_rules: Mapping[str, Any]) -> list[str]:
    allow = join_rules.get("allow")
    return [
        str(entry["room_id"])
        for entry in (allow if isinstance(allow, list) else ())
        if isinstance(entry, dict)
        and entry.get("type") == "m.room_membership"
        and isinstance(entry.get("room_id"), str)
    ]


#: A summary's string fields: a published room's, and its encryption.
_SUMMARY_STRINGS: Final = (*CHUNK_STRINGS, ("m.room.encryption", "algorithm", "encryption"))


def local_summary(room: HierarchyRoomState) -> dict[str, Any]:
    """A room's summary from its current state, as a space's child and a
    room summary (:mod:`ranvier.core.room_summary`) both show it."""
    state = room.state
    join_rules = state.get("m.room.join_rules", {})
    join_rule = join_rules.get("join_rule")
    summary: dict[str, Any] = {
        "room_id": room.room_id,
        "num_joined_members": room.joined_members,
        **chunk_flags(state),
        "join_rule": join_rule if isinstance(join_rule, str) else "invite",
        "room_version": room.room_version,
        **chunk_strings(state, _SUMMARY_STRINGS),
    }
    if summary["join_rule"] in ("restricted", "knock_restricted"):
        summary["allowed_room_ids"] = _allowed_room_ids(join_rules)
    return summary


def open_rule(summary: Mapping[str, Any], room_version: str | None) -> bool:
    """Whether anyone may see the room: world-readable, public or knockable
    (knocking where the room version has it; another server's answer is
    taken at its word when it names no version)."""
    if summary.get("world_readable") is True:
        return True
    rule = summary.get("join_rule")
    if rule == "public":
        return True
    version = KNOWN_ROOM_VERSIONS.get(room_version) if room_version is not None else None
    if rule == "knock":
        return room_version is None or (version is not None and version.knock_join_rule)
    if rule == "knock_restricted":
        return room_version is None or (version is not None and version.knock_restricted_join_rule)
    return False


def allow_list(summary: Mapping[str, Any]) -> list[str]:
    if summary.get("join_rule") not in ("restricted", "knock_restricted"):
        return []
    allowed = summary.get("allowed_room_ids")
    return list(allowed) if isinstance(allowed, list) else []


@dataclass(frozen=True, slots=True)
class _Loaded:
    summary: dict[str, Any]
    children: list[SpaceChildEvent]
    #: Summaries another server gave of these children.
    hints: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Token:
    room_id: str
    position: int
    max_depth: int
    suggested_only: bool


def _encode_token(token: _Token) -> str:
    raw = msgspec.json.encode(
        [token.room_id, token.position, token.max_depth, token.suggested_only]
    )
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_token(text: str) -> _Token:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        room_id, position, max_depth, suggested_only = msgspec.json.decode(
            raw, type=tuple[str, int, int, bool]
        )
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise _invalid(f"{text[:40]!r} is not a hierarchy token") from None
    if position < 0 or max_depth < 0:
        raise _invalid(f"{text[:40]!r} is not a hierarchy token")
    return _Token(room_id, position, max_depth, suggested_only)


class RoomHierarchy:
    """Walks spaces for local users and answers other servers about ours."""

    def __init__(
        self, *, server_name: str, store: HierarchyStore, remote: RemoteHierarchies
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._remote = remote

    # Access

    async def _user_may_see(
        self, user_id: str, summary: Mapping[str, Any], room: HierarchyRoomState | None
    ) -> bool:
        if room is not None and room.membership in ("join", "invite"):
            return True
        version = room.room_version if room is not None else summary.get("room_version")
        if open_rule(summary, version if isinstance(version, str) else None):
            return True
        allowed = allow_list(summary)
        return bool(allowed) and bool(await self._store.rooms_joined_by_user(user_id, allowed))

    async def _server_may_see(self, origin: str, room: HierarchyRoomState) -> bool:
        summary = local_summary(room)
        if open_rule(summary, room.room_version) or origin in room.joined_servers:
            return True
        if origin in room.partial_state_servers:
            return True
        allowed = allow_list(summary)
        return bool(allowed) and bool(await self._store.rooms_joined_by_server(origin, allowed))

    def _is_here(self, room: HierarchyRoomState | None) -> bool:
        return room is not None and self._server_name in room.joined_servers

    # The client walk

    async def get_hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        from_token: str | None = None,
        limit: int | None = None,
        max_depth: int | None = None,
        suggested_only: bool = False,
    ) -> dict[str, Any]:
        """One page of the hierarchy under ``room_id`` as ``user_id`` may see it."""
        if limit is not None and limit < 1:
            raise _invalid("limit must be greater than zero")
        if max_depth is not None and max_depth < 0:
            raise _invalid("max_depth may not be negative")
        page_size = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        depth_limit = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        position = 0
        if from_token is not None:
            token = _decode_token(from_token)
            if token.room_id != room_id:
                raise _invalid("this token belongs to the hierarchy of another room")
            if (token.max_depth, token.suggested_only) != (depth_limit, suggested_only):
                raise _invalid("suggested_only and max_depth may not change between pages")
            position = token.position
        root = (await self._store.room_states([room_id], user_id=user_id)).get(room_id)
        if root is None or not await self._user_may_see(user_id, local_summary(root), root):
            raise MatrixError(
                f"{user_id} may not see room {room_id}", errcode="M_FORBIDDEN", http_status=403
            )
        rooms: list[dict[str, Any]] = []
        counted = 0
        more = False
        seen: set[str] = set()
        stack: list[tuple[str, Sequence[str], int, dict[str, Any] | None]] = [
            (room_id, (), 0, None)
        ]
        while stack and len(seen) < MAX_WALK:
            current, via, depth, hint = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current == room_id:
                loaded: _Loaded | None = self._loaded_locally(root, suggested_only)
            else:
                loaded = await self._load(
                    user_id, current, via, hint, seen, suggested_only, fetch=depth < depth_limit
                )
            if loaded is None:
                continue
            if counted == position + page_size:
                more = True
                break
            if counted >= position:
                rooms.append(loaded.summary)
            counted += 1
            if depth < depth_limit:
                stack.extend(
                    (
                        child.state_key,
                        child.content["via"],
                        depth + 1,
                        loaded.hints.get(child.state_key),
                    )
                    for child in reversed(loaded.children)
                    if child.state_key not in seen
                )
        answer: dict[str, Any] = {"rooms": rooms}
        if more:
            answer["next_batch"] = _encode_token(
                _Token(room_id, position + page_size, depth_limit, suggested_only)
            )
        return answer

    def _loaded_locally(self, room: HierarchyRoomState, suggested_only: bool) -> _Loaded:
        children = ordered_children(room.children, suggested_only=suggested_only)
        summary = local_summary(room)
        summary["children_state"] = [_stripped(child) for child in children]
        return _Loaded(summary, children, {})

    async def _load(
        self,
        user_id: str,
        room_id: str,
        via: Sequence[str],
        hint: dict[str, Any] | None,
        seen: set[str],
        suggested_only: bool,
        *,
        fetch: bool,
    ) -> _Loaded | None:
        """The room as the user may see it, or None; ``fetch`` says the
        walk will go below it, so a space's children are needed."""
        local = (await self._store.room_states([room_id], user_id=user_id)).get(room_id)
        if local is not None and self._is_here(local):
            if not await self._user_may_see(user_id, local_summary(local), local):
                return None
            return self._loaded_locally(local, suggested_only)
        hints: dict[str, dict[str, Any]] = {}
        if hint is not None and (hint.get("room_type") != _SPACE or not fetch):
            summary = hint
        else:
            remote = await self._remote.get_space(room_id, via, suggested_only=suggested_only)
            if remote is None:
                if local is None or not await self._user_may_see(
                    user_id, local_summary(local), local
                ):
                    return None
                # Nobody answered: what this server last knew of it.
                return self._loaded_locally(local, suggested_only)
            summary, hints = remote.room, remote.children
            seen.update(remote.inaccessible)
        if not await self._user_may_see(user_id, summary, local):
            return None
        children = ordered_children(_children_of_summary(summary), suggested_only=suggested_only)
        shown = dict(summary)
        shown["children_state"] = [_stripped(child) for child in children]
        return _Loaded(shown, children, hints)

    # Federation

    async def federation_hierarchy(
        self, origin: str, room_id: str, *, suggested_only: bool = False
    ) -> dict[str, Any]:
        """What ``GET /_matrix/federation/v1/hierarchy/{roomId}`` answers
        ``origin``: the room and those of its children this server is in,
        summarised if ``origin`` may see them, else named as inaccessible.
        """
        room = (await self._store.room_states([room_id])).get(room_id)
        if room is None or not self._is_here(room) or not await self._server_may_see(origin, room):
            raise MatrixError(
                f"room {room_id} is not known here or not visible to {origin}",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        loaded = self._loaded_locally(room, suggested_only)
        states = await self._store.room_states([child.state_key for child in loaded.children])
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in loaded.children:
            state = states.get(child.state_key)
            if state is None or not self._is_here(state):
                continue
            if await self._server_may_see(origin, state):
                children.append(self._loaded_locally(state, suggested_only).summary)
            else:
                inaccessible.append(child.state_key)
        return {
            "room": loaded.summary,
            "children": children,
            "inaccessible_children": inaccessible,
        }
