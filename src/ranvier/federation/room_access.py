"""Who may ask this server about a room: server ACLs and history visibility.

Every federation request about a room's events names the room, and the
server asking (the X-Matrix origin) must be allowed to see what it asks for:

* **Server ACLs** (``m.room.server_acl`` in the room's current state) are
  applied first, to every endpoint the spec lists as protected: a denied
  server gets 403 ``M_FORBIDDEN`` whatever else holds.
* **Being in the room.** A server is in the room when one of its users'
  membership is ``join`` in the room's current state.
* **Seeing an event.** A server may see an event when the room's history
  visibility before the event is ``world_readable``; when it is ``shared``
  (the default) and the server is in the room now; or when one of its users
  was joined at the event (invited, too, where visibility is ``invited``).
  Membership at an event is read from the state after it, so a server sees
  its own user's join; the visibility is read from the state before it, so
  an event that restricts the history is itself judged by the old rule.

The query endpoints build on these: the state at an event goes to a server
that is in the room now or can see the event, and pulled history goes only
to a server in the room (or a world-readable one), with each event it may
not see replaced by its redacted form, which keeps the room's graph intact
without its content.

**Partial state.** While this server has only the partial state of a room
(joined with ``omit_members``, MSC3706), it cannot tell which servers are
in the room nor give the state at an event; the requests that need to
(``/state``, ``/state_ids``, ``/event_auth``) get 403 with errcode
:data:`PARTIAL_STATE_ERRCODE`, as Synapse answers them (the code of the
draft MSC3895), so the asking server tries another. History can still be
pulled, and must be: a server that missed our events asks us for the gap.
So when :class:`RoomAccess` is given the partial-state rooms, a server the
join named as in the room counts as in it, as well as one with a joined
member in the partial state; the history visibility is applied as ever.

The ACL and history visibility are read at their keys alone. Whether a
server has a member in a state reads that whole state (storage has no read
of one server's members), once per request and state. Erased users'
events are served redacted to a server not joined at them
(:meth:`RoomAccess.joined_at_event`, used by :mod:`ranvier.federation.queries`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final, Protocol

import msgspec

from ranvier.core.interfaces import StateReader
from ranvier.errors import MatrixError
from ranvier.protocol.server_acl import SERVER_ACL_KEY, server_allowed_by_acl
from ranvier.storage.records import PartialStateRoom, StateKey, StoredEvent

__all__ = [
    "HISTORY_VISIBILITY_KEY",
    "PARTIAL_STATE_ERRCODE",
    "SERVER_ACL_KEY",
    "PartialRoomsReader",
    "RoomAccess",
    "joined_servers",
    "server_allowed_by_acl",
]

HISTORY_VISIBILITY_KEY: Final[StateKey] = ("m.room.history_visibility", "")
#: The errcode of a refusal because this server has only partial state of
#: the room: MSC3895's, with the unstable prefix Synapse sends.
PARTIAL_STATE_ERRCODE: Final = "ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE"
_MEMBER: Final = "m.room.member"
_DEFAULT_VISIBILITY: Final = "shared"
_VISIBILITIES: Final = frozenset({"world_readable", "shared", "invited", "joined"})
# Membership events of one server read at a time while looking for a join.
_MEMBER_BATCH: Final = 200


class _ContentOnly(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_content = msgspec.json.Decoder(_ContentOnly).decode


def _content(event: StoredEvent) -> dict[str, Any]:
    try:
        return _decode_content(event.json).content
    except msgspec.DecodeError:
        return {}


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _member_keys(state: Mapping[StateKey, str], server_name: str) -> list[str]:
    return [
        event_id
        for (event_type, state_key), event_id in state.items()
        if event_type == _MEMBER and _server_of(state_key) == server_name
    ]


def joined_servers(state: Mapping[StateKey, str], memberships: Mapping[str, str]) -> set[str]:
    """The servers with a joined user in ``state``, given each member event's
    membership (by event ID) in ``memberships``.
    """
    return {
        _server_of(state_key)
        for (event_type, state_key), event_id in state.items()
        if event_type == _MEMBER and memberships.get(event_id) == "join"
    }


class PartialRoomsReader(Protocol):
    """The read of what partial-state joins learned of the servers in their rooms."""

    async def get_partial_state_rooms(self) -> Mapping[str, PartialStateRoom]:
        """Every room that still has partial state, by room ID."""
        ...


class RoomAccess:
    """Answers the access questions above for one request.

    It keeps the state maps and event contents it reads, so the many
    questions one request asks (one per event of a backfill) read each
    state group and event once.

    With ``partial_rooms``, a server that the join of a room with partial
    state here named as in the room counts as in it (see the module's
    notes); without, only the current state tells.
    """

    def __init__(
        self, store: StateReader, *, partial_rooms: PartialRoomsReader | None = None
    ) -> None:
        self._store = store
        self._partial_rooms = partial_rooms
        self._named_by_join: dict[str, frozenset[str]] = {}
        self._groups: dict[int, Mapping[StateKey, str]] = {}
        self._current: dict[str, Mapping[StateKey, str]] = {}
        self._contents: dict[str, dict[str, Any]] = {}

    # Reads, kept.

    async def current_state(self, room_id: str) -> Mapping[StateKey, str]:
        state = self._current.get(room_id)
        if state is None:
            state = self._current[room_id] = await self._store.get_current_state_ids(room_id)
        return state

    async def current_state_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        """The room's current state at ``keys``: from the whole state if it
        was read already, else read at those keys alone (a big room's whole
        state is many times the few keys a question needs).
        """
        state = self._current.get(room_id)
        if state is None:
            state = await self._store.get_current_state_ids_for_keys(room_id, keys)
        return state

    async def _current_at(self, room_id: str, key: StateKey) -> Mapping[StateKey, str]:
        return await self.current_state_for_keys(room_id, [key])

    async def state_group(self, group: int) -> Mapping[StateKey, str]:
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = await self._store.get_state_ids(group)
        return state

    async def contents(self, event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The ``content`` of each stored event of ``event_ids``."""
        wanted = list(dict.fromkeys(event_ids))
        unread = [event_id for event_id in wanted if event_id not in self._contents]
        if unread:
            stored = await self._store.get_events(unread)
            for event_id in unread:
                row = stored.get(event_id)
                self._contents[event_id] = {} if row is None else _content(row)
        return {event_id: self._contents[event_id] for event_id in wanted}

    # Questions.

    async def check_server_acl(self, room_id: str, server_name: str) -> None:
        """Raise 403 ``M_FORBIDDEN`` if the room's server ACL denies ``server_name``."""
        acl_id = (await self._current_at(room_id, SERVER_ACL_KEY)).get(SERVER_ACL_KEY)
        if acl_id is None:
            return
        content = (await self.contents([acl_id]))[acl_id]
        if not server_allowed_by_acl(server_name, content):
            raise MatrixError(
                f"the server ACL of {room_id} denies {server_name}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    async def check_full_state(self, room_id: str) -> None:
        """Raise 403 :data:`PARTIAL_STATE_ERRCODE` while the room's state here
        is partial.
        """
        if await self._store.is_partial_state_room(room_id):
            raise MatrixError(
                f"the state of {room_id} is not yet fully known here; ask another server",
                errcode=PARTIAL_STATE_ERRCODE,
                http_status=403,
            )

    async def has_member(
        self,
        state: Mapping[StateKey, str],
        server_name: str,
        memberships: Collection[str] = ("join",),
    ) -> bool:
        """Whether a user of ``server_name`` has one of ``memberships`` in ``state``."""
        event_ids = _member_keys(state, server_name)
        for start in range(0, len(event_ids), _MEMBER_BATCH):
            contents = await self.contents(event_ids[start : start + _MEMBER_BATCH])
            if any(content.get("membership") in memberships for content in contents.values()):
                return True
        return False

    async def server_in_room(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined to the room now, or,
        while the room's state here is partial, its join named the server.
        """
        if await self.has_member(await self.current_state(room_id), server_name):
            return True
        return server_name in await self._servers_named_by_join(room_id)

    async def _servers_named_by_join(self, room_id: str) -> frozenset[str]:
        """The servers a partial-state join of the room named; none once the
        room's state is full. Read only for a server the state does not show
        joined, which is rare enough for a read of every partial room.
        """
        if self._partial_rooms is None:
            return frozenset()
        servers = self._named_by_join.get(room_id)
        if servers is None:
            room = (await self._partial_rooms.get_partial_state_rooms()).get(room_id)
            servers = frozenset() if room is None else room.servers
            self._named_by_join[room_id] = servers
        return servers

    async def visibility(self, state: Mapping[StateKey, str]) -> str:
        """The history visibility in ``state``; ``shared`` when unset or unknown."""
        event_id = state.get(HISTORY_VISIBILITY_KEY)
        if event_id is None:
            return _DEFAULT_VISIBILITY
        value = (await self.contents([event_id]))[event_id].get("history_visibility")
        return value if isinstance(value, str) and value in _VISIBILITIES else _DEFAULT_VISIBILITY

    async def world_readable(self, room_id: str) -> bool:
        """Whether the room's history is world-readable now."""
        state = await self._current_at(room_id, HISTORY_VISIBILITY_KEY)
        return await self.visibility(state) == "world_readable"

    async def can_see_event(self, event: StoredEvent, server_name: str) -> bool:
        """Whether ``server_name`` may see ``event`` (see the module's rules).

        An event with no state here (an outlier) is judged by the room's
        current state alone: visible to a server in the room now.
        """
        groups = await self._store.get_event_state_groups(event.event_id)
        if groups is None:
            return await self.server_in_room(event.room_id, server_name)
        before = self._groups.get(groups.before)
        if before is None:
            before = await self._store.get_state_ids_for_keys(
                groups.before, [HISTORY_VISIBILITY_KEY]
            )
        visibility = await self.visibility(before)
        if visibility == "world_readable":
            return True
        if visibility == "shared" and await self.server_in_room(event.room_id, server_name):
            return True
        memberships = ("join", "invite") if visibility == "invited" else ("join",)
        return await self.has_member(await self.state_group(groups.after), server_name, memberships)

    async def joined_at_event(self, event: StoredEvent, server_name: str) -> bool:
        """Whether a user of ``server_name`` was joined to the room at
        ``event``, by the state after it (so a server's own user's join
        counts). An event with no state here (an outlier) tells nothing:
        False.
        """
        groups = await self._store.get_event_state_groups(event.event_id)
        if groups is None:
            return False
        return await self.has_member(await self.state_group(groups.after), server_name)
