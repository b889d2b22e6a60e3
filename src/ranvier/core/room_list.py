"""The public room list: rooms published in this server's directory.

A room is listed when its directory visibility is ``public``: set by
``PUT /directory/list/room/{roomId}`` (by a server admin, or a member of
the room with the power to change its aliases) or by
``/createRoom`` with ``visibility: public`` (:meth:`RoomList.on_room_created`).
``GET /publicRooms`` shows each listed room this server is in, largest
first, with what the spec's ``PublishedRoomsChunk`` holds, read from its
current state. Pages are cut by offset: ``next_batch`` and ``prev_batch``
are positions in that order, as tokens of their own.

Application services keep lists of their own, one per third-party
network they bridge (:meth:`RoomList.set_network_visibility`), apart from
the server's list: a plain ``/publicRooms`` shows the server's list
alone, ``third_party_instance_id`` (an ``instance_id`` of
``/thirdparty/protocols``) one network's list alone, and
``include_all_networks`` the server's and every registered service's
together, each room once. A request that gives both is read as asking
for everything, as Synapse reads it: the spec only says the instance is
meant for requests without ``include_all_networks``, and another server
passes on what its client gave. An instance ID that names no network of
a registered service has no rooms.

Another server's list is asked of that server (the client API's ``server``
parameter, federation's ``/publicRooms``) through :class:`RemoteRoomLists`,
and passed on as it answers, its paging tokens included.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.x_matrix import split_server_name
from ranvier.storage.client_data import PublicRoomState

from .appservices import AppServices

__all__ = [
    "CHUNK_STRINGS",
    "MAX_PAGE",
    "RemoteRoomLists",
    "RoomList",
    "RoomListStore",
    "Visibility",
    "check_visibility",
    "chunk_flags",
    "chunk_strings",
]

#: The most rooms one page holds, whatever the client asks.
MAX_PAGE: Final = 500
#: The longest network ID a service may publish rooms under, in characters.
MAX_NETWORK_ID: Final = 255

Visibility = Literal["public", "private"]
_TOKEN: Final = re.compile(r"o([0-9]{1,9})")


class RoomListStore(Protocol):
    """The room list in storage (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def set_room_listed(self, room_id: str, listed: bool, now_ms: int) -> None: ...

    async def is_room_listed(self, room_id: str) -> bool: ...

    async def room_exists(self, room_id: str) -> bool: ...

    async def set_room_listed_in_network(
        self, appservice_id: str, network_id: str, room_id: str, listed: bool, now_ms: int
    ) -> None: ...

    async def listed_rooms(
        self, *, main: bool = True, networks: Sequence[tuple[str, str | None]] = ()
    ) -> list[PublicRoomState]: ...


class RemoteRoomLists(Protocol):
    """Asks another server for a page of its public room list
    (:class:`ranvier.federation.room_list.FederationRoomListClient`); a
    server that gives no usable answer is a 502.
    """

    async def query_public_rooms(
        self,
        server_name: str,
        *,
        limit: int | None,
        since: str | None,
        search: str | None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
    ) -> dict[str, Any]: ...


class DirectoryPermissions(Protocol):
    """Who may change a room's place in the directory
    (:class:`ranvier.core.directory.RoomDirectory`).
    """

    async def may_change_directory(self, user_id: str, room_id: str) -> bool: ...


def _not_found(room_id: str) -> MatrixError:
    return MatrixError(f"room {room_id} is not known here", errcode="M_NOT_FOUND", http_status=404)


#: The string fields of a ``PublishedRoomsChunk`` that come from current
#: state: ``(event type, content key, field)``; the space hierarchy's
#: summaries are the same chunk with more.
CHUNK_STRINGS: Final = (
    ("m.room.name", "name", "name"),
    ("m.room.topic", "topic", "topic"),
    ("m.room.canonical_alias", "alias", "canonical_alias"),
    ("m.room.avatar", "url", "avatar_url"),
    ("m.room.create", "type", "room_type"),
)


def chunk_flags(state: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """A chunk's ``world_readable`` and ``guest_can_join``, from the state
    contents by type."""
    return {
        "world_readable": state.get("m.room.history_visibility", {}).get("history_visibility")
        == "world_readable",
        "guest_can_join": state.get("m.room.guest_access", {}).get("guest_access") == "can_join",
    }


def chunk_strings(
    state: Mapping[str, Mapping[str, Any]],
    fields: Iterable[tuple[str, str, str]] = CHUNK_STRINGS,
) -> dict[str, str]:
    """The ``fields`` whose state gives a non-empty string (the others are
    left out, as the spec's optional fields are)."""
    found: dict[str, str] = {}
    for event_type, key, name in fields:
        value = state.get(event_type, {}).get(key)
        if isinstance(value, str) and value:
            found[name] = value
    return found


def _chunk_entry(room: PublicRoomState) -> dict[str, Any]:
    state = room.state
    return {
        "room_id": room.room_id,
        "num_joined_members": room.joined_members,
        **chunk_flags(state),
        "join_rule": state.get("m.room.join_rules", {}).get("join_rule", "invite"),
        **chunk_strings(state),
    }


def _matches(entry: dict[str, Any], term: str) -> bool:
    folded = term.casefold()
    return any(
        folded in str(entry.get(field, "")).casefold()
        for field in ("name", "topic", "canonical_alias", "room_id")
    )


class RoomList:
    """Publishes rooms and pages through the published ones."""

    def __init__(
        self,
        *,
        store: RoomListStore,
        permissions: DirectoryPermissions,
        wall_clock_ms: Callable[[], int] | None = None,
        server_name: str | None = None,
        remote: RemoteRoomLists | None = None,
        app_services: AppServices | None = None,
    ) -> None:
        self._store = store
        self._permissions = permissions
        self._server_name = server_name
        self._remote = remote
        self._app_services = app_services or AppServices()
        self._clock = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)

    async def get_visibility(self, room_id: str) -> Visibility:
        """``public`` or ``private``; ``M_NOT_FOUND`` for an unknown room."""
        if not await self._store.room_exists(room_id):
            raise _not_found(room_id)
        return "public" if await self._store.is_room_listed(room_id) else "private"

    async def set_visibility(
        self, user_id: str, room_id: str, visibility: object, *, is_admin: bool = False
    ) -> None:
        """Publish or unpublish a room: a server admin may, and a member
        joined to it with the power to send ``m.room.canonical_alias``.
        """
        check_visibility(visibility)
        if not await self._store.room_exists(room_id):
            raise _not_found(room_id)
        if not is_admin and not await self._permissions.may_change_directory(user_id, room_id):
            raise MatrixError(
                f"{user_id} may not change whether room {room_id} is published: that takes"
                " being joined with the power to send m.room.canonical_alias",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        await self._store.set_room_listed(room_id, visibility == "public", self._clock())

    async def set_network_visibility(
        self, service_id: str, network_id: str, room_id: str, visibility: object
    ) -> None:
        """Publish or withdraw a room in the list of application service
        ``service_id``'s network ``network_id``.

        The service's token is all the right it needs, as the spec has it:
        the list is the service's own, and the room need only be known
        here. The network ID is the service's to choose; the spec means one
        of the networks it reports, but which those are only the service
        can say, and an ID it never reports leaves the room in a list no
        client is shown.
        """
        check_visibility(visibility)
        if len(network_id) > MAX_NETWORK_ID:
            raise MatrixError(
                f"a network ID is at most {MAX_NETWORK_ID} characters",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        if not await self._store.room_exists(room_id):
            raise _not_found(room_id)
        await self._store.set_room_listed_in_network(
            service_id, network_id, room_id, visibility == "public", self._clock()
        )

    async def on_room_created(self, room_id: str, visibility: str) -> None:
        """What ``/createRoom`` calls once the room exists: ``public`` lists it."""
        if visibility == "public":
            await self._store.set_room_listed(room_id, True, self._clock())

    async def public_rooms(
        self,
        *,
        limit: int | None = None,
        since: str | None = None,
        search: str | None = None,
        server: str | None = None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
    ) -> dict[str, Any]:
        """A page of ``GET /publicRooms`` (or its ``POST`` with a filter),
        of this server's list or of the list of the ``server`` named, and
        of the networks' lists as the module's doc says.
        """
        if limit is not None and limit < 0:
            raise MatrixError(
                "limit may not be negative", errcode="M_INVALID_PARAM", http_status=400
            )
        if server is not None and server != self._server_name:
            return await self._remote_page(
                server,
                limit=limit,
                since=since,
                search=search,
                include_all_networks=include_all_networks,
                third_party_instance_id=third_party_instance_id,
            )
        start = 0
        if since is not None:
            match = _TOKEN.fullmatch(since)
            if match is None:
                raise MatrixError(
                    f"{since[:40]!r} is not a room list token",
                    errcode="M_INVALID_PARAM",
                    http_status=400,
                )
            start = int(match[1])
        if include_all_networks:
            rooms = await self._store.listed_rooms(
                networks=[(service.id, None) for service in self._app_services]
            )
        elif third_party_instance_id is not None:
            networks = self._app_services.networks_of_instance(third_party_instance_id)
            rooms = (
                await self._store.listed_rooms(main=False, networks=networks) if networks else []
            )
        else:
            rooms = await self._store.listed_rooms()
        entries = [_chunk_entry(room) for room in rooms]
        if search:
            entries = [entry for entry in entries if _matches(entry, search)]
        entries.sort(key=lambda entry: (-entry["num_joined_members"], entry["room_id"]))
        size = MAX_PAGE if limit is None else min(limit, MAX_PAGE)
        page = entries[start : start + size]
        answer: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(entries)}
        if start + size < len(entries):
            answer["next_batch"] = f"o{start + size}"
        if start > 0:
            answer["prev_batch"] = f"o{max(start - size, 0)}"
        return answer

    async def _remote_page(
        self,
        server: str,
        *,
        limit: int | None,
        since: str | None,
        search: str | None,
        include_all_networks: bool,
        third_party_instance_id: str | None,
    ) -> dict[str, Any]:
        try:
            split_server_name(server)
        except ValueError as exc:
            raise MatrixError(
                f"server is not a server name: {exc}", errcode="M_INVALID_PARAM", http_status=400
            ) from None
        if self._remote is None or self._server_name is None:
            raise MatrixError(
                f"this server serves only its own room list, not {server!r}'s",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        return await self._remote.query_public_rooms(
            server,
            limit=limit,
            since=since,
            search=search,
            include_all_networks=include_all_networks,
            third_party_instance_id=third_party_instance_id,
        )


def check_visibility(visibility: object) -> None:
    """Refuse a room directory visibility other than the spec's two."""
    if visibility not in ("public", "private"):
        raise MatrixError(
            f"visibility must be public or private, not {visibility!r}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
