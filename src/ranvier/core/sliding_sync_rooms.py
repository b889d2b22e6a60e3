"""One room of a sliding sync response, in full or what changed.

A room new to the connection (or sent before under a smaller
``required_state``, or whose user's membership changed kind since) comes ``initial``: its last
``timeline_limit`` events, the ``required_state`` of its current state,
its name, avatar, heroes and counts. A room sent before comes with the
events after the position it was sent up to and the state entries that
changed since (a ``{type, state_key}`` stub for an entry gone), its name
or avatar only when they changed.

A room sent before whose ``timeline_limit`` grew (and nothing else of its
config) comes at once with its latest ``timeline_limit`` events, older ones
among them, and ``expanded_timeline``; its ``limited`` and ``prev_batch``
are those of the longer timeline, its state only what changed since.

A room the user has left comes up to the leave; an invited or knocking
user gets the stripped state ``/sync`` sends
(:func:`ranvier.core.sync.stripped_room_state`), and so does one who
declined an invite or withdrew a knock, never having joined. Events pass the one
visibility filter (:func:`ranvier.core.pagination.visible_with_memberships`),
which also keeps ignored users' events out and gives the user's membership
at each, for ``unsigned.membership``; the timeline is read past the events
it hides (:func:`ranvier.core.pagination.visible_page`), so that it holds
``timeline_limit`` events while the user may see so many.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.client_events import client_event, event_content
from ranvier.core.pagination import (
    HistoryReader,
    format_pagination_token,
    reader_unsigned,
    senders_memberships,
    transaction_ids,
    visible_page,
)
from ranvier.core.replaced_state import replaced_unsigned, with_replaced
from ranvier.core.sliding_sync_config import RoomConfig
from ranvier.core.sync import SyncStore, stripped_room_state
from ranvier.storage.records import StateKey, StoredEvent

__all__ = ["RoomStateDeltas", "RoomToSend", "build_room"]

_MEMBER: Final = "m.room.member"
_NAME: Final = ("m.room.name", "")
_AVATAR: Final = ("m.room.avatar", "")


class RoomStateDeltas(Protocol):
    """:func:`ranvier.storage.sliding_sync_reads.state_delta`."""

    async def state_delta(
        self, room_id: str, since: int, upto: int
    ) -> dict[tuple[str, str], str | None]: ...


@dataclass(frozen=True, slots=True)
class RoomToSend:
    """A room chosen for the response and how it is to be sent."""

    room_id: str
    membership: str
    membership_at: int
    membership_event_id: str
    config: RoomConfig
    bump_stamp: int
    #: None for a room sent in full, else the events position it was sent up to.
    sent_upto: int | None
    partial: bool
    is_dm: bool
    lists: tuple[str, ...]
    #: Whether the DM flag changed since the room was sent.
    dm_changed: bool = False
    #: For a room left or banned from: whether the user had joined it.
    joined_before: bool = True
    #: Membership events the client holds of the room from lazy loading on
    #: this connection, not sent again unless the timeline has a gap.
    held_members: frozenset[str] = frozenset()
    #: Whether the timeline_limit grew since the room was sent: its latest
    #: events come again, older ones with them, and only the state changed.
    expanded: bool = False


def _room_event(event: StoredEvent, unsigned: dict[str, Any] | None = None) -> dict[str, Any]:
    formatted = client_event(event, unsigned=unsigned)
    # Events under a room's entry do not repeat its ID, as in /sync.
    formatted.pop("room_id", None)
    return formatted


async def build_room(
    store: SyncStore,
    deltas: RoomStateDeltas,
    requester: Requester,
    room: RoomToSend,
    *,
    now: int,
    since: int | None,
    ignored: frozenset[str],
) -> dict[str, Any] | None:
    """The room's entry; None when it has nothing to send."""
    user_id = requester.user_id
    answer: dict[str, Any] = {"membership": room.membership, "bump_stamp": room.bump_stamp}
    if room.lists:
        answer["lists"] = list(room.lists)
    if room.sent_upto is None:
        answer["initial"] = True
        if room.is_dm:
            answer["is_dm"] = True
    elif room.dm_changed:
        answer["is_dm"] = room.is_dm
    if room.membership in ("invite", "knock"):
        stripped = await stripped_room_state(store, room.room_id, room.membership_event_id, ignored)
        if stripped is None:
            return None
        # Knocks too, as Synapse and clients have it (the MSC's later name
        # for both is stripped_state).
        answer["invite_state"] = stripped
        return answer
    if room.membership in ("leave", "ban") and not room.joined_before:
        # An invite declined or a knock withdrawn (or refused): what the
        # user saw of the room then is all they may see of it now.
        stripped = await stripped_room_state(store, room.room_id, room.membership_event_id)
        answer["invite_state"] = stripped or []
        return answer
    joined = room.membership == "join"
    upto = now if joined else room.membership_at
    after = 0 if room.sent_upto is None else room.sent_upto
    timeline, limited, memberships, prev = await _timeline(
        store, user_id, room, 0 if room.expanded else after, upto, ignored
    )
    state, gone, changed = await _required_state(
        store, deltas, user_id, room, after, upto, timeline, limited=limited
    )
    renamed = bool(changed & {_NAME, _AVATAR})
    if room.sent_upto is not None and not (timeline or state or gone or renamed):
        return answer if room.dm_changed else None
    transactions = await transaction_ids(store, requester, timeline)
    replaced = await replaced_unsigned(store, timeline)
    answer["timeline"] = [
        _room_event(
            event,
            unsigned=with_replaced(
                replaced,
                event.event_id,
                reader_unsigned(transactions.get(event.event_id), memberships.get(event.event_id)),
            ),
        )
        for event in timeline
    ]
    if room.sent_upto is not None and any(
        event.stream_ordering <= room.sent_upto for event in timeline
    ):
        # Events the client may hold already, sent again for the longer
        # timeline it now asks for: the MSC's flag says so.
        answer["expanded_timeline"] = True
    answer["limited"] = limited
    answer["prev_batch"] = format_pagination_token(prev)
    answer["num_live"] = (
        0 if since is None else sum(1 for event in timeline if event.stream_ordering > since)
    )
    answer["required_state"] = [
        *(_room_event(event) for event in state),
        *({"type": kind, "state_key": key} for kind, key in gone),
    ]
    if room.sent_upto is None or renamed:
        await _add_name_and_avatar(store, room.room_id, answer, initial=room.sent_upto is None)
    if not room.partial:
        joined_count, invited_count, heroes = await store.room_summary(room.room_id, user_id)
        answer["joined_count"] = joined_count
        answer["invited_count"] = invited_count
        if heroes and room.sent_upto is None:
            answer["heroes"] = await _heroes(store, room.room_id, heroes)
    return answer


