"""Room reads for clients: state, events and members, as the spec lets each
user see them.

Who may read what (the client-server API's rules):

* A user **joined** to the room reads its current state and members.
* A user who **left or was banned** reads the room as it was when their
  membership ended: the state just after their leave or ban event, and
  the members in that state. Nothing later.
* Anyone may read a room whose current ``m.room.history_visibility`` is
  ``world_readable``, as a joined user would.
* A user who left and then forgot the room (``/forget``) reads it as one
  never in it, until they are in it again.
* Anyone else (invited, knocking, never a member, or asking about a room
  unknown here) gets 403 ``M_FORBIDDEN``; an unknown room and a room the
  user may not read look the same, so that a room's existence is not given
  away.
* One event (``/event``) is shown where the room's history visibility at
  that event lets the user see it: ``world_readable`` to anyone,
  ``shared`` to members joined now or at the event, ``invited`` to those
  invited or joined at the event, ``joined`` to those joined at it. A
  user's own membership events are always theirs to see. An event the user
  may not see is answered as unknown (404 ``M_NOT_FOUND``), as the spec
  asks.

A room joined with partial state lacks most of its members here until the
un-partial-state task has fetched them, so reads that would show them (the
member lists, the whole current state, the membership of a user of another
server) wait for that (:class:`FullStateWaiter`), as Synapse's do. The
memberships of this server's users are in the partial state, so the checks
above, and reads of other state, do not wait.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.auth import CREATE_KEY, POWER_LEVELS_KEY
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import get_named_level, get_user_power_level
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage.records import StateKey, StoredEvent

from .builder import Clock, wall_clock_ms
from .client_events import client_event, event_content
from .client_txns import TxnOwner
from .erasure import ErasedForms, erasure_applied
from .interfaces import StateReader
from .pagination import TransactionScopes, device_transaction_ids, event_allowed
from .replaced_state import ReplacedStateSource, replaced_unsigned
from .suspension import suspended_error

__all__ = [
    "MEMBERSHIPS",
    "ForgottenRooms",
    "FullStateWaiter",
    "MembershipIndex",
    "RoomReader",
    "RoomStore",
    "client_event",
]

_MEMBER: Final = "m.room.member"
_HISTORY_VISIBILITY: Final[StateKey] = ("m.room.history_visibility", "")
#: The membership values of the spec's ``m.room.member``.
MEMBERSHIPS: Final = frozenset({"join", "invite", "knock", "leave", "ban"})
# Events read from storage per request.
_BATCH: Final = 1_000


class MembershipIndex(Protocol):
    """A user's memberships across rooms
    (:class:`ranvier.storage.room_members.RoomMemberStorage`).
    """

    async def get_current_membership_event_ids(self, user_id: str) -> Mapping[str, str]:
        """Per room whose current state has a membership of ``user_id``, that event's ID."""
        ...

    async def get_room_event_id_at(self, room_id: str, stream_ordering: int) -> str | None:
        """The room's last accepted event at or before ``stream_ordering``."""
        ...

    async def get_latest_membership_event_id(self, user_id: str, room_id: str) -> str | None:
        """The event of ``user_id``'s newest membership in the room: the
        current state's, or one held from outside the room's DAG when newer
        (:mod:`ranvier.storage.local_memberships`).
        """
        ...


class RoomStore(StateReader, ReplacedStateSource, Protocol):
    """The reads of rooms: state, events as served, and what state events
    replaced."""


class ForgottenRooms(Protocol):
    """Rooms users forgot (:class:`ranvier.storage.forgotten_rooms.ForgottenRoomStorage`)."""

    async def has_forgotten(self, user_id: str, room_id: str) -> bool: ...


class FullStateWaiter(Protocol):
    """Waits for a room joined with partial state to have its full state
    (:meth:`ranvier.core.unpartial.UnpartialStater.wait_for_full_state`).
    """

    async def wait_for_full_state(self, room_id: str) -> None: ...


