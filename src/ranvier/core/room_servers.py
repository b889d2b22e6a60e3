"""Which servers are in a room, and telling them of this server's events.

Federation is a full mesh: the server that creates an event sends it to
every other server with a joined member in the room, and servers pass on
nothing they receive. :class:`RoomServers` answers "who is in the room"
from the room's current state; :class:`RoomEventSender` is the
:class:`~ranvier.core.interfaces.EventNotifier` that hands each new local
event to the outgoing queues for those servers.

A room joined with partial state is the exception: its current state
lacks most memberships until the un-partial-state task has fetched them,
so until then the servers the join named (``servers_in_room`` of the
``send_join`` answer, kept with the room's partial-state row) count as in
the room as well. Without them this server's events in such a room would
reach none of the servers already there.

Storage has no index of a room's members by server, so the answer is
worked out from the room's state, and kept: per room, the members at the
state group last looked at, with a count of joined members per server. The
next look, a group later, reads only the state that changed between the two
groups (:meth:`~ranvier.core.interfaces.StateReader.get_state_deltas`) and
the member events new in it. In a room of 50,000 members an event costs
a read of its change, not of 50,000 rows, which every join, typing
notification and receipt there would otherwise pay. The servers of a group
already looked at are not worked out again: a state group never changes, so
the answer keyed on it holds for as long as it is remembered (a merge of
branches can change who is joined without a member event of its own, so
nothing less than the whole group is a safe key).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu
from ranvier.storage.records import PartialStateRoom

from .interfaces import StateReader

__all__ = ["PduSink", "RoomEventSender", "RoomServers", "RoomServersReader", "ServersByGroup"]

_MEMBER: Final = "m.room.member"
# Member events read per storage request.
_BATCH: Final = 500


class _Content(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_content = msgspec.json.Decoder(_Content).decode


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _count(joined: dict[str, int], server: str, change: int) -> None:
    """Add ``change`` to the joined members of ``server``, dropping it at none."""
    left = joined.get(server, 0) + change
    if left > 0:
        joined[server] = left
    else:
        joined.pop(server, None)


class RoomServersReader(StateReader, Protocol):
    """The reads :class:`RoomServers` makes: the room's state, and what a
    partial-state join learned of the servers in the room.
    """

    async def get_current_state_group(self, room_id: str) -> int | None:
        """The state group the room's current state is; None for a room with
        no current state here.
        """
        ...

    async def get_partial_state_rooms(self) -> Mapping[str, PartialStateRoom]:
        """Every room that still has partial state, by room ID."""
        ...


class _Members:
    """A room's members at one state group: each member's state key to its
    event ID and whether it is a join, and how many joined members each
    server has. Never changed once made: the next group's is a copy with the
    group's changes, so a call still using this one is not disturbed.
    """

    __slots__ = ("group", "joined", "members")

    def __init__(
        self,
        group: int | None,
        members: dict[str, tuple[str, bool]],
        joined: dict[str, int],
    ) -> None:
        self.group = group
        self.members = members
        self.joined = joined

    def servers(self) -> frozenset[str]:
        return frozenset(self.joined)


class ServersByGroup:
    """The servers with a joined member in a room's state at a state group,
    worked out from the members at the group last looked at (see the
    module's docstring); it needs only a :class:`StateReader`.

    ``rooms_remembered`` bounds how many rooms' member memberships are kept
    between calls; the least recently asked room is forgotten first.
    """

    def __init__(self, store: StateReader, *, rooms_remembered: int = 1_000) -> None:
        if rooms_remembered < 1:
            raise ValueError("at least one room's members must be remembered")
        self._store = store
        self._capacity = rooms_remembered
        self._rooms: OrderedDict[str, _Members] = OrderedDict()
        # Per (room, state group): the servers joined in that group.
        self._groups: OrderedDict[tuple[str, int], frozenset[str]] = OrderedDict()

    async def joined_servers_at(self, room_id: str, state_group: int | None) -> frozenset[str]:
        """Every server with a user whose membership in the state of
        ``state_group``, a group of ``room_id``, is ``join``; with None, in
        the room's current state, read whole (a room with no current state
        group has no state here to speak of).
        """
        key = None if state_group is None else (room_id, state_group)
        servers = None if key is None else self._groups.get(key)
        if servers is None:
            servers = (await self._members_at(room_id, state_group)).servers()
        if key is not None:
            self._groups[key] = servers
            self._groups.move_to_end(key)
            while len(self._groups) > self._capacity:
                self._groups.popitem(last=False)
        return servers

    async def _members_at(self, room_id: str, group: int | None) -> _Members:
        """The room's members at ``group`` (None: its current state, which
        has no group only in a room with no state here).

        Most calls come after an event or two: from the members at the group
        last read, only the state that changed since is read, so a room of
        50,000 members costs its changes and not a read of its whole state.
        """
        held = self._rooms.get(room_id)
        if held is not None and held.group is not None and held.group == group:
            self._rooms.move_to_end(room_id)
            return held
        changes: Mapping[StateKey, str | None] | None = None
        members: dict[str, tuple[str, bool]] = {}
        joined: dict[str, int] = {}
        if held is not None and held.group is not None and group is not None:
            try:
                _, deltas = await self._store.get_state_deltas([held.group, group])
            except MatrixError:
                pass  # the group held was purged with its room: read afresh
            else:
                changes = deltas.get(group, {})
                members = dict(held.members)
                joined = dict(held.joined)
        if changes is None:
            if group is None:
                changes = await self._store.get_current_state_ids(room_id)
            else:
                changes = await self._store.get_state_ids(group)
        unread: dict[str, str] = {}
        for (event_type, state_key), event_id in changes.items():
            if event_type != _MEMBER:
                continue
            before = members.pop(state_key, None)
            if before is not None and before[1]:
                _count(joined, _server_of(state_key), -1)
            if event_id is not None:
                unread[event_id] = state_key
        pending = list(unread)
        for start in range(0, len(pending), _BATCH):
            rows = await self._store.get_events(pending[start : start + _BATCH])
            for event_id in pending[start : start + _BATCH]:
                row = rows.get(event_id)
                is_join = row is not None and row.rejected_reason is None and _is_join(row.json)
                state_key = unread[event_id]
                members[state_key] = (event_id, is_join)
                if is_join:
                    _count(joined, _server_of(state_key), 1)
        found = _Members(group, members, joined)
        # Replaced whole, never changed in place: see _Members.
        self._rooms[room_id] = found
        self._rooms.move_to_end(room_id)
        while len(self._rooms) > self._capacity:
            self._rooms.popitem(last=False)
        return found

    def forget(self, room_id: str) -> None:
        """Drop what is remembered of a room's members."""
        self._rooms.pop(room_id, None)
        for key in [key for key in self._groups if key[0] == room_id]:
            del self._groups[key]