async def _timeline(
    store: SyncStore,
    user_id: str,
    room: RoomToSend,
    after: int,
    upto: int,
    ignored: frozenset[str],
) -> tuple[list[StoredEvent], bool, dict[str, str], int]:
    """The events to send, whether there are older ones left out, the
    user's membership at each (``unsigned.membership``), and the position
    to page back from (``prev_batch``)."""
    limit = room.config.timeline_limit
    if limit == 0 or upto <= after:
        return [], False, {}, upto
    joined = room.membership == "join"
    page = await visible_page(
        store,
        room.room_id,
        HistoryReader(
            user_id,
            joined,
            room.membership_at if joined else room.membership_at + 1,
            ignored,
        ),
        after=after,
        upto=upto,
        limit=limit,
        backwards=True,
    )
    timeline, limited = page.events[::-1], page.more
    if after == 0 and timeline and not limited:
        # History here may start after the room did (joined through
        # another server): only a timeline reaching the create event is all.
        limited = timeline[0].type != "m.room.create"
    return timeline, limited, page.memberships, page.edge


async def _required_state(
    store: SyncStore,
    deltas: RoomStateDeltas,
    user_id: str,
    room: RoomToSend,
    after: int,
    upto: int,
    timeline: Sequence[StoredEvent],
    *,
    limited: bool,
) -> tuple[list[StoredEvent], list[StateKey], set[StateKey]]:
    """The state entries to send, those gone, and every key that changed
    (the last two for a room sent before)."""
    config = room.config
    gone: list[StateKey] = []
    changed: set[StateKey] = set()
    if room.sent_upto is None:
        keys = config.exact_keys(user_id)
        state = await store.state_at(room.room_id, upto, keys)
        wanted = {
            key: event_id
            for key, event_id in state.items()
            if config.matches(key[0], key[1], user_id)
        }
    else:
        delta = await deltas.state_delta(room.room_id, room.sent_upto, upto)
        changed.update(delta)
        wanted = {}
        for key, event_id in delta.items():
            if not config.matches(key[0], key[1], user_id):
                continue
            if event_id is None:
                gone.append(key)
            else:
                wanted[key] = event_id
    if config.lazy_members and timeline:
        # A client told of a gap (limited) drops the members it holds.
        held = room.held_members if room.sent_upto is not None and not limited else frozenset()
        for key, event_id in (await _senders(store, room, upto, timeline)).items():
            if event_id not in held:
                wanted.setdefault(key, event_id)
    # Entries whose events are in the timeline too are sent all the same:
    # required_state is the room's state, whole, by itself.
    stored = await store.get_events(list(wanted.values()))
    events = sorted(stored.values(), key=lambda event: event.stream_ordering)
    return events, gone, changed


async def _senders(
    store: SyncStore, room: RoomToSend, upto: int, timeline: Sequence[StoredEvent]
) -> dict[StateKey, str]:
    """The timeline senders' memberships: as the room's state holds them,
    or, in a room whose state is partial here, as the events cite them."""
    senders = {event.sender for event in timeline}
    keys = [(_MEMBER, sender) for sender in senders]
    found = dict(await store.state_at(room.room_id, upto, keys))
    if room.partial and len(found) < len(senders):
        cited = await senders_memberships(store, timeline)
        for sender, event_id in cited.items():
            found.setdefault((_MEMBER, sender), event_id)
    return found


async def _add_name_and_avatar(
    store: SyncStore, room_id: str, answer: dict[str, Any], *, initial: bool
) -> None:
    current = {
        (event.type, event.state_key): event
        for event in await store.current_state_for_keys(room_id, [_NAME, _AVATAR])
    }
    for key, field, attribute in ((_NAME, "name", "name"), (_AVATAR, "avatar", "url")):
        event = current.get(key)
        value = None if event is None else event_content(event).get(attribute)
        if isinstance(value, str) and value:
            answer[field] = value
        elif not initial:
            answer[field] = None


async def _heroes(
    store: SyncStore, room_id: str, user_ids: Collection[str]
) -> list[dict[str, Any]]:
    members = {
        event.state_key: event
        for event in await store.current_state_for_keys(
            room_id, [(_MEMBER, user_id) for user_id in user_ids]
        )
    }
    heroes = []
    for user_id in user_ids:
        hero: dict[str, Any] = {"user_id": user_id}
        event = members.get(user_id)
        if event is not None:
            content = event_content(event)
            for field in ("displayname", "avatar_url"):
                value = content.get(field)
                if isinstance(value, str):
                    hero[field] = value
        heroes.append(hero)
    return heroes