def _forbidden(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_FORBIDDEN", http_status=403)


def _not_found(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_NOT_FOUND", http_status=404)


@dataclass(frozen=True, slots=True)
class _View:
    """Which state of a room a user reads: the current one, or the state
    after their membership ended (``state_group``).
    """

    membership: str | None
    state_group: int | None
    #: Whether the user is joined now.
    joined: bool
    #: Where the membership that ended was written (with ``state_group``).
    ended_at: int | None = None


class RoomReader:
    """Reads rooms for local users, applying the rules above.

    ``store`` reads the rooms, ``memberships`` finds a user's rooms.
    ``full_state`` is what reads of members wait on while a room's state is
    partial; without one they answer from the partial state. Memberships of
    users of ``server_name`` (ours) are read without waiting. ``clock``
    gives the ``age`` of events returned. ``forgotten`` says which rooms
    users forgot: a user who left one and forgot it reads it as one never
    in it. ``transactions`` gives ``/event`` the transaction ID of an event
    the asking device sent. ``erasure`` gives ``/event`` the redacted form
    of an erased sender's event for a user not joined at it
    (:mod:`ranvier.core.erasure`); without it events are served as read.
    """

    def __init__(
        self,
        store: RoomStore,
        memberships: MembershipIndex,
        *,
        full_state: FullStateWaiter | None = None,
        server_name: str | None = None,
        clock: Clock = wall_clock_ms,
        forgotten: ForgottenRooms | None = None,
        transactions: TransactionScopes | None = None,
        erasure: ErasedForms | None = None,
    ) -> None:
        self._forgotten = forgotten
        self._erasure = erasure
        self._transactions = transactions
        self._server_name = server_name
        self._store = store
        self._memberships = memberships
        self._full_state = full_state
        self._clock = clock

    # --- Memberships --------------------------------------------------------------

    async def membership(self, user_id: str, room_id: str) -> str | None:
        """``user_id``'s membership in the room's current state; None if none."""
        event = await self._current_member_event(user_id, room_id)
        return None if event is None else _membership_of(event)

    async def joined_rooms(self, user_id: str) -> list[str]:
        """The rooms ``user_id`` is joined to, in the order of their joins."""
        event_ids = await self._memberships.get_current_membership_event_ids(user_id)
        events = await self._events(event_ids.values())
        joined = [
            event for event in events.values() if event.room_id in event_ids and _is_join(event)
        ]
        joined.sort(key=lambda event: event.stream_ordering)
        return [event.room_id for event in joined]

    async def check_joined(self, user_id: str, room_id: str) -> None:
        """Raise 403 unless ``user_id`` is joined to the room now."""
        if await self.membership(user_id, room_id) != "join":
            raise _forbidden(f"{user_id} is not in room {room_id}")

    async def check_can_read(self, user_id: str, room_id: str) -> None:
        """Raise 403 unless ``user_id`` is joined or the room is world-readable."""
        await self._view(user_id, room_id, departed=False)

    async def check_may_redact(
        self, user_id: str, room_id: str, event_id: str, *, suspended: bool = False
    ) -> None:
        """Raise 403 unless ``user_id``, joined, may redact ``event_id``: an
        event of its own, or any event with the room's ``redact`` power level
        unless the account is ``suspended`` (:mod:`ranvier.core.suspension`).

        The auth rules let any member send a redaction and leave it to the
        servers to apply it only where it is allowed, but a redaction by a
        user of the target's own server applies wherever it goes: refusing
        it here is what stops a member without power from erasing others'
        events.
        """
        await self.check_joined(user_id, room_id)
        target = (await self._events([event_id])).get(event_id)
        if target is not None and target.room_id == room_id and target.sender == user_id:
            return
        if suspended:
            raise suspended_error("redact_others")
        state = await self._store.get_current_state_ids_for_keys(
            room_id, [CREATE_KEY, POWER_LEVELS_KEY]
        )
        rows = await self._events(state.values())
        version = await self._store.get_room_version(room_id)
        assert version is not None  # the user is joined, so the room is known
        room_version = get_room_version(version)
        parsed = {
            key: Pdu.from_json(rows[event].json, room_version, check_limits=False)
            for key, event in state.items()
            if event in rows
        }
        power_levels = parsed.get(POWER_LEVELS_KEY)
        level = get_user_power_level(
            user_id, power_levels=power_levels, create=parsed.get(CREATE_KEY)
        )
        if level < get_named_level(power_levels, "redact"):
            raise _forbidden(f"{user_id} may not redact other users' events in {room_id}")

    # --- State --------------------------------------------------------------------

    async def state(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        """Every state event the user may see: ``GET /rooms/{roomId}/state``."""
        view = await self._view(user_id, room_id)
        if view.state_group is None:
            await self._wait_for_members(room_id)
        state = await self._state_ids(room_id, view)
        events = await self._events(state.values())
        now = self._clock()
        return [
            client_event(events[event_id], now_ms=now)
            for event_id in state.values()
            if event_id in events
        ]

    async def state_event(
        self, user_id: str, room_id: str, event_type: str, state_key: str
    ) -> dict[str, Any]:
        """One state event in the client format: ``GET /state/{type}/{key}``.

        Raises 404 ``M_NOT_FOUND`` when the state the user sees has none.
        """
        view = await self._view(user_id, room_id)
        key = (event_type, state_key)
        local = self._server_name is not None and state_key.partition(":")[2] == self._server_name
        if view.state_group is None and event_type == _MEMBER and not local:
            await self._wait_for_members(room_id)
        if view.state_group is None:
            found = await self._store.get_current_state_ids_for_keys(room_id, [key])
        else:
            found = await self._store.get_state_ids_for_keys(view.state_group, [key])
        event_id = found.get(key)
        event = None if event_id is None else (await self._events([event_id])).get(event_id)
        if event is None:
            raise _not_found(f"room {room_id} has no {event_type} state with key {state_key!r}")
        return client_event(event, now_ms=self._clock(), unsigned=await self._replaced(event))

    # --- Events -------------------------------------------------------------------

    async def event(
        self, user_id: str, room_id: str, event_id: str, *, sent_by: TxnOwner | None = None
    ) -> dict[str, Any]:
        """``GET /rooms/{roomId}/event/{eventId}``; an event ``sent_by``
        (the reader's device or device-less token) sent carries its
        transaction ID in ``unsigned``."""
        current = await self._current_member_event(user_id, room_id)
        membership = None if current is None else _membership_of(current)
        if membership in ("leave", "ban") and await self._has_forgotten(user_id, room_id):
            membership = None
        if membership not in ("join", "leave", "ban") and not await self._world_readable(
            room_id, None
        ):
            # The spec answers 404 for an event the user may not read, so a
            # room the user was never in looks no different from a made-up ID.
            raise _not_found(f"event {event_id} is not known in {room_id}, or not visible")
        event = (await self._events([event_id])).get(event_id)
        then = None
        if (
            event is not None
            and event.room_id == room_id
            and not event.outlier
            and event.rejected_reason is None
        ):
            then = await self._membership_if_seen(user_id, event, joined_now=membership == "join")
        if event is None or then is None:
            raise _not_found(f"event {event_id} is not known in {room_id}, or not visible")
        if self._erasure is not None:
            [event] = await erasure_applied(self._erasure, [event], {event_id: then})
        unsigned = await self._replaced(event)
        unsigned["membership"] = then
        if sent_by is not None and self._transactions is not None:
            found = await device_transaction_ids(self._transactions, sent_by, [event])
            if event_id in found:
                unsigned["transaction_id"] = found[event_id]
        return client_event(event, now_ms=self._clock(), unsigned=unsigned)

    async def _replaced(self, event: StoredEvent) -> dict[str, Any]:
        """``replaces_state`` and ``prev_content`` of a state event, as
        every timeline gives them (:mod:`ranvier.core.replaced_state`).
        """
        return (await replaced_unsigned(self._store, [event])).get(event.event_id, {})

    async def _membership_if_seen(
        self, user_id: str, event: StoredEvent, *, joined_now: bool
    ) -> str | None:
        """The user's membership at ``event`` (``unsigned.membership``:
        the state before it, changed by the event when it is their own
        membership, ``leave`` where they had none) when the history
        visibility lets them see it; None when it does not.
        """
        if event.type == _MEMBER and event.state_key == user_id:
            return _membership_of(event) or "leave"
        groups = await self._store.get_event_state_groups(event.event_id)
        if groups is None:
            return None
        member_key = (_MEMBER, user_id)
        state = await self._store.get_state_ids_for_keys(
            groups.before, [_HISTORY_VISIBILITY, member_key]
        )
        events = await self._events(state.values())
        visibility = None
        if (hv := events.get(state.get(_HISTORY_VISIBILITY, ""))) is not None:
            value = event_content(hv).get("history_visibility")
            if isinstance(value, str):
                visibility = value
        member = events.get(state.get(member_key, ""))
        then = None if member is None else _membership_of(member)
        seen = event_allowed(event, visibility, then, joined_now=joined_now)
        return (then or "leave") if seen else None

    # --- Members ------------------------------------------------------------------

    async def members(
        self,
        user_id: str,
        room_id: str,
        *,
        membership: str | None = None,
        not_membership: str | None = None,
        at: int | None = None,
    ) -> list[dict[str, Any]]:
        """The member events of the state the user sees: ``GET /members``.

        With ``membership``, members with that membership; with
        ``not_membership``, those without that one; with both, either (the
        spec's "or"). With ``at`` (a stream position), the members as the
        room stood then, or, for a user who has left since, when they left.
        """
        for name, value in (("membership", membership), ("not_membership", not_membership)):
            if value is not None and value not in MEMBERSHIPS:
                raise MatrixError(
                    f"{name} must be one of {', '.join(sorted(MEMBERSHIPS))}, not {value!r}",
                    errcode="M_INVALID_PARAM",
                    http_status=400,
                )
        view = await self._view(user_id, room_id)
        if view.state_group is None:
            await self._wait_for_members(room_id)
        seen: _View | None = view
        if at is not None and (view.ended_at is None or at < view.ended_at):
            seen = await self._view_at(room_id, view, at)
        members = [] if seen is None else await self._member_events(room_id, seen)
        now = self._clock()
        chosen = []
        for event in members:
            value = _membership_of(event)
            wanted = membership is not None and value == membership
            kept = not_membership is not None and value != not_membership
            if (membership is None and not_membership is None) or wanted or kept:
                chosen.append(client_event(event, now_ms=now))
        return chosen

    async def joined_members(self, user_id: str, room_id: str) -> dict[str, dict[str, str]]:
        """``GET /joined_members``: each joined user's display name and avatar.

        Only a joined user (or anyone, in a world-readable room) may ask.
        """
        view = await self._view(user_id, room_id, departed=False)
        await self._wait_for_members(room_id)
        joined: dict[str, dict[str, str]] = {}
        for event in await self._member_events(room_id, view):
            if event.state_key is None or not _is_join(event):
                continue
            content = event_content(event)
            profile: dict[str, str] = {}
            for field, name in (("displayname", "display_name"), ("avatar_url", "avatar_url")):
                if isinstance(content.get(field), str):
                    profile[name] = content[field]
            joined[event.state_key] = profile
        return joined

    async def _wait_for_members(self, room_id: str) -> None:
        if self._full_state is not None and await self._store.is_partial_state_room(room_id):
            await self._full_state.wait_for_full_state(room_id)

    async def _member_events(self, room_id: str, view: _View) -> list[StoredEvent]:
        state = await self._state_ids(room_id, view)
        member_ids = [event_id for (kind, _), event_id in state.items() if kind == _MEMBER]
        events = await self._events(member_ids)
        return [events[event_id] for event_id in member_ids if event_id in events]

    # --- Helpers ------------------------------------------------------------------

    async def _view(self, user_id: str, room_id: str, *, departed: bool = True) -> _View:
        """What state of the room ``user_id`` reads, or 403."""
        current = await self._current_member_event(user_id, room_id)
        membership = None if current is None else _membership_of(current)
        if membership == "join":
            return _View(membership, None, joined=True)
        if (
            departed
            and current is not None
            and membership in ("leave", "ban")
            and not await self._has_forgotten(user_id, room_id)
        ):
            left = await self._departure_in_dag(user_id, room_id, current)
            groups = (
                None if left is None else await self._store.get_event_state_groups(left.event_id)
            )
            if left is not None and groups is not None:
                return _View(membership, groups.after, joined=False, ended_at=left.stream_ordering)
        if await self._world_readable(room_id, None):
            return _View(membership, None, joined=False)
        raise _forbidden(f"{user_id} may not read room {room_id}: not a member of it")

    async def _has_forgotten(self, user_id: str, room_id: str) -> bool:
        return self._forgotten is not None and await self._forgotten.has_forgotten(user_id, room_id)

    async def _view_at(self, room_id: str, view: _View, position: int) -> _View | None:
        """The state after the room's last event by ``position``; None before the room."""
        event_id = await self._memberships.get_room_event_id_at(room_id, position)
        groups = None if event_id is None else await self._store.get_event_state_groups(event_id)
        if groups is None:
            return None
        return _View(view.membership, groups.after, joined=view.joined)

    async def _world_readable(self, room_id: str, state_group: int | None) -> bool:
        if state_group is None:
            found = await self._store.get_current_state_ids_for_keys(room_id, [_HISTORY_VISIBILITY])
        else:
            found = await self._store.get_state_ids_for_keys(state_group, [_HISTORY_VISIBILITY])
        event_id = found.get(_HISTORY_VISIBILITY)
        if event_id is None:
            return False
        event = (await self._events([event_id])).get(event_id)
        return (
            event is not None and event_content(event).get("history_visibility") == "world_readable"
        )

    async def _state_ids(self, room_id: str, view: _View) -> Mapping[StateKey, str]:
        if view.state_group is None:
            return await self._store.get_current_state_ids(room_id)
        return await self._store.get_state_ids(view.state_group)

    async def _current_member_event(self, user_id: str, room_id: str) -> StoredEvent | None:
        """The event of the user's membership now: the one ``/sync`` shows,
        which may be newer than the room's state here (an invite from
        another server to a room this server left).
        """
        event_id = await self._memberships.get_latest_membership_event_id(user_id, room_id)
        if event_id is None:
            return None
        return (await self._events([event_id])).get(event_id)

    async def _departure_in_dag(
        self, user_id: str, room_id: str, current: StoredEvent
    ) -> StoredEvent | None:
        """Where the user's leave or ban ``current`` ends what they read of
        the room: ``current`` itself, or, for one held from outside the
        room's DAG (an invite declined after the room was left), the leave
        or ban in the room's state here; None when there is none.
        """
        if not current.outlier:
            return current
        key = (_MEMBER, user_id)
        found = await self._store.get_current_state_ids_for_keys(room_id, [key])
        event_id = found.get(key)
        event = None if event_id is None else (await self._events([event_id])).get(event_id)
        if event is None or _membership_of(event) not in ("leave", "ban"):
            return None
        return event

    async def _events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        wanted = list(dict.fromkeys(event_ids))
        found: dict[str, StoredEvent] = {}
        for start in range(0, len(wanted), _BATCH):
            found.update(await self._store.get_events(wanted[start : start + _BATCH]))
        return found


def _membership_of(event: StoredEvent) -> str | None:
    value = event_content(event).get("membership")
    return value if isinstance(value, str) else None


def _is_join(event: StoredEvent) -> bool:
    return _membership_of(event) == "join"