class RoomServers:
    """The servers with a joined member in a room, as its current state
    says, and while the room's state is partial, the servers its join named.

    ``rooms_remembered`` is that of its :attr:`by_group`, which other
    readers of the servers at a state group share.
    """

    def __init__(self, store: RoomServersReader, *, rooms_remembered: int = 1_000) -> None:
        self._store = store
        self.by_group = ServersByGroup(store, rooms_remembered=rooms_remembered)

    async def joined_servers(
        self, room_id: str, *, state_group: int | None = None, full_state: bool = False
    ) -> frozenset[str]:
        """Every server with a user whose membership in the current state is
        ``join``; for a room with partial state, with the servers its join named.

        ``state_group``, when given, must be the state group of the room's
        current state as it is now, and ``full_state`` true only if the room's
        state is known not to be partial now (the caller holds the room's
        lock since writing and reading them).
        """
        if state_group is None:
            state_group = await self._store.get_current_state_group(room_id)
        servers = await self.by_group.joined_servers_at(room_id, state_group)
        if not full_state and await self._store.is_partial_state_room(room_id):
            partial = (await self._store.get_partial_state_rooms()).get(room_id)
            if partial is not None:
                servers |= partial.servers
        return servers

    async def partial_state_point(self, room_id: str) -> frozenset[str] | None:
        """While the room's state is partial, its forward extremities: once
        the state is complete, the state after them says which servers were
        in the room at this point. None when the state is not partial.
        """
        if not await self._store.is_partial_state_room(room_id):
            return None
        return frozenset(await self._store.get_forward_extremities(room_id))

    async def servers_after(self, event_ids: Iterable[str]) -> frozenset[str]:
        """The servers with a joined member in the state after any of
        ``event_ids`` (a point :meth:`partial_state_point` gave).
        """
        servers: set[str] = set()
        for event_id in sorted(event_ids):
            groups = await self._store.get_event_state_groups(event_id)
            row = (await self._store.get_events([event_id])).get(event_id)
            if groups is None or row is None:
                continue
            servers |= await self.by_group.joined_servers_at(row.room_id, groups.after)
        return frozenset(servers)

    def forget(self, room_id: str) -> None:
        """Drop what is remembered of a room's members."""
        self.by_group.forget(room_id)


