"""Simplified sliding sync (MSC4186): the rooms a client's lists and
subscriptions choose, sent once and then only what changed.

Connections
-----------

A connection is ``(user, device, conn_id)``. Each response that sends
something is a new ``pos``, stored with the stream token it covered and,
per room it sent, the events position the room was sent up to and the
config it was sent with (:mod:`ranvier.storage.sliding_sync`). A request
with ``pos`` reads that state back, so the connection goes on after a
restart and through any process sharing the database (a client_reader
worker writes through the main process). A ``pos`` that is not the
connection's, or older than :data:`POS_LIFETIME_MS`, is refused with 400
``M_UNKNOWN_POS`` and the client starts again. A response with nothing to
send hands back the ``pos`` it was given: nothing changed to remember.

Choosing rooms
--------------

Every room the user has a membership in is a candidate, read in one
snapshot with what lists sort and filter by
(:mod:`ranvier.storage.sliding_sync_reads`): joined, invited and knocking
rooms; rooms the user was kicked or banned from; rooms they left
themselves only when the connection sent them before (the client knows it
left). Invites from ignored users are left out. Each list filters them
(``is_dm`` by ``m.direct`` or the invite's ``is_direct``, ``is_invite``,
``is_encrypted``, ``room_types``, ``not_room_types``, ``spaces``, ``tags``,
``not_tags``), sorts them by ``bump_stamp`` (the stream ordering of the
newest event of a bump type, or of the membership for a room not joined;
newest first), counts them, and takes its ``ranges``. Subscriptions add rooms by ID when the
user has a membership in them. A room chosen several times gets the
configs combined (:mod:`ranvier.core.sliding_sync_config`).

A chosen room is sent ``initial`` when the connection never sent it,
sent it under a ``required_state`` that did not cover the one it is chosen
with now (a smaller one needs nothing sent again), or the user's
membership changed kind since. A room whose ``timeline_limit`` alone grew
is sent at once with the longer timeline and ``expanded_timeline`` (the
MSC's expansion), its state only what changed; the connection then holds
the longer limit, and keeps it through a smaller one whose answers had no
gap. Otherwise a room is sent only when events arrived after the position
it was sent up to (:mod:`ranvier.core.sliding_sync_rooms`). A room that leaves the ranges
keeps its position, and coming back sends what it missed.

Partial state (MSC3706, MSC3902): a room whose state is partial here is
sent to a config that does not ask for every membership (``$LAZY`` does
not), and held back from one that does until its state is complete, as
``/sync`` holds it back from clients that do not lazy-load members.

Long-polling
------------

With ``pos`` and ``timeout``, a request with nothing to send waits on the
:class:`~ranvier.core.notifier.StreamNotifier`, as ``/sync`` does, until a
change in one of the user's rooms or about the user, then looks again,
until the timeout ends on Trio's clock; then it answers empty.

Cost
----

A request reads a handful of index lookups per room of the user (no
event or state of rooms outside the ranges), then builds only the rooms
in range with something to send; see docs/decisions.md for the figure.
The facts of each user's last request are kept in memory (a bounded
number of users), so the next request, or the next look of a long-poll,
reads again only the rooms with events since.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import trio

from ranvier.core.account_data import AccountData
from ranvier.core.accounts import Requester
from ranvier.core.aggregations import Aggregations, RoomEvents
from ranvier.core.invite_permission import InvitePermission
from ranvier.core.lazy_members import SentMembers
from ranvier.core.notification_counts import NotificationCounts
from ranvier.core.notifier import StreamNotifier, StreamPosition
from ranvier.core.pagination import format_sync_token, parse_sync_token
from ranvier.core.sliding_sync_config import ListConfig, ListFilters, RoomConfig, SlidingSyncRequest
from ranvier.core.sliding_sync_extensions import (
    ExtensionSources,
    RoomsChosen,
    extensions_response,
)
from ranvier.core.sliding_sync_rooms import RoomStateDeltas, RoomToSend, build_room
from ranvier.core.sync import (
    MAX_TIMEOUT_MS,
    EndToEndSource,
    EphemeralSource,
    PresenceSource,
    SyncStore,
)
from ranvier.errors import MatrixError
from ranvier.protocol.numbers import is_decimal_number
from ranvier.storage.sliding_sync import ConnectionState, RoomSent
from ranvier.storage.sliding_sync_reads import RoomFacts, RoomList

__all__ = ["POS_LIFETIME_MS", "SlidingSyncHandler", "SlidingSyncStore"]

#: How long a ``pos`` stays good; a connection left longer starts again.
POS_LIFETIME_MS: Final = 7 * 24 * 60 * 60 * 1000
#: Room facts kept in memory between requests, all users together (a few
#: hundred bytes each); the users heard from longest ago give theirs up.
_FACTS_KEPT: Final = 50_000


class SlidingSyncStore(RoomStateDeltas, Protocol):
    """Connections and the room list; see :mod:`ranvier.storage.sliding_sync`."""

    async def room_list(
        self,
        user_id: str,
        un_partial_after: int,
        *,
        detailed: bool = True,
        known: Mapping[str, RoomFacts] | None = None,
        known_at: int = 0,
    ) -> RoomList: ...

    async def space_children(self, space_ids: Collection[str]) -> frozenset[str]: ...

    async def connection_at(
        self, user_id: str, device_id: str, conn_id: str, pos: int
    ) -> ConnectionState | None: ...

    async def open_connection(
        self,
        user_id: str,
        device_id: str,
        conn_id: str,
        *,
        nonce: str,
        token: str,
        now_ms: int,
        rooms: tuple[RoomSent, ...],
    ) -> int: ...

    async def advance_connection(
        self,
        conn_key: int,
        from_pos: int,
        *,
        nonce: str,
        token: str,
        now_ms: int,
        rooms: tuple[RoomSent, ...],
    ) -> int | None: ...


def _unknown_pos(pos: str) -> MatrixError:
    return MatrixError(
        f"unknown or expired pos {pos[:40]!r}: start the connection again without one",
        errcode="M_UNKNOWN_POS",
        http_status=400,
    )


@dataclass(frozen=True, slots=True)
class _Pass:
    """One look at storage: the response and what it needs remembered."""

    response: dict[str, Any]
    now: StreamPosition
    rooms: frozenset[str]
    sent: tuple[RoomSent, ...]
    news: bool
    #: Per room, the membership events the client holds after this answer.
    members: dict[str, frozenset[str]]


def _passes(
    filters: ListFilters,
    facts: RoomFacts,
    is_dm: bool,
    children: frozenset[str],
    tags: frozenset[str],
) -> bool:
    if filters.is_dm is not None and filters.is_dm != is_dm:
        return False
    if filters.is_invite is not None and filters.is_invite != (facts.membership == "invite"):
        return False
    if filters.is_encrypted is not None and filters.is_encrypted != facts.encrypted:
        return False
    if filters.room_types is not None and facts.room_type not in filters.room_types:
        return False
    if facts.room_type in filters.not_room_types:
        return False
    if tags & filters.not_tags:
        return False
    if filters.tags is not None and not tags & filters.tags:
        return False
    return filters.spaces is None or facts.room_id in children


def _in_ranges(ranges: Iterable[tuple[int, int]] | None, count: int) -> Iterable[int]:
    if ranges is None:
        return range(count)
    chosen: set[int] = set()
    for start, end in ranges:
        chosen.update(range(start, min(end, count - 1) + 1))
    return sorted(chosen)


class SlidingSyncHandler:
    """Answers sliding sync requests from storage and the notifier."""

    def __init__(
        self,
        store: SlidingSyncStore,
        events: SyncStore,
        notifier: StreamNotifier,
        *,
        account_data: AccountData | None = None,
        receipts: EphemeralSource | None = None,
        typing: EphemeralSource | None = None,
        presence: PresenceSource | None = None,
        end_to_end: EndToEndSource | None = None,
        notifications: NotificationCounts | None = None,
        aggregations: Aggregations | None = None,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        invite_permission: InvitePermission | None = None,
    ) -> None:
        self._store = store
        # Invites of a user who blocks them are not listed (spec v1.18).
        self._invite_permission = invite_permission
        self._events = events
        self._notifier = notifier
        self._sources = ExtensionSources(account_data, receipts, typing, end_to_end, presence)
        self._presence = presence
        self._notifications = notifications
        self._aggregations = aggregations
        self._wall_clock_ms = wall_clock_ms
        # Per user, the room facts of their last request and the events
        # position they were read at: the next reads only rooms that moved.
        self._facts: OrderedDict[str, tuple[int, dict[str, RoomFacts]]] = OrderedDict()
        self._facts_held = 0
        # What lazy loading sent, by connection and position (in memory: a
        # position not known here sends the members again, never fewer).
        self._lazy_sent = SentMembers()
        #: Requests waiting now for something new (a metric).
        self.long_polls = 0

    async def sync(
        self,
        requester: Requester,
        request: SlidingSyncRequest,
        *,
        pos: str | None = None,
        timeout_ms: int = 0,
        set_presence: str = "online",
    ) -> dict[str, Any]:
        """The response to ``request`` on the connection at ``pos`` (None:
        a new connection)."""
        state = None if pos is None else await self._connection(requester, request, pos)
        since = None if state is None else parse_sync_token(state.token)
        waited_ms = min(max(timeout_ms, 0), MAX_TIMEOUT_MS)
        if self._presence is not None:
            await self._presence.on_sync(requester.user_id, set_presence, waited_ms)
        held = {} if state is None else self._members_held(requester, request, state.pos)
        deadline = trio.current_time() + waited_ms / 1000
        while True:
            done = await self._once(requester, request, state, since, held)
            if state is None or done.news:
                break
            self.long_polls += 1
            try:
                with trio.move_on_at(deadline) as waited:
                    await self._notifier.wait_beyond(
                        done.now, rooms=done.rooms, user_id=requester.user_id
                    )
            finally:
                self.long_polls -= 1
            if waited.cancelled_caught:
                break
        response = done.response
        if state is not None and not done.news:
            response["pos"] = str(state.pos)
            return response
        made = await self._remember(requester, request, state, done)
        self._lazy_sent.record(
            requester.user_id,
            requester.device_id,
            f"{made} {request.conn_id}",
            (f"{room_id}\t{event_id}" for room_id, ids in done.members.items() for event_id in ids),
        )
        response["pos"] = str(made)
        return response

    def _members_held(
        self, requester: Requester, request: SlidingSyncRequest, pos: int
    ) -> dict[str, frozenset[str]]:
        """Per room, the membership events the client at ``pos`` holds."""
        entries = self._lazy_sent.held(
            requester.user_id, requester.device_id, f"{pos} {request.conn_id}"
        )
        by_room: dict[str, set[str]] = {}
        for entry in entries:
            room_id, _, event_id = entry.partition("\t")
            by_room.setdefault(room_id, set()).add(event_id)
        return {room_id: frozenset(ids) for room_id, ids in by_room.items()}

    async def _connection(
        self, requester: Requester, request: SlidingSyncRequest, pos: str
    ) -> ConnectionState:
        if not is_decimal_number(pos) or len(pos) > 18:
            raise _unknown_pos(pos)
        state = await self._store.connection_at(
            requester.user_id, requester.device_id, request.conn_id, int(pos)
        )
        if state is None or self._wall_clock_ms() - state.made_ms > POS_LIFETIME_MS:
            raise _unknown_pos(pos)
        return state

    async def _remember(
        self,
        requester: Requester,
        request: SlidingSyncRequest,
        state: ConnectionState | None,
        done: _Pass,
    ) -> int:
        nonce = secrets.token_urlsafe(16)
        token = format_sync_token(done.now)
        now_ms = self._wall_clock_ms()
        if state is None:
            return await self._store.open_connection(
                requester.user_id,
                requester.device_id,
                request.conn_id,
                nonce=nonce,
                token=token,
                now_ms=now_ms,
                rooms=done.sent,
            )
        made = await self._store.advance_connection(
            state.conn_key, state.pos, nonce=nonce, token=token, now_ms=now_ms, rooms=done.sent
        )
        if made is None:
            raise _unknown_pos(str(state.pos))
        return made

    async def _positions(self) -> StreamPosition:
        """The positions of every stream but the events' (read first: a
        change after this is the next request's)."""
        sources = self._sources
        account_data = 0 if sources.account_data is None else await sources.account_data.position()
        receipts = 0 if sources.receipts is None else await sources.receipts.position()
        typing = 0 if sources.typing is None else await sources.typing.position()
        presence = 0 if self._presence is None else await self._presence.position()
        to_device, device_lists = (
            (0, 0) if sources.end_to_end is None else await sources.end_to_end.sync_positions()
        )
        return StreamPosition(
            0, 0, account_data, receipts, typing, presence, to_device, device_lists
        )

    async def _once(
        self,
        requester: Requester,
        request: SlidingSyncRequest,
        state: ConnectionState | None,
        since: StreamPosition | None,
        members_held: dict[str, frozenset[str]],
    ) -> _Pass:
        user_id = requester.user_id
        streams = await self._positions()
        listed = await self._room_list(
            user_id,
            0 if since is None else since.un_partial,
            # Extensions alone need the rooms' IDs, not what lists sort by.
            detailed=bool(request.lists or request.subscriptions),
        )
        now = streams._replace(events=listed.events, un_partial=listed.un_partial)
        if since is not None:
            # Never behind the token given, in any stream.
            now = StreamPosition(*(max(a, b) for a, b in zip(now, since, strict=True)))
        sent_before = {} if state is None else state.rooms
        # Read only when there is an invite to hide, as /sync does: most
        # requests have none, and a long-poll answers many.
        blocked = (
            self._invite_permission is not None
            and any(facts.membership == "invite" for facts in listed.rooms)
            and await self._invite_permission.blocks_invites(user_id)
        )
        candidates = [
            facts
            for facts in listed.rooms
            if self._candidate(facts, user_id, listed.ignored, sent_before, blocked=blocked)
        ]
        by_id = {facts.room_id: facts for facts in listed.rooms}
        ordered = sorted(candidates, key=lambda facts: (-_bump_stamp(facts), facts.room_id))
        configs: dict[str, RoomConfig] = {}
        room_lists: dict[str, list[str]] = {}
        by_list: dict[str, list[str]] = {}
        lists_answer: dict[str, Any] = {}
        for wanted in request.lists:
            matching = await self._filtered(wanted, ordered, listed)
            lists_answer[wanted.name] = {"count": len(matching)}
            chosen = [matching[index].room_id for index in _in_ranges(wanted.ranges, len(matching))]
            by_list[wanted.name] = chosen
            for room_id in chosen:
                configs[room_id] = _combined(configs.get(room_id), wanted.room)
                room_lists.setdefault(room_id, []).append(wanted.name)
        subscribed = []
        for room_id, config in (request.subscriptions or {}).items():
            facts = by_id.get(room_id)
            if facts is None or not self._candidate(
                facts, user_id, listed.ignored, sent_before, subscribed=True, blocked=blocked
            ):
                continue
            subscribed.append(room_id)
            configs[room_id] = _combined(configs.get(room_id), config)
        rooms_answer: dict[str, Any] = {}
        sent: list[RoomSent] = []
        initial: list[str] = []
        for room_id, config in configs.items():
            facts = by_id[room_id]
            if facts.partial and facts.membership == "join" and config.all_members:
                continue
            # The DM flag and membership are kept with the config: a room
            # whose user's membership changed kind, or whose required_state
            # grew, is sent whole (a profile change or a smaller config is
            # not); one whose timeline_limit alone grew is sent at once with
            # the longer timeline (expanded); one whose DM flag changed says so.
            is_dm = room_id in listed.direct_rooms or facts.direct_invite
            before = sent_before.get(room_id)
            held = None if before is None else _held(before[1])
            dm_changed = expanded = False
            sent_upto: int | None = None
            if before is not None and held is not None and held[1] == facts.membership:
                growth = _growth(held[2], config, _has_timeline(facts))
                if growth != "state":
                    sent_upto = before[0]
                    dm_changed = held[0] != is_dm
                    expanded = growth == "timeline"
                    newest = facts.latest if facts.membership == "join" else facts.membership_at
                    if newest <= before[0] and not (dm_changed or expanded):
                        continue
            to_send = RoomToSend(
                room_id=room_id,
                membership=facts.membership,
                membership_at=facts.membership_at,
                membership_event_id=facts.membership_event_id,
                config=config,
                bump_stamp=_bump_stamp(facts),
                sent_upto=sent_upto,
                partial=facts.partial,
                is_dm=is_dm,
                dm_changed=dm_changed,
                joined_before=facts.joined_before,
                held_members=members_held.get(room_id, frozenset()),
                lists=tuple(room_lists.get(room_id, ())),
                expanded=expanded,
            )
            answer = await build_room(
                self._events,
                self._store,
                requester,
                to_send,
                now=now.events,
                since=None if since is None else since.events,
                ignored=listed.ignored,
            )
            if answer is None:
                continue
            rooms_answer[room_id] = answer
            kept = _config_kept(held, config, answer, fresh=sent_upto is None or expanded)
            sent.append(
                (room_id, now.events, f"{'dm' if is_dm else '-'} {facts.membership} {kept}")
            )
            if sent_upto is None:
                initial.append(room_id)
        await self._add_counts(user_id, rooms_answer, by_id, now.events)
        await self._add_bundles(user_id, rooms_answer, by_id, now.events)
        joined = [facts.room_id for facts in listed.rooms if facts.membership == "join"]
        extensions, extension_news = await extensions_response(
            self._sources,
            request.extensions or {},
            user_id=user_id,
            device_id=requester.device_id,
            since=since,
            now=now,
            chosen=RoomsChosen(by_list, subscribed, initial, joined),
        )
        response = {"lists": lists_answer, "rooms": rooms_answer, "extensions": extensions}
        return _Pass(
            response,
            now,
            frozenset(by_id),
            tuple(sent),
            bool(rooms_answer) or extension_news,
            _members_after(members_held, rooms_answer),
        )

    async def _room_list(self, user_id: str, un_partial_after: int, *, detailed: bool) -> RoomList:
        """The user's rooms, going on from the facts of their last request."""
        if not detailed:
            return await self._store.room_list(user_id, un_partial_after, detailed=False)
        kept = self._facts.get(user_id)
        listed = await self._store.room_list(
            user_id,
            un_partial_after,
            known=None if kept is None else kept[1],
            known_at=0 if kept is None else kept[0],
        )
        # Read again: another request of the user's may have replaced it
        # while this one read.
        replaced = self._facts.get(user_id)
        if replaced is not None:
            self._facts_held -= len(replaced[1])
        self._facts[user_id] = (listed.events, {facts.room_id: facts for facts in listed.rooms})
        self._facts.move_to_end(user_id)
        self._facts_held += len(listed.rooms)
        while self._facts_held > _FACTS_KEPT and len(self._facts) > 1:
            _, (_, dropped) = self._facts.popitem(last=False)
            self._facts_held -= len(dropped)
        return listed

    @staticmethod
    def _candidate(
        facts: RoomFacts,
        user_id: str,
        ignored: frozenset[str],
        sent_before: dict[str, tuple[int, str]],
        *,
        subscribed: bool = False,
        blocked: bool = False,
    ) -> bool:
        """Whether the room may be listed (or, ``subscribed``, sent by ID);
        ``blocked``: the user blocks invites."""
        if facts.membership == "invite":
            return not blocked and facts.membership_sender not in ignored
        if facts.membership == "ban" and not facts.joined_before:
            # Banned without having joined: nothing the client needs to hear.
            return False
        if facts.membership == "leave" and facts.membership_sender == user_id:
            # Left of the user's own will: the client knows, unless it holds
            # the room from this connection and must hear of the leave.
            return subscribed or facts.room_id in sent_before
        return facts.membership in ("join", "knock", "leave", "ban")

    async def _filtered(
        self, config: ListConfig, ordered: list[RoomFacts], listed: RoomList
    ) -> list[RoomFacts]:
        filters = config.filters
        children: frozenset[str] = frozenset()
        if filters.spaces is not None:
            joined = {facts.room_id for facts in listed.rooms if facts.membership == "join"}
            children = await self._store.space_children(
                [space for space in filters.spaces if space in joined]
            )
        return [
            facts
            for facts in ordered
            if _passes(
                filters,
                facts,
                facts.room_id in listed.direct_rooms or facts.direct_invite,
                children,
                listed.tags.get(facts.room_id, frozenset()),
            )
        ]

    async def _add_counts(
        self, user_id: str, rooms: dict[str, Any], by_id: dict[str, RoomFacts], upto: int
    ) -> None:
        """The notification counts of the joined rooms being sent."""
        if self._notifications is None:
            return
        joined = [room_id for room_id in rooms if by_id[room_id].membership == "join"]
        counts = await self._notifications.for_rooms(user_id, joined, upto)
        for room_id in joined:
            found = counts.get(room_id, {})
            rooms[room_id]["notification_count"] = found.get("notification_count", 0)
            rooms[room_id]["highlight_count"] = found.get("highlight_count", 0)

    async def _add_bundles(
        self, user_id: str, rooms: dict[str, Any], by_id: dict[str, RoomFacts], upto: int
    ) -> None:
        """The bundled aggregations of the timelines' events, as /sync adds
        them: up to now in a joined room, up to the leave in one left."""
        if self._aggregations is None:
            return
        wanted: list[RoomEvents] = []
        for room_id, room in rooms.items():
            events = room.get("timeline")
            if not events:
                continue
            facts = by_id[room_id]
            joined = facts.membership == "join"
            wanted.append((room_id, events, upto if joined else facts.membership_at))
        await self._aggregations.add_bundles_in_rooms(user_id, wanted)


