"""``GET /sync``: what changed in a user's rooms since their last sync.

A sync starts from one snapshot of storage (the positions of both streams
and the user's memberships, :class:`SyncStore.sync_snapshot`) and reads
every room up to that snapshot's events position, so its ``next_batch`` is
exactly what it covered and the next sync picks up where it stopped.

Rooms
-----

* **join**: an initial sync (no ``since``), a room joined after ``since``,
  or one brought in by its state becoming complete, comes in full: the
  last events of the timeline (``limited`` with ``prev_batch`` when there
  are earlier ones) and the state before them. The timeline holds the
  filter's limit of events the user may see, read past those the history
  visibility or an ignored sender hides
  (:func:`ranvier.core.pagination.visible_page`). Otherwise the room's new
  events since ``since``, and when more arrived than the limit, the state
  that changed between ``since`` and the start of the timeline. Rooms with
  nothing new are left out.
* **invite**: invites after ``since``, with the stripped state the spec
  asks for (create, join rules, name, avatar, canonical alias, encryption)
  and the invite itself.
* **knock**: knocks after ``since`` (every current one on an initial
  sync), with the same stripped state, or for a room not joined here what
  its server answered to the knock (:mod:`ranvier.core.knocks`), and the
  knock itself. A knock let in (an invite) or turned away (a leave) moves
  the room to ``invite`` or ``leave``.
* **account_data**: the user's account data changed after ``since`` (all of
  it on an initial sync), global at the top level and per joined room in
  the room's entry; a room with nothing else new comes with an empty
  timeline for it. Account data is the sync token's third stream.
* **ephemeral**: a joined room's receipts changed after ``since`` (all of
  them on an initial sync) as one ``m.receipt`` event, and its typing
  users when they changed as ``m.typing`` (:mod:`ranvier.core.receipts`,
  :mod:`ranvier.core.typing`); the token's fourth and fifth streams. A room
  with nothing else new comes with an empty timeline for them.
* **presence**: the presence of the users who share a joined room with
  the user (and the user's own) changed after ``since``, all known on an
  initial sync (:mod:`ranvier.core.presence`); the token's sixth stream.
  A sync marks its user online unless its ``set_presence`` says otherwise.
* **to_device**: the messages waiting for the requester's device after
  ``since``, oldest first, a page at a time; a sync with ``since``
  acknowledges (deletes) those up to it (:mod:`ranvier.core.e2e_keys`).
  The token's seventh stream.
* **device_lists**, **device_one_time_keys_count**,
  **device_unused_fallback_key_types**: users sharing a room with the user
  whose devices or keys changed after ``since``, or who joined or left a
  shared room; the device's key counts (:mod:`ranvier.core.e2e_keys`). The
  token's eighth stream.
* **unread_notifications**: for each joined room in the response, the
  events since the user's read receipt that their push rules say notify
  them, and how many of those highlight
  (:mod:`ranvier.core.notification_counts`); split into the main
  timeline's and ``unread_thread_notifications`` when the filter's
  timeline asks for ``unread_thread_notifications``.
* **leave**: rooms left (or banned from) after ``since``, with the timeline
  up to the leave; with ``include_leave`` an initial sync lists every room
  left. A room the user forgot since (``/forget``) is not listed.

Partial state (MSC3706, MSC3902)
--------------------------------

A room joined with partial state lacks most of its members. A sync that
does not lazy-load members would hand the client a wrong member list, so
it leaves the room out, as if not joined yet, until its state is complete;
the next sync after that brings it in full, as a room newly joined (the
un-partial-state stream says which rooms completed after ``since``), and a
long-poll waiting meanwhile is woken by the completion. A sync that
lazy-loads members includes the room at once: it only needs the members
who sent the timeline's events, whose membership events every event cites
as auth events.

Long-polling
------------

With ``since`` and a timeout, a sync with nothing to report waits on the
:class:`~ranvier.core.notifier.StreamNotifier` until something is committed
past its snapshot in one of the user's rooms, or about the user's
membership anywhere (an invite), or a room's partial state is cleared,
then looks again, until the timeout ends on Trio's clock; then it answers,
empty, with a ``next_batch`` no older than ``since``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.core.account_data import AccountData, AccountDataUpdates
from ranvier.core.accounts import Requester
from ranvier.core.client_events import client_event, event_content
from ranvier.core.e2e_keys import E2eSync
from ranvier.core.filters import Filter
from ranvier.core.invite_permission import InvitePermission
from ranvier.core.lazy_members import SentMembers
from ranvier.core.notification_counts import NotificationCounts
from ranvier.core.notifier import StreamNotifier, StreamPosition
from ranvier.core.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    HistoryReader,
    MessagesStore,
    VisiblePage,
    format_pagination_token,
    format_sync_token,
    parse_sync_token,
    reader_unsigned,
    senders_memberships,
    transaction_ids,
    visible_page,
)
from ranvier.core.replaced_state import replaced_unsigned, with_replaced
from ranvier.storage.records import StateKey, StoredEvent

__all__ = ["MAX_TIMEOUT_MS", "SyncHandler", "SyncStore", "stripped_room_state"]

#: The longest a long-poll is held, whatever the client asks.
MAX_TIMEOUT_MS: Final = 10 * 60 * 1000

_MEMBER: Final = "m.room.member"
#: The state an invited user sees of the room (the spec's recommendation).
_STRIPPED_STATE_KEYS: Final[tuple[StateKey, ...]] = (
    ("m.room.create", ""),
    ("m.room.join_rules", ""),
    ("m.room.name", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.encryption", ""),
)

#: ``(room ID, membership, its event's position, its event ID)``.
_Membership = tuple[str, str, int, str]


class SyncStore(MessagesStore, Protocol):
    """The reads a sync makes; see :mod:`ranvier.storage.sync_reads`."""

    async def sync_snapshot(
        self, user_id: str, un_partial_after: int, events_after: int | None = None
    ) -> tuple[
        int, int, list[_Membership], frozenset[str], frozenset[str], frozenset[str] | None
    ]: ...

    async def state_at(
        self, room_id: str, position: int, keys: Collection[StateKey] | None = None
    ) -> dict[StateKey, str]: ...

    async def state_changes(
        self, room_id: str, since: int, event_id: str
    ) -> dict[StateKey, str]: ...

    async def state_changes_upto(
        self, room_id: str, since: int, upto: int
    ) -> dict[StateKey, str]: ...

    async def history_starts_at_create(self, room_id: str) -> bool:
        """Whether the room's timeline held here begins with its create event."""
        ...

    async def room_summary(self, room_id: str, user_id: str) -> tuple[int, int, list[str]]:
        """Joined and invited member counts, and the heroes of an unnamed room."""
        ...

    async def forgotten_rooms(self, user_id: str) -> frozenset[str]:
        """The rooms the user forgot since last in them (``/forget``)."""
        ...

    async def joined_members(self, room_ids: Collection[str]) -> set[str]:
        """The users joined to any of ``room_ids`` now."""
        ...