def _is_join(raw: bytes) -> bool:
    try:
        return _decode_content(raw).content.get("membership") == "join"
    except msgspec.DecodeError:
        return False


class PduSink(Protocol):
    """Takes a stored event for delivery to other servers without waiting
    (:class:`ranvier.federation.sender.FederationSender` is one).
    """

    def send_pdu(
        self,
        pdu: bytes | Mapping[str, Any],
        *,
        event_id: str,
        room_id: str,
        stream_ordering: int,
        destinations: Iterable[str],
    ) -> None: ...


class RoomEventSender:
    """Hands each event this server writes to ``sink`` for the other
    servers in its room: the :class:`~ranvier.core.interfaces.EventNotifier`
    of :class:`~ranvier.core.creation.EventCreator` and of the membership
    routes.

    The destinations are the servers joined in the room's current state,
    which already includes the event. A membership that takes a user of
    another server out of the room (a kick, a ban, a leave through us) also
    goes to that user's server, which the state after it no longer counts
    as joined. An invite does not: the invitee's server signed it already;
    nor does a join or leave another server made through this one go back
    to that server.
    """

    def __init__(self, server_name: str, rooms: RoomServers, sink: PduSink) -> None:
        self.server_name = server_name
        self._rooms = rooms
        self._sink = sink

    async def on_new_event(self, event: Pdu, stream_ordering: int) -> None:
        joined = await self._rooms.joined_servers(event.room_id)
        self._send(event, stream_ordering, joined)

    async def on_new_events(
        self,
        events: Sequence[tuple[Pdu, int]],
        *,
        state_group: int | None = None,
        full_state: bool = False,
    ) -> None:
        """Hand on events written together, in order.

        Messages of one room written together leave its state as it was, so
        its servers are looked up once for all of them. ``state_group`` and
        ``full_state`` say what the writer knows of the room's state after
        them (see :meth:`RoomServers.joined_servers`).
        """
        rooms = {event.room_id for event, _ in events}
        if len(rooms) != 1 or any(event.state_key is not None for event, _ in events):
            for event, stream_ordering in events:
                await self.on_new_event(event, stream_ordering)
            return
        joined = await self._rooms.joined_servers(
            rooms.pop(), state_group=state_group, full_state=full_state
        )
        for event, stream_ordering in events:
            self._send(event, stream_ordering, joined)

    def _send(self, event: Pdu, stream_ordering: int, joined: Iterable[str]) -> None:
        destinations = set(joined)
        leaving = event.type == _MEMBER and event.membership in ("leave", "ban")
        if leaving and event.state_key is not None:
            destinations.add(_server_of(event.state_key))
        # A join or leave another server made through us came from there.
        destinations.discard(_server_of(event.sender))
        destinations.discard(self.server_name)
        if not destinations:
            return
        self._sink.send_pdu(
            event.raw,
            event_id=event.event_id,
            room_id=event.room_id,
            stream_ordering=stream_ordering,
            destinations=sorted(destinations),
        )