def _members_after(
    held: dict[str, frozenset[str]], rooms: dict[str, Any]
) -> dict[str, frozenset[str]]:
    """The membership events the client holds once it has ``rooms``: a room
    sent whole or with a gap (``limited``) holds what came with it, others
    add it to what they held."""
    after = dict(held)
    for room_id, room in rooms.items():
        sent = frozenset(
            event["event_id"]
            for event in (*room.get("required_state", ()), *room.get("timeline", ()))
            if event.get("type") == "m.room.member" and "event_id" in event
        )
        if room.get("initial") or room.get("limited"):
            after[room_id] = sent
        else:
            after[room_id] = held.get(room_id, frozenset()) | sent
    return after


def _held(key: str) -> tuple[bool, str, RoomConfig] | None:
    """The DM flag, membership and config a room was sent with."""
    dm, membership, rest = [*key.split(" ", 2), "", ""][:3]
    config = RoomConfig.from_key(rest)
    return None if config is None else (dm == "dm", membership, config)


def _has_timeline(facts: RoomFacts) -> bool:
    """Whether the room is sent with a timeline: joined, or left after
    joining (an invite, a knock or a refusal has stripped state only)."""
    return facts.membership == "join" or (
        facts.membership in ("leave", "ban") and facts.joined_before
    )


