"""Joining a room for a local user: the one path the client API's join
endpoints and :meth:`ranvier.server.HomeServer.join_room` share.

A room this server is in is joined here. Any other room is joined through
a server that is in it (make_join and send_join, with partial state where
the resident offers it): first the servers the caller named (an alias's
servers, a client's ``via``), then the server a room ID names (room
versions before 12 have one), then the server of whoever invited the user,
which is often the only one known for a room of version 12. A room joined
with partial state is handed to ``on_partial_state`` (the un-partial-state
task) before the join returns. A room an admin blocked is not joined (403).
Each join made is then handed to ``on_joined`` (the carrying over of the
user's settings of a room the joined one replaced,
:mod:`ranvier.core.upgrade_settings`).

A restricted room this server is in (join rule ``restricted`` or
``knock_restricted``) lets in a user joined to one of the rooms it allows,
vouched for by a local user able to invite, named in the join
(:mod:`ranvier.core.restricted_joins`); a user in none of them is refused
with 403 ``M_FORBIDDEN`` and nothing is written. When no user here may
invite, the join goes through the servers of those who may, as a join
through another server does, so that one of them vouches and signs.

A guest joins only a room this server is in whose current
``m.room.guest_access`` says ``can_join`` (403 ``M_FORBIDDEN`` otherwise),
checked before the join and again once it is stored
(:mod:`ranvier.core.guests`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.x_matrix import is_server_name

from .client_events import event_content
from .creation import EventCreator, NotInRoomError, member_event_content
from .directory import RoomDirectory
from .guests import EVICTION_REASON, GuestJoins, guest_join_refused
from .interfaces import StateReader
from .joins import RemoteJoiner
from .restricted_joins import JoinVouching, RestrictedJoins

__all__ = ["BlockedRooms", "JoinedRoom", "MembershipLookup", "RoomJoins"]

_MEMBER: Final = "m.room.member"


@dataclass(frozen=True, slots=True)
class JoinedRoom:
    """A join made: the room and the join event's ID."""

    room_id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class _Join:
    """A join made, and whether it brought the user into the room (not a
    join of a user already joined)."""

    room: JoinedRoom
    arrived: bool


class MembershipLookup(Protocol):
    """Finds the membership event a join looks at for a server to try
    (:class:`ranvier.storage.room_members.RoomMemberStorage`).
    """

    async def get_latest_membership_event_id(self, user_id: str, room_id: str) -> str | None: ...


class BlockedRooms(Protocol):
    """Rooms an admin blocked (:class:`ranvier.storage.admin.AdminStorage`)."""

    async def is_room_blocked(self, room_id: str) -> bool: ...