class PresenceSource(Protocol):
    """Users' presence (:class:`ranvier.core.presence.Presence`)."""

    async def position(self) -> int: ...

    async def on_sync(self, user_id: str, set_presence: str, timeout_ms: int) -> None: ...

    async def for_sync(
        self, user_id: str, after: int | None, upto: int, met: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """The ``m.presence`` events of the users the user may see whose
        presence changed after ``after`` (None: an initial sync), and of the
        users in ``met`` (newly sharing a room with the user) as they are.
        """
        ...


class EndToEndSource(Protocol):
    """Devices' messages and keys (:class:`ranvier.core.e2e_keys.E2eKeys`)."""

    async def sync_positions(self) -> tuple[int, int]:
        """The to-device and device-list positions."""
        ...

    async def for_sync(
        self,
        user_id: str,
        device_id: str,
        room_ids: Collection[str],
        since: StreamPosition | None,
        now: StreamPosition,
        *,
        newly_full: Collection[str] = (),
    ) -> E2eSync:
        """The device's messages, device lists and key counts between two
        positions; the messages ``since`` acknowledges are deleted.
        ``newly_full`` is the joined rooms whose partial state was cleared
        between them.
        """
        ...


class EphemeralSource(Protocol):
    """A stream of ephemeral room events for ``/sync``: receipts
    (:class:`ranvier.core.receipts.Receipts`) or typing
    (:class:`ranvier.core.typing.TypingNotices`).
    """

    async def position(self) -> int: ...

    async def for_sync(
        self, user_id: str, room_ids: Collection[str], after: int | None, upto: int
    ) -> dict[str, dict[str, Any]]:
        """Per room of ``room_ids`` with something after ``after`` (None: an
        initial sync), its event.
        """
        ...


@dataclass(frozen=True, slots=True)
class _Request:
    requester: Requester
    user_id: str
    since: StreamPosition | None
    now: StreamPosition
    filter: Filter
    full_state: bool
    un_partialled: frozenset[str]
    partial: frozenset[str]
    #: Membership events the client holds already, not to be sent again
    #: (empty unless lazy-loading without redundant members).
    held_members: frozenset[str] = frozenset()
    #: Membership events this response sends, filled in as rooms are made.
    sent_members: set[str] = field(default_factory=set)
    #: The users the requester ignores, read once for every room.
    ignored: frozenset[str] = frozenset()
    #: Rooms carry the state at the end of their timeline, ``state_after``
    #: (spec v1.16, MSC4222), instead of the state at its start.
    use_state_after: bool = False

    @property
    def federation_format(self) -> bool:
        """Whether the filter asks for events as PDUs (``event_format``)."""
        return self.filter.event_format == "federation"


_decode_pdu = msgspec.json.Decoder(dict[str, Any]).decode


def _sync_event(
    event: StoredEvent,
    transaction_id: str | None = None,
    membership: str | None = None,
    replaced: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    federation: bool = False,
) -> dict[str, Any]:
    unsigned = reader_unsigned(transaction_id, membership)
    if replaced:
        unsigned = with_replaced(replaced, event.event_id, unsigned)
    if federation:
        # The filter's event_format "federation": the PDU as held (redacted
        # where a redaction applies), with its ID, which the PDU of recent
        # room versions leaves out, and the reader's unsigned data in place
        # of what another server put there.
        pdu = _decode_pdu(event.json)
        pdu["event_id"] = event.event_id
        pdu.pop("unsigned", None)
        if unsigned:
            pdu["unsigned"] = dict(unsigned)
        return pdu
    formatted = client_event(event, unsigned=unsigned)
    # Events under a room's entry do not repeat its ID.
    formatted.pop("room_id", None)
    return formatted


def _stripped(event: StoredEvent) -> dict[str, Any]:
    formatted = client_event(event)
    return {key: formatted[key] for key in ("type", "state_key", "content", "sender")}


class _StrippedEvent(msgspec.Struct):
    type: str
    state_key: str
    content: dict[str, Any]
    sender: str


class _Unsigned(msgspec.Struct, frozen=True):
    invite_room_state: tuple[msgspec.Raw, ...] = ()
    knock_room_state: tuple[msgspec.Raw, ...] = ()


class _WithUnsigned(msgspec.Struct):
    unsigned: _Unsigned = _Unsigned()


_decode_unsigned = msgspec.json.Decoder(_WithUnsigned).decode


def _invite_room_state(invite: StoredEvent) -> list[dict[str, Any]]:
    """The stripped state another server put in its invite's ``unsigned``
    (or, for a knock, that its answer to the knock carried); entries that
    are not stripped state events are left out.
    """
    try:
        unsigned = _decode_unsigned(invite.json).unsigned
    except msgspec.ValidationError:
        return []
    is_knock = event_content(invite).get("membership") == "knock"
    entries = unsigned.knock_room_state if is_knock else unsigned.invite_room_state
    stripped = []
    for entry in entries:
        try:
            event = msgspec.json.decode(entry, type=_StrippedEvent)
        except msgspec.ValidationError:
            continue
        stripped.append(msgspec.structs.asdict(event))
    return stripped


async def stripped_room_state(
    store: SyncStore, room_id: str, invite_id: str, ignored: Collection[str] = ()
) -> list[dict[str, Any]] | None:
    """The stripped state an invited (or knocking) user sees of the room,
    ending with the invite (or knock) itself; None for an invite from a
    user the invitee ignores, which the spec has the server keep from them.
    Shared by ``/sync`` and sliding sync.
    """
    invite = await store.get_events([invite_id])
    event = invite.get(invite_id)
    if event is not None and event.sender in ignored:
        return None
    # An invite or knock held from outside the room's DAG (a room not
    # joined here, or left long ago): what the room's server sent of the
    # room now is newer than any state held here.
    stripped = _invite_room_state(event) if event is not None and event.outlier else []
    if not stripped:
        state = await store.current_state_for_keys(room_id, _STRIPPED_STATE_KEYS)
        stripped = [_stripped(entry) for entry in state]
    if event is not None:
        stripped.append(_stripped(event))
    return stripped


def _filtered_account_data(
    filter: Filter, user_id: str, updates: AccountDataUpdates
) -> AccountDataUpdates:
    """What the filter's ``account_data`` and ``room.account_data`` let through."""
    wanted, in_rooms = filter.account_data, filter.room.account_data
    global_events = [
        event for event in updates.global_events if wanted.matches(event["type"], user_id)
    ]
    room_events = {}
    for room_id, events in updates.room_events.items():
        if not in_rooms.includes_room(room_id):
            continue
        kept = [event for event in events if in_rooms.matches(event["type"], user_id)]
        if kept:
            room_events[room_id] = kept[: in_rooms.limit]
    return AccountDataUpdates(global_events[: wanted.limit], room_events)


def _quiet_room(now: StreamPosition) -> dict[str, Any]:
    """A joined room with nothing new but its account data."""
    return {
        "timeline": {
            "events": [],
            "limited": False,
            "prev_batch": format_pagination_token(now.events),
        },
        "state": {"events": []},
        "ephemeral": {"events": []},
        "account_data": {"events": []},
        "unread_notifications": {},
        "summary": {},
    }


def _is_empty(response: dict[str, Any]) -> bool:
    rooms = response["rooms"]
    return not (
        rooms["join"]
        or rooms["invite"]
        or rooms["leave"]
        or rooms["knock"]
        or response["account_data"]["events"]
        or response["presence"]["events"]
        or response["to_device"]["events"]
        or response["device_lists"]["changed"]
        or response["device_lists"]["left"]
    )


class SyncHandler:
    """Answers ``/sync`` from storage, waiting on the notifier to long-poll."""

    def __init__(
        self,
        store: SyncStore,
        notifier: StreamNotifier,
        account_data: AccountData | None = None,
        *,
        receipts: EphemeralSource | None = None,
        typing: EphemeralSource | None = None,
        presence: PresenceSource | None = None,
        end_to_end: EndToEndSource | None = None,
        notifications: NotificationCounts | None = None,
        invite_permission: InvitePermission | None = None,
    ) -> None:
        self._store = store
        self._notifications = notifications
        # Invites of a user who blocks them are not shown (spec v1.18).
        self._invite_permission = invite_permission
        self._notifier = notifier
        self._account_data = account_data
        self._receipts = receipts
        self._typing = typing
        self._presence = presence
        self._end_to_end = end_to_end
        self._sent_members = SentMembers()
        #: Requests waiting now for something new to answer with, for metrics.
        self.long_polls = 0

    async def sync(
        self,
        requester: Requester,
        *,
        since: str | None = None,
        timeout_ms: int = 0,
        filter: Filter | None = None,
        full_state: bool = False,
        set_presence: str = "online",
        use_state_after: bool = False,
    ) -> dict[str, Any]:
        """The spec's ``/sync`` response for ``requester``.

        ``since`` is a ``next_batch`` of an earlier sync (``M_INVALID_PARAM``
        if it is not one); ``timeout_ms`` how long to wait for something to
        report when there is nothing (capped at :data:`MAX_TIMEOUT_MS`);
        ``set_presence`` the presence the sync gives its user (``offline``:
        none); ``use_state_after`` asks for each room's ``state_after``
        rather than its ``state``.
        """
        position = None if since is None else parse_sync_token(since)
        chosen = filter if filter is not None else Filter()
        waited_ms = min(max(timeout_ms, 0), MAX_TIMEOUT_MS)
        if self._presence is not None:
            await self._presence.on_sync(requester.user_id, set_presence, waited_ms)
        deadline = trio.current_time() + waited_ms / 1000
        while True:
            response, now, rooms, held = await self._sync_once(
                requester, position, chosen, full_state, use_state_after
            )
            if position is None or full_state or not _is_empty(response):
                break
            self.long_polls += 1
            try:
                with trio.move_on_at(deadline) as waited:
                    await self._notifier.wait_beyond(now, rooms=rooms, user_id=requester.user_id)
            finally:
                self.long_polls -= 1
            if waited.cancelled_caught:
                break
        if held is not None:
            self._sent_members.record(
                requester.user_id, requester.device_id, response["next_batch"], held
            )
        return response

    async def _sync_once(
        self,
        requester: Requester,
        since: StreamPosition | None,
        filter: Filter,
        full_state: bool,
        use_state_after: bool = False,
    ) -> tuple[dict[str, Any], StreamPosition, frozenset[str], frozenset[str] | None]:
        """One look at storage: the response, the position it covers, the
        rooms the user has a membership in, and, when redundant members are
        left out, the membership events the client holds after it.
        """
        # Read before the rest: a change after this is the next sync's.
        account_data_at = 0 if self._account_data is None else await self._account_data.position()
        receipts_at = 0 if self._receipts is None else await self._receipts.position()
        typing_at = 0 if self._typing is None else await self._typing.position()
        presence_at = 0 if self._presence is None else await self._presence.position()
        to_device_at, device_lists_at = (
            (0, 0) if self._end_to_end is None else await self._end_to_end.sync_positions()
        )
        snapshot = await self._store.sync_snapshot(
            requester.user_id,
            0 if since is None else since.un_partial,
            None if since is None or full_state else since.events,
        )
        events, un_partial, memberships, partial, un_partialled, changed = snapshot
        now = StreamPosition(
            events,
            un_partial,
            account_data_at,
            receipts_at,
            typing_at,
            presence_at,
            to_device_at,
            device_lists_at,
        )
        if since is not None:
            # Never answer with a next_batch behind the token given in any
            # stream (a token from before a restore, or made up), or the
            # client would go back.
            now = StreamPosition(
                max(now.events, since.events),
                max(now.un_partial, since.un_partial),
                max(now.account_data, since.account_data),
                max(now.receipts, since.receipts),
                max(now.typing, since.typing),
                max(now.presence, since.presence),
                max(now.to_device, since.to_device),
                max(now.device_lists, since.device_lists),
            )
        account_data = (
            AccountDataUpdates()
            if self._account_data is None
            else _filtered_account_data(
                filter,
                requester.user_id,
                await self._account_data.updates(
                    requester.user_id,
                    None if since is None or full_state else since.account_data,
                    account_data_at,
                ),
            )
        )
        skip_redundant = (
            filter.lazy_load_members and not filter.room.state.include_redundant_members
        )
        held = (
            self._sent_members.held(
                requester.user_id, requester.device_id, format_sync_token(since)
            )
            if skip_redundant and since is not None and not full_state
            else frozenset()
        )
        request = _Request(
            requester,
            requester.user_id,
            since,
            now,
            filter,
            full_state,
            un_partialled,
            partial,
            held_members=held,
            ignored=await self._store.ignored_users(requester.user_id),
            use_state_after=use_state_after,
        )
        lazy = filter.lazy_load_members
        ephemeral = await self._ephemeral(
            request,
            [
                room_id
                for room_id, membership, _, _ in memberships
                if membership == "join"
                and (lazy or room_id not in partial)
                and filter.room.includes_room(room_id)
            ],
        )
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        knock: dict[str, Any] = {}
        forgotten: frozenset[str] | None = None
        invites_blocked: bool | None = None
        for room_id, membership, ordering, event_id in sorted(memberships):
            if not filter.room.includes_room(room_id):
                continue
            is_new = since is None or ordering > since.events
            if membership == "join":
                if room_id in partial and not lazy:
                    continue
                if (
                    changed is not None
                    and room_id not in changed
                    and not is_new
                    and (lazy or room_id not in un_partialled)
                    and room_id not in account_data.room_events
                    and room_id not in ephemeral
                ):
                    # Nothing since the token, and nothing that brings it in whole.
                    continue
                room = await self._joined_room(request, room_id, ordering)
                room_data = account_data.room_events.get(room_id)
                room_ephemeral = ephemeral.get(room_id)
                if room is None and (room_data or room_ephemeral):
                    room = _quiet_room(now)
                if room is not None:
                    if room_data:
                        room["account_data"] = {"events": room_data}
                    if room_ephemeral:
                        room["ephemeral"] = {"events": room_ephemeral}
                    join[room_id] = room
            elif membership == "invite" and is_new:
                if invites_blocked is None:
                    invites_blocked = self._invite_permission is not None and (
                        await self._invite_permission.blocks_invites(requester.user_id)
                    )
                if invites_blocked:
                    continue
                invited = await self._invited_room(room_id, event_id, request.ignored)
                if invited is not None:
                    invite[room_id] = invited
            elif membership == "knock" and is_new:
                stripped = await self._invited_room(room_id, event_id)
                if stripped is not None:
                    knock[room_id] = {"knock_state": stripped["invite_state"]}
            elif membership in ("leave", "ban") and (
                (since is not None and is_new) or (since is None and filter.room.include_leave)
            ):
                if forgotten is None:
                    forgotten = await self._store.forgotten_rooms(requester.user_id)
                if room_id not in forgotten:
                    leave[room_id] = await self._left_room(request, room_id, ordering, event_id)
        if use_state_after:
            for room in (*join.values(), *leave.values()):
                room["state_after"] = room.pop("state")
        if self._notifications is not None and join:
            await self._add_notification_counts(requester.user_id, join, now.events, filter)
        rooms = frozenset(room_id for room_id, *_ in memberships)
        newly_full = un_partialled.intersection(
            room_id for room_id, membership, *_ in memberships if membership == "join"
        )
        end_to_end = E2eSync([], now.to_device, [], [], {}, [])
        if self._end_to_end is not None:
            end_to_end = await self._end_to_end.for_sync(
                requester.user_id, requester.device_id, rooms, since, now, newly_full=newly_full
            )
            # A page short of the stream's end: the next sync goes on from it.
            now = now._replace(to_device=end_to_end.to_device_reached)
        met = _joiners(join)
        if newly_full and self._presence is not None:
            # Until a room's partial state is cleared, its members unknown
            # here share no room with the user, so their presence was kept
            # from the syncs before; a lazy-loading sync does not carry
            # their joins now either. They are met now.
            met |= await self._store.joined_members(newly_full)
        response = {
            "next_batch": format_sync_token(now),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
            "presence": {"events": await self._presence_events(request, met)},
            "account_data": {"events": account_data.global_events},
            "to_device": {"events": end_to_end.to_device},
            "device_lists": {"changed": end_to_end.changed, "left": end_to_end.left},
            "device_one_time_keys_count": end_to_end.key_counts,
            "device_unused_fallback_key_types": end_to_end.unused_fallbacks,
        }
        return response, now, rooms, (held | request.sent_members if skip_redundant else None)

    async def _add_notification_counts(
        self, user_id: str, join: dict[str, Any], upto: int, filter: Filter
    ) -> None:
        """Each joined room's ``unread_notifications``, and its
        ``unread_thread_notifications`` when the filter asks for them.
        """
        assert self._notifications is not None
        if filter.room.timeline.unread_thread_notifications:
            split = await self._notifications.for_rooms_by_thread(user_id, list(join), upto)
            for room_id, room in join.items():
                main, threads = split.get(room_id, ({}, {}))
                room["unread_notifications"] = main
                if threads:
                    room["unread_thread_notifications"] = threads
            return
        counts = await self._notifications.for_rooms(user_id, list(join), upto)
        for room_id, room in join.items():
            room["unread_notifications"] = counts.get(room_id, {})

    async def _presence_events(
        self, request: _Request, met: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """The ``m.presence`` events to send, as the filter's ``presence``
        chooses them; ``met`` are the users whose joins this sync carries.
        """
        if self._presence is None:
            return []
        since = request.since
        after = None if since is None or request.full_state else since.presence
        chosen = request.filter.presence
        found = await self._presence.for_sync(request.user_id, after, request.now.presence, met)
        events = [event for event in found if chosen.matches(event["type"], event["sender"])]
        return events if chosen.limit is None else events[-chosen.limit :]

    async def _ephemeral(
        self, request: _Request, room_ids: Collection[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """The receipts and typing events of ``room_ids`` to send, per room,
        as the filter's ``room.ephemeral`` chooses them (types and rooms:
        these events have no sender).
        """
        since, now = request.since, request.now
        # Ephemeral events have no sender: only their types are filtered.
        chosen = msgspec.structs.replace(
            request.filter.room.ephemeral, senders=None, not_senders=()
        )
        room_ids = [room_id for room_id in room_ids if chosen.includes_room(room_id)]
        found: dict[str, list[dict[str, Any]]] = {}
        for source, after, upto in (
            (self._receipts, None if since is None else since.receipts, now.receipts),
            (self._typing, None if since is None else since.typing, now.typing),
        ):
            if source is None:
                continue
            if request.full_state:
                after = None
            events = await source.for_sync(request.user_id, room_ids, after, upto)
            for room_id, event in events.items():
                if chosen.matches(event["type"], ""):
                    found.setdefault(room_id, []).append(event)
        if chosen.limit is not None:
            found = {room_id: kept[: chosen.limit] for room_id, kept in found.items()}
        return found

    async def _joined_room(
        self, request: _Request, room_id: str, joined_at: int
    ) -> dict[str, Any] | None:
        since = request.since
        newly = (
            since is None
            or (joined_at > since.events and not await self._was_joined(request, room_id))
            or (room_id in request.un_partialled and not request.filter.lazy_load_members)
        )
        room = await self._room(
            request,
            room_id,
            upto=request.now.events,
            newly=newly,
            joined_now=True,
            checked_before=joined_at,
        )
        if room is None:
            return None
        room["ephemeral"] = {"events": []}
        room["account_data"] = {"events": []}
        room["unread_notifications"] = {}
        room["summary"] = {}
        if room_id not in request.partial:
            # The counts are required whenever they changed; a client that
            # lazy-loads members cannot count or name them itself. A
            # partial-state room's members are not known yet.
            joined, invited, heroes = await self._store.room_summary(room_id, request.user_id)
            room["summary"] = {
                "m.joined_member_count": joined,
                "m.invited_member_count": invited,
                "m.heroes": heroes,
            }
        return room

    async def _left_room(
        self, request: _Request, room_id: str, left_at: int, leave_id: str
    ) -> dict[str, Any]:
        room = await self._room(
            request,
            room_id,
            upto=left_at,
            newly=request.since is None
            or await self._joined_in_between(request, room_id, leave_id),
            joined_now=False,
            checked_before=left_at + 1,
        )
        leave = (await self._store.get_events([leave_id])).get(leave_id)
        if room is not None and leave is not None and leave.outlier:
            # Held from outside the room's DAG (an invite to a room left
            # before, declined or withdrawn): the timeline here ends before it.
            room["timeline"]["events"].append(
                request.filter.project(_sync_event(leave, federation=request.federation_format))
            )
            if request.use_state_after:
                room["state"]["events"].append(
                    request.filter.project(_sync_event(leave, federation=request.federation_format))
                )
        if room is None:
            # The leave is outside the room's timeline here (an invite from
            # another server declined) or filtered out of it: the client
            # still needs it to drop the room.
            timeline = (
                []
                if leave is None
                else [
                    request.filter.project(_sync_event(leave, federation=request.federation_format))
                ]
            )
            room = {
                "timeline": {
                    "events": timeline,
                    "limited": False,
                    "prev_batch": format_pagination_token(left_at - 1),
                },
                "state": {"events": list(timeline) if request.use_state_after else []},
            }
        room["account_data"] = {"events": []}
        return room

    async def _invited_room(
        self, room_id: str, invite_id: str, ignored: frozenset[str] = frozenset()
    ) -> dict[str, Any] | None:
        """The room's stripped state and the invite (or knock) itself; None
        for an invite from a user the invitee ignores, which the spec has
        the server keep from them.
        """
        stripped = await stripped_room_state(self._store, room_id, invite_id, ignored)
        return None if stripped is None else {"invite_state": {"events": stripped}}

    async def _with_current_state(
        self,
        room_id: str,
        upto: int,
        loaded: list[StoredEvent],
        shown: list[StoredEvent],
    ) -> list[StoredEvent]:
        """``shown`` (the visible part of ``loaded``) with the state events
        history visibility hid that are still the room's state at ``upto``.
        A member may read the current state anyway; without them a client
        that was away while, say, someone joined would never learn of it,
        since an incremental sync's ``state`` only covers what came before
        the timeline.
        """
        by_id = {event.event_id: event for event in shown}
        hidden = [e for e in loaded if e.state_key is not None and e.event_id not in by_id]
        if not hidden:
            return shown
        keys = {(event.type, event.state_key) for event in hidden if event.state_key is not None}
        current = set((await self._store.state_at(room_id, upto, keys)).values())
        by_id.update((event.event_id, event) for event in hidden if event.event_id in current)
        # The shown events as served (an erased sender's maybe redacted), in
        # the order loaded.
        return [by_id[event.event_id] for event in loaded if event.event_id in by_id]

    async def _joined_in_between(self, request: _Request, room_id: str, leave_id: str) -> bool:
        """Whether the user joined the room after ``since`` and left it
        since: the client never had the room, so it is sent in full, as a
        room newly joined would be.
        """
        key = (_MEMBER, request.user_id)
        before = await self._store.state_before(leave_id, [key])
        if key not in before:
            return False
        events = await self._store.get_events([before[key]])
        event = events.get(before[key])
        if event is None or event_content(event).get("membership") != "join":
            return False
        return not await self._was_joined(request, room_id)

    async def _was_joined(self, request: _Request, room_id: str) -> bool:
        """Whether the user was joined at ``since`` already: a membership
        event after it may only change their profile.
        """
        assert request.since is not None
        key = (_MEMBER, request.user_id)
        state = await self._store.state_at(room_id, request.since.events, [key])
        if key not in state:
            return False
        events = await self._store.get_events([state[key]])
        event = events.get(state[key])
        return event is not None and event_content(event).get("membership") == "join"

    async def _room(
        self,
        request: _Request,
        room_id: str,
        *,
        upto: int,
        newly: bool,
        joined_now: bool,
        checked_before: int,
    ) -> dict[str, Any] | None:
        """A room's timeline and state up to ``upto``: in full for a room
        new to the client, otherwise what is new since the request's
        ``since`` (with the whole state for ``full_state``); None when
        nothing is new.
        """
        timeline_filter = request.filter.room.timeline
        limit = min(timeline_filter.limit or DEFAULT_LIMIT, MAX_LIMIT)
        after = 0 if newly or request.since is None else request.since.events
        in_full = newly or request.full_state
        if timeline_filter.includes_room(room_id):
            page = await visible_page(
                self._store,
                room_id,
                HistoryReader(request.user_id, joined_now, checked_before, request.ignored),
                after=after,
                upto=upto,
                limit=limit,
                backwards=True,
                accept=timeline_filter.predicate(),
            )
        else:
            page = VisiblePage([], {}, [], upto, False)
        timeline, memberships, limited = page.events[::-1], page.memberships, page.more
        prev = page.edge
        if joined_now and len(timeline) < len(page.read):
            timeline = await self._with_current_state(room_id, upto, page.read[::-1], timeline)
            if len(timeline) > limit:
                # The room's current state among the hidden events read
                # past the visible ones: the newest ``limit`` are sent, and
                # paging back goes on from the oldest of them.
                timeline = timeline[-limit:]
                limited = True
                prev = timeline[0].stream_ordering - 1
        if newly and request.since is not None:
            # Joined since the client's token: the client holds none of the
            # room's history, and the timeline says so (as Synapse does).
            limited = True
        elif after == 0 and timeline and not limited and timeline[0].type != "m.room.create":
            # All the events the filter takes are here, but the room's
            # history here may start later than the room (joined through
            # another server, which holds what came before).
            limited = not await self._store.history_starts_at_create(room_id)
        if not in_full and not timeline:
            return None
        if request.use_state_after:
            # The state at the timeline's end, whose changes the timeline
            # may hold too: the client takes its state from here alone.
            if in_full:
                state = await self._store.state_at(room_id, upto)
            else:
                assert request.since is not None
                state = await self._store.state_changes_upto(room_id, request.since.events, upto)
        elif in_full:
            if timeline:
                state = await self._store.state_before(timeline[0].event_id)
            else:
                state = await self._store.state_at(room_id, upto)
        elif limited:
            assert request.since is not None
            state = await self._store.state_changes(
                room_id, request.since.events, timeline[0].event_id
            )
        else:
            state = {}
        if not request.use_state_after and timeline and timeline_filter.predicate() is not None:
            # Events the filter left out after the timeline's last one may
            # have changed the state (a state event of a type left out, or a
            # message merging a fork that brings one in). The next sync
            # starts after them, so this is the client's one chance to hear
            # of it: their changes go in ``state`` too, as Synapse sends
            # them, though the spec places ``state`` before the timeline.
            tail = await self._store.state_changes_upto(room_id, timeline[-1].stream_ordering, upto)
            state = {**state, **tail}
        state_events = await self._state_events(
            request, room_id, upto, state, timeline, incremental=not in_full
        )
        transactions = await transaction_ids(self._store, request.requester, timeline)
        replaced = await replaced_unsigned(self._store, timeline)
        project = request.filter.project
        return {
            "timeline": {
                "events": [
                    project(
                        _sync_event(
                            event,
                            transactions.get(event.event_id),
                            memberships.get(event.event_id),
                            replaced,
                            federation=request.federation_format,
                        )
                    )
                    for event in timeline
                ],
                "limited": limited,
                "prev_batch": format_pagination_token(prev),
            },
            "state": {"events": [project(event) for event in state_events]},
        }

    async def _state_events(
        self,
        request: _Request,
        room_id: str,
        upto: int,
        state: dict[StateKey, str],
        timeline: Sequence[StoredEvent],
        *,
        incremental: bool,
    ) -> list[dict[str, Any]]:
        """The state entries to send: the filter's, and with lazy-loading
        only the memberships of the timeline's senders and the user's own,
        less, when ``incremental``, those the client holds already unless it
        asks for them again. A room sent in full (new to the client, or
        full_state) sends them all: the client starts the room afresh.
        An incremental ``state`` (what changed in a gap before the timeline)
        keeps every membership change in it: the spec has a lazy-loading
        client keep the member list it fetched current from incremental
        syncs, and a join or leave in the gap is in no timeline.
        ``state_after`` holds the senders' memberships at the timeline's end
        (an older one would take the client's state back) and the state
        events of the timeline too.
        """
        state_filter = request.filter.room.state
        wanted = dict(state)
        if state_filter.lazy_load_members:
            own = (_MEMBER, request.user_id)
            if not incremental:
                wanted = {
                    key: value for key, value in wanted.items() if key[0] != _MEMBER or key == own
                }
            if request.use_state_after:
                senders = {(_MEMBER, event.sender) for event in timeline}
                wanted.update(await self._store.state_at(room_id, upto, senders))
            else:
                members = await senders_memberships(self._store, timeline)
                wanted.update(((_MEMBER, sender), event_id) for sender, event_id in members.items())
        in_timeline = set() if request.use_state_after else {event.event_id for event in timeline}
        ids = [event_id for event_id in wanted.values() if event_id not in in_timeline]
        if incremental and state_filter.lazy_load_members:
            held = request.held_members
            ids = [event_id for event_id in ids if event_id not in held]
        stored = await self._store.get_events(ids)
        keep: Callable[[str, str], bool] = state_filter.matches
        events = sorted(
            (event for event in stored.values() if keep(event.type, event.sender)),
            key=lambda event: event.stream_ordering,
        )
        if state_filter.limit is not None:
            events = events[: state_filter.limit]
        request.sent_members.update(
            event.event_id for event in (*events, *timeline) if event.type == _MEMBER
        )
        return [_sync_event(event, federation=request.federation_format) for event in events]


def _joiners(join: Mapping[str, Any]) -> set[str]:
    """The users whose joins the joined rooms of a sync answer carry, in
    their state or timeline: the sync brings them into the user's view."""
    found: set[str] = set()
    for room in join.values():
        for section in ("state", "state_after", "timeline"):
            for event in room.get(section, {}).get("events", ()):
                if (
                    event.get("type") == "m.room.member"
                    and isinstance(event.get("content"), dict)
                    and event["content"].get("membership") == "join"
                    and isinstance(event.get("state_key"), str)
                ):
                    found.add(event["state_key"])
    return found