def _growth(held: RoomConfig, wanted: RoomConfig, has_timeline: bool) -> str:
    """How ``wanted`` asks for more than the room was sent with: ``state``
    (required_state grew: the room comes whole), ``timeline`` (only the
    timeline_limit grew: the longer timeline comes), or ``""`` (nothing)."""
    if not held.covers(replace(wanted, timeline_limit=held.timeline_limit)):
        return "state"
    if has_timeline and wanted.timeline_limit > held.timeline_limit:
        return "timeline"
    return ""


def _config_kept(
    held: tuple[bool, str, RoomConfig] | None,
    config: RoomConfig,
    answer: Mapping[str, Any],
    *,
    fresh: bool,
) -> str:
    """The config key stored for a room just sent. A smaller timeline_limit
    whose answer had no gap leaves the client the events of the larger one,
    so the larger is kept: growing back to it sends nothing again. A gap
    (or no timeline at all) keeps the smaller, and growing again sends the
    timeline again."""
    if fresh or held is None or not answer.get("timeline") or answer.get("limited"):
        return config.key()
    limit = max(config.timeline_limit, held[2].timeline_limit)
    return replace(config, timeline_limit=limit).key()


def _combined(held: RoomConfig | None, more: RoomConfig) -> RoomConfig:
    return more if held is None else held.combined(more)


def _bump_stamp(facts: RoomFacts) -> int:
    if facts.membership == "join" and facts.bump:
        return facts.bump
    return facts.membership_at