class RoomJoins:
    """Joins local users to rooms, here or through another server."""

    def __init__(
        self,
        *,
        creator: EventCreator,
        remote: RemoteJoiner,
        store: StateReader,
        memberships: MembershipLookup,
        directory: RoomDirectory | None = None,
        on_partial_state: Callable[[str], None] = lambda room_id: None,
        blocked: BlockedRooms | None = None,
        on_joined: Callable[[str, str], Awaitable[None]] | None = None,
        restricted: RestrictedJoins | None = None,
    ) -> None:
        self._creator = creator
        self._remote = remote
        self._store = store
        self._memberships = memberships
        self._directory = directory
        self._on_partial_state = on_partial_state
        self._blocked = blocked
        self._on_joined = on_joined
        self._restricted = restricted
        self._guests = GuestJoins(store)

    async def join(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: Sequence[str] = (),
        *,
        reason: str | None = None,
        guest: bool = False,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> JoinedRoom:
        """Join ``user_id`` to a room named by ID or alias (resolved first);
        a ``reason`` goes into the join's content, here or through another
        server, and so do the other keys of ``content`` (a per-room display
        name, keys of the client's own). ``guest`` says the user is a
        guest, held to the room's guest access. ``origin_server_ts`` is an
        application service's timestamp for a join made here; a join made
        through another server's template is dated now, as Synapse dates
        it.

        The join of a user already joined changes only their member event
        (a per-room profile, say): it is not handed to ``on_joined``, which
        is for users arriving in a room.
        """
        joined = await self._join(
            user_id,
            room_id_or_alias,
            servers,
            content=member_event_content("join", content, reason),
            guest=guest,
            origin_server_ts=origin_server_ts,
        )
        if self._on_joined is not None and joined.arrived:
            await self._on_joined(user_id, joined.room.room_id)
        return joined.room

    async def joined_at_creation(self, user_id: str, room_id: str) -> None:
        """``user_id`` created ``room_id`` here, which joined them to it:
        handed to ``on_joined`` as any other join, so that a room made to
        replace another by hand (its ``predecessor`` given in the creation
        content) gets its creator's settings of the old room too.
        """
        if self._on_joined is not None:
            await self._on_joined(user_id, room_id)

    async def _join(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: Sequence[str],
        *,
        content: Mapping[str, Any],
        guest: bool = False,
        origin_server_ts: int | None = None,
    ) -> _Join:
        candidates = list(servers)
        if type(room_id_or_alias) is str and room_id_or_alias.startswith("#"):
            if self._directory is None:
                raise MatrixError(
                    "this server resolves no room aliases", errcode="M_NOT_FOUND", http_status=404
                )
            resolved = await self._directory.resolve(room_id_or_alias)
            room_id = resolved.room_id
            candidates.extend(resolved.servers)
        elif type(room_id_or_alias) is str and room_id_or_alias.startswith("!"):
            room_id = room_id_or_alias
        else:
            raise MatrixError(
                f"{room_id_or_alias!r} is neither a room ID nor a room alias",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        if self._blocked is not None and await self._blocked.is_room_blocked(room_id):
            raise MatrixError(
                f"room {room_id} is blocked on this server: its users may not join it",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        arrived = self._on_joined is None or not await self._is_joined(user_id, room_id)
        if guest:
            return _Join(
                await self._guest_join(user_id, room_id, content, origin_server_ts), arrived
            )
        vouching = await self._vouching(user_id, room_id)
        if vouching.through:
            # A restricted room no user here may vouch in: one of the
            # servers whose users may signs the join, as a remote join.
            return _Join(
                await self._join_through(
                    user_id, room_id, [*vouching.through, *candidates], content=content
                ),
                arrived,
            )
        try:
            event_id = await self._creator.join(
                user_id,
                room_id,
                authoriser=vouching.authoriser,
                content=content,
                origin_server_ts=origin_server_ts,
            )
            return _Join(JoinedRoom(room_id, event_id), arrived)
        except NotInRoomError:
            pass
        named = room_id.partition(":")[2]
        if named:
            candidates.append(named)
        inviter = await self._inviter_server(user_id, room_id)
        if inviter is not None:
            candidates.append(inviter)
        return _Join(await self._join_through(user_id, room_id, candidates, content=content), True)

    async def _join_through(
        self,
        user_id: str,
        room_id: str,
        candidates: Sequence[str],
        *,
        content: Mapping[str, Any],
    ) -> JoinedRoom:
        """A join through the first of ``candidates`` that takes it."""
        # A client may name servers that cannot exist (a typo, an injected
        # value), and so may a room ID: asking them would only end in a 502
        # after the resolver fails, so they are left out as if not named.
        servers = [server for server in candidates if is_server_name(server)]
        joined = await self._remote.join_remote_room(
            user_id, room_id, list(dict.fromkeys(servers)), content=content
        )
        if joined.partial_state:
            self._on_partial_state(room_id)
        return JoinedRoom(room_id, joined.event.event_id)

    async def _is_joined(self, user_id: str, room_id: str) -> bool:
        """Whether the room's current state here has ``user_id`` joined."""
        key = (_MEMBER, user_id)
        event_id = (await self._store.get_current_state_ids_for_keys(room_id, (key,))).get(key)
        if event_id is None:
            return False
        row = (await self._store.get_events([event_id])).get(event_id)
        return row is not None and event_content(row).get("membership") == "join"

    async def _vouching(self, user_id: str, room_id: str) -> JoinVouching:
        """Who vouches for a join of a restricted room this server is in;
        no one for any other room (see :mod:`ranvier.core.restricted_joins`).
        """
        if self._restricted is None:
            return JoinVouching()
        return await self._restricted.for_local_user(room_id, user_id)

    async def _guest_join(
        self,
        user_id: str,
        room_id: str,
        content: Mapping[str, Any],
        origin_server_ts: int | None,
    ) -> JoinedRoom:
        """A guest's join: of a room here that lets guests in, before and
        after the join is stored; a change stored between the two is undone
        by leaving at once."""
        await self._guests.check(room_id)
        try:
            event_id = await self._creator.join(
                user_id, room_id, content=content, origin_server_ts=origin_server_ts
            )
        except NotInRoomError:
            # Its guest access was read from state kept of a room every
            # local user has left; a guest does not join through others.
            raise guest_join_refused(room_id) from None
        if not await self._guests.allows_guests(room_id):
            await self._creator.leave(user_id, room_id, reason=EVICTION_REASON)
            raise guest_join_refused(room_id)
        return JoinedRoom(room_id, event_id)

    async def _inviter_server(self, user_id: str, room_id: str) -> str | None:
        event_id = await self._memberships.get_latest_membership_event_id(user_id, room_id)
        if event_id is None:
            return None
        event = (await self._store.get_events([event_id])).get(event_id)
        if event is None or event.sender == user_id:
            return None
        return event.sender.partition(":")[2] or None
