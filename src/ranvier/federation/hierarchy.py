"""Space hierarchies over federation: ``GET /_matrix/federation/v1/hierarchy/{roomId}``.

Both sides: :func:`add_hierarchy_route` answers other servers about rooms
this server is in (:meth:`ranvier.core.hierarchy.RoomHierarchy.federation_hierarchy`),
and :class:`FederationHierarchyClient` asks the servers of a link's ``via``
about a room this one is not in.

The client keeps answers a few minutes, as the spec suggests, in a cache
bounded by entry count (the oldest go first). A summary is kept only with
the fields the spec gives it, each of the right type; an answer whose room
is not the one asked for, or that lacks a required field, counts as no
answer and the next server is asked.
"""

from __future__ import annotations

import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec
import trio

from ranvier.core.hierarchy import RemoteSpace, RoomHierarchy
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.web import Request, Router, flag_param

__all__ = [
    "CACHE_ENTRIES",
    "CACHE_SECONDS",
    "HIERARCHY_PATH",
    "FederationHierarchyClient",
    "add_hierarchy_route",
]

HIERARCHY_PATH: Final = "/_matrix/federation/v1/hierarchy/{room_id}"
#: How long an answer is used again, and how many are kept.
CACHE_SECONDS: Final = 300.0
CACHE_ENTRIES: Final = 1000
#: How many servers of a ``via`` list are asked before giving up.
_SERVERS_TRIED: Final = 3
#: The most an answer may weigh.
_MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024

_STRINGS: Final = (
    "name",
    "topic",
    "canonical_alias",
    "avatar_url",
    "join_rule",
    "room_type",
    "encryption",
    "room_version",
)


def add_hierarchy_route(router: Router, hierarchy: RoomHierarchy) -> None:
    """Serve ``/hierarchy/{roomId}`` to signed requests."""

    async def get_hierarchy(request: Request) -> Mapping[str, Any]:
        # The route is authenticated, so the app has set the origin.
        assert request.origin is not None
        return await hierarchy.federation_hierarchy(
            request.origin,
            request.path_params["room_id"],
            suggested_only=bool(flag_param(request, "suggested_only")),
        )

    router.add("GET", HIERARCHY_PATH, get_hierarchy)


def _summary(raw: object, *, with_children: bool) -> dict[str, Any] | None:
    """The spec's fields of a room summary from another server, or None
    when a required one is missing or of the wrong type."""
    if not isinstance(raw, dict):
        return None
    room_id, members = raw.get("room_id"), raw.get("num_joined_members")
    world_readable, guests = raw.get("world_readable"), raw.get("guest_can_join")
    if (
        not isinstance(room_id, str)
        or not room_id.startswith("!")
        or type(members) is not int
        or not isinstance(world_readable, bool)
        or not isinstance(guests, bool)
    ):
        return None
    summary: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": members,
        "world_readable": world_readable,
        "guest_can_join": guests,
        # The spec's default for a summary that names no join rule.
        "join_rule": "public",
    }
    for name in _STRINGS:
        value = raw.get(name)
        if isinstance(value, str):
            summary[name] = value
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list) and all(isinstance(room, str) for room in allowed):
        summary["allowed_room_ids"] = list(allowed)
    children = raw.get("children_state")
    if with_children or isinstance(children, list):
        summary["children_state"] = children if isinstance(children, list) else []
    return summary


def _space(room_id: str, answer: object) -> RemoteSpace | None:
    if not isinstance(answer, dict):
        return None
    room = _summary(answer.get("room"), with_children=True)
    if room is None or room["room_id"] != room_id:
        return None
    children: dict[str, dict[str, Any]] = {}
    raw_children = answer.get("children")
    for raw in raw_children if isinstance(raw_children, list) else ():
        child = _summary(raw, with_children=False)
        if child is not None:
            children[child["room_id"]] = child
    raw_inaccessible = answer.get("inaccessible_children")
    inaccessible = frozenset(
        room
        for room in (raw_inaccessible if isinstance(raw_inaccessible, list) else ())
        if isinstance(room, str)
    )
    return RemoteSpace(room, children, inaccessible)


class FederationHierarchyClient:
    """Asks other servers about rooms of a space, and remembers their answers briefly."""

    def __init__(
        self,
        client: FederationHttpClient,
        *,
        server_name: str,
        clock: Callable[[], float] = trio.current_time,
        cache_seconds: float = CACHE_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._client = client
        self._server_name = server_name
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache_entries = cache_entries
        self._cache: OrderedDict[tuple[str, bool], tuple[float, RemoteSpace]] = OrderedDict()

    async def get_space(
        self, room_id: str, via: Sequence[str], *, suggested_only: bool
    ) -> RemoteSpace | None:
        """The first usable answer of the ``via`` servers (this one left
        out), or None when none gave one."""
        key = (room_id, suggested_only)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._cache[key]
        servers = [server for server in dict.fromkeys(via) if server != self._server_name]
        path = HIERARCHY_PATH.format(room_id=urllib.parse.quote(room_id, safe=""))
        query = {"suggested_only": "true" if suggested_only else "false"}
        for server in servers[:_SERVERS_TRIED]:
            try:
                response = await self._client.request(
                    "GET", server, path, query=query, max_response_bytes=_MAX_ANSWER_BYTES
                )
                space = _space(room_id, decode_untrusted_json(response.body))
            except (FederationError, msgspec.DecodeError):
                continue
            if space is None:
                continue
            self._cache[key] = (self._clock() + self._cache_seconds, space)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
            return space
        return None
