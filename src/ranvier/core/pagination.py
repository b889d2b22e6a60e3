"""Stream tokens, and ``GET /rooms/{roomId}/messages``: a room's history a page at a time.

Tokens
------

Clients treat tokens as opaque strings; here they are positions in the
events stream. A sync token (``next_batch``) is
``s<events>_<un-partial>_<account data>_<receipts>_<typing>``, every
stream a sync follows (see :mod:`ranvier.core.notifier`). A
pagination token (``prev_batch``, ``start``, ``end``) is ``t<position>``
and stands between events: everything at or below the position is before
it, everything above after it. ``/messages`` takes either kind as ``from``
and ``to``. Anything else is refused with ``M_INVALID_PARAM``.

History is paged in stream order, the order events were written here,
which for a room's live events is the order they happened. Events
backfilled from another server (:mod:`ranvier.core.backfill`) have
positions below every other (negative ones, ``t-<position>``), so they
come after the events held before them when paging back. Paging back that
reaches the start of what is held, without the room's create event,
backfills and goes on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.client_events import client_event, event_content
from ranvier.core.client_txns import TxnOwner
from ranvier.core.erasure import ErasedForms, erasure_applied
from ranvier.core.filters import RoomEventFilter
from ranvier.core.notifier import StreamPosition
from ranvier.core.replaced_state import ReplacedStateSource, replaced_unsigned, with_replaced
from ranvier.errors import MatrixError
from ranvier.storage.records import StateKey, StoredEvent

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "VISIBILITY_LOADS",
    "HistoryFiller",
    "HistoryReader",
    "MessagesStore",
    "RoomMessages",
    "TransactionScopes",
    "VisiblePage",
    "device_transaction_ids",
    "event_allowed",
    "format_pagination_token",
    "format_sync_token",
    "history_allows",
    "parse_pagination_token",
    "parse_sync_token",
    "readable_upto",
    "reader_unsigned",
    "senders_memberships",
    "sent_client_events",
    "transaction_ids",
    "visible_page",
    "visible_to",
    "visible_with_memberships",
]

DEFAULT_LIMIT: Final = 10
#: The most events one page holds, whatever the client asks.
MAX_LIMIT: Final = 1000

# Events, un-partial-state, account data, receipts, typing, presence,
# to-device and device-list positions; tokens from before the account data
# stream have two parts, from before receipts and typing three, from before
# presence five, from before to-device and device lists six.
_SYNC_TOKEN: Final = re.compile(
    r"s([0-9]{1,18})_([0-9]{1,18})"
    r"(?:_([0-9]{1,18})(?:_([0-9]{1,18})_([0-9]{1,18})"
    r"(?:_([0-9]{1,18})(?:_([0-9]{1,18})_([0-9]{1,18}))?)?)?)?"
)
_PAGINATION_TOKEN: Final = re.compile(r"t(-?[0-9]{1,18})")
#: Below every position, backfilled events' included.
_BOTTOM: Final = -(2**62)
#: Backfill requests one page may make before answering with what it has.
_BACKFILL_ROUNDS: Final = 3
#: Reads a page of history may make after its first, to take the place of
#: events the history visibility (or an ignored sender) hid from it.
VISIBILITY_LOADS: Final = 3
#: The fewest events such a further read asks for.
_MIN_EXTRA_LOAD: Final = 50


def _invalid_token(token: str) -> MatrixError:
    return MatrixError(
        f"{token[:40]!r} is not a token this server handed out",
        errcode="M_INVALID_PARAM",
        http_status=400,
    )


def format_sync_token(position: StreamPosition) -> str:
    return (
        f"s{position.events}_{position.un_partial}_{position.account_data}"
        f"_{position.receipts}_{position.typing}_{position.presence}"
        f"_{position.to_device}_{position.device_lists}"
    )


def parse_sync_token(token: str) -> StreamPosition:
    """The position of a ``since`` token; ``M_INVALID_PARAM`` if it is not one."""
    match = _SYNC_TOKEN.fullmatch(token)
    if match is None:
        raise _invalid_token(token)
    return StreamPosition(
        int(match[1]),
        int(match[2]),
        int(match[3] or 0),
        int(match[4] or 0),
        int(match[5] or 0),
        int(match[6] or 0),
        int(match[7] or 0),
        int(match[8] or 0),
    )


def format_pagination_token(position: int) -> str:
    return f"t{position}"


def parse_pagination_token(token: str) -> int:
    """The events position of a pagination or sync token."""
    match = _PAGINATION_TOKEN.fullmatch(token)
    if match is not None:
        return int(match[1])
    return parse_sync_token(token).events


class HistoryFiller(Protocol):
    """Fetches a room's history from before what is held
    (:class:`ranvier.core.backfill.Backfiller`).
    """

    async def backfill(self, room_id: str, limit: int) -> bool:
        """Fetch about ``limit`` older events; whether any were added."""
        ...


class MessagesStore(ReplacedStateSource, ErasedForms, Protocol):
    """The reads ``/messages`` (and the member lists of ``/sync``) make."""

    async def positions(self) -> tuple[int, int]: ...

    async def current_membership(self, room_id: str, user_id: str) -> tuple[str, int] | None: ...

    async def room_events(
        self,
        room_id: str,
        *,
        after: int,
        upto: int,
        limit: int,
        backwards: bool,
        accept: Callable[[str, str], bool] | None = None,
    ) -> tuple[list[StoredEvent], bool]: ...

    async def state_before(
        self, event_id: str, keys: Collection[StateKey] | None = None
    ) -> dict[StateKey, str]: ...

    async def auth_memberships(
        self, event_ids: Collection[str], users: Collection[str]
    ) -> dict[str, str]: ...

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]: ...

    async def current_state_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> list[StoredEvent]: ...

    async def ignored_users(self, user_id: str) -> frozenset[str]: ...

    async def has_forgotten(self, user_id: str, room_id: str) -> bool:
        """Whether the user forgot the room since last in it (``/forget``)."""
        ...

    async def visibility_at(
        self, user_id: str, event_ids: Collection[str]
    ) -> dict[str, tuple[str | None, str | None]]:
        """Per event, the history visibility and the user's membership in
        the state before it.
        """
        ...

    async def transaction_ids(
        self, user_id: str, device_id: str, token_hash: bytes, event_ids: Collection[str]
    ) -> dict[str, str]:
        """The transaction scopes the device (or device-less token) sent
        those of ``event_ids`` under (see :mod:`ranvier.core.client_txns`).
        """
        ...


def _transaction_id(scope: str, event: StoredEvent) -> str | None:
    """The client's transaction ID in a transaction's scope: the request
    path, ``/rooms/{roomId}/send/{eventType}/{txnId}`` or
    ``/rooms/{roomId}/redact/{eventId}/{txnId}``, whose other segments may
    hold slashes once decoded, so the known ones are taken off the front.
    """
    send = f"/rooms/{event.room_id}/send/{event.type}/"
    if scope.startswith(send):
        return scope[len(send) :]
    redact = f"/rooms/{event.room_id}/redact/"
    if event.type == "m.room.redaction" and scope.startswith(redact):
        _, slash, txn_id = scope[len(redact) :].partition("/")
        return txn_id if slash else None
    return None


async def visible_to(
    store: MessagesStore,
    user_id: str,
    events: Sequence[StoredEvent],
    *,
    joined_now: bool,
    checked_before: int,
    ignored: Collection[str] | None = None,
) -> list[StoredEvent]:
    """``events`` without those the room's history visibility hides from
    ``user_id``, by the spec's rules at each event: ``world_readable`` to
    anyone, ``shared`` to users joined now or at the event, ``invited`` to
    those invited or joined at it, ``joined`` to those joined at it; a
    user's own membership events are theirs to see. Events from
    ``checked_before`` on come after the user's current join and are
    visible without a look.

    Nor are the events of users ``user_id`` ignores served, state events
    apart (the spec's "Ignoring Users": the room must not look different
    for it). ``ignored`` is that list when the caller read it already, for
    many rooms at once; otherwise it is read here.
    """
    shown, _ = await visible_with_memberships(
        store,
        user_id,
        events,
        joined_now=joined_now,
        checked_before=checked_before,
        ignored=ignored,
    )
    return shown


async def visible_with_memberships(
    store: MessagesStore,
    user_id: str,
    events: Sequence[StoredEvent],
    *,
    joined_now: bool,
    checked_before: int,
    ignored: Collection[str] | None = None,
) -> tuple[list[StoredEvent], dict[str, str]]:
    """:func:`visible_to`, and the user's membership at each event shown,
    which clients read from ``unsigned.membership`` (spec v1.11) to tell
    events they could not have seen from ones they should be able to
    decrypt. It is the membership in the state before the event, changed
    by the event itself when that is the user's own membership, and
    ``leave`` where the user had none; the same state read as the
    visibility check makes. An event without state here (an outlier) has
    none.

    The events shown are as the user is served them: those of erased
    senders the user was not joined at come redacted
    (:func:`ranvier.core.erasure.erasure_applied`).
    """
    if events:
        if ignored is None:
            ignored = await store.ignored_users(user_id)
        if ignored:
            events = [e for e in events if e.state_key is not None or e.sender not in ignored]
    memberships: dict[str, str] = {}
    check = []
    for event in events:
        if event.type == "m.room.member" and event.state_key == user_id:
            own = event_content(event).get("membership")
            if isinstance(own, str):
                memberships[event.event_id] = own
        elif event.stream_ordering >= checked_before:
            # After the user's current join, and before any later change
            # of it (which would be their current membership instead).
            memberships[event.event_id] = "join"
        else:
            check.append(event)
    if not check:
        return await erasure_applied(store, events, memberships), memberships
    verdicts = await store.visibility_at(user_id, [event.event_id for event in check])
    hidden = set()
    for event in check:
        if event.event_id in verdicts:
            memberships[event.event_id] = verdicts[event.event_id][1] or "leave"
        visibility, then = verdicts.get(event.event_id, (None, None))
        if not event_allowed(event, visibility, then, joined_now=joined_now):
            hidden.add(event.event_id)
    shown = [event for event in events if event.event_id not in hidden]
    return await erasure_applied(store, shown, memberships), memberships


@dataclass(frozen=True, slots=True)
class HistoryReader:
    """Who reads a room's history, for :func:`visible_page`: the
    arguments of :func:`visible_with_memberships`."""

    user_id: str
    joined_now: bool
    checked_before: int
    #: The users ``user_id`` ignores; read once per page when not given.
    ignored: Collection[str] | None = None


@dataclass(frozen=True, slots=True)
class VisiblePage:
    """What :func:`visible_page` read and what of it is served."""

    #: The events served, as served (an erased sender's maybe redacted),
    #: in the order read: newest first when reading backwards.
    events: list[StoredEvent]
    #: The reader's membership at each event served.
    memberships: dict[str, str]
    #: Every event the reads cover, shown or not, as stored, in the order
    #: read (the events served among them).
    read: list[StoredEvent]
    #: The position between what the page covers and what it leaves:
    #: reading backwards, events at or below it are left; forwards, events
    #: above it. The page's token, ``prev_batch`` or ``end``.
    edge: int
    #: Whether events the reads take are left beyond ``edge``.
    more: bool


async def visible_page(
    store: MessagesStore,
    room_id: str,
    reader: HistoryReader | None,
    *,
    after: int,
    upto: int,
    limit: int,
    backwards: bool,
    accept: Callable[[str, str], bool] | None = None,
) -> VisiblePage:
    """Up to ``limit`` events of the room with ``after < position <= upto``
    that ``accept`` takes and ``reader`` may see (every event, for None),
    from the newest end when ``backwards``: the one page of history that
    ``/sync``, sliding sync, ``/messages``, ``/context`` and the room
    previews serve.

    Events hidden from the reader (by the history visibility, an ignored
    sender) do not use up the page: when the first read of ``limit``
    events shows fewer, the page reads on past them, as a client asking
    for ``limit`` events expects to get so many while the room has them.
    The work stays bounded: at most :data:`VISIBILITY_LOADS` reads after
    the first, each of at most :data:`MAX_LIMIT` events (so at most
    ``limit + VISIBILITY_LOADS * MAX_LIMIT`` events checked); a stretch
    of hidden history longer than that leaves the page short, with
    ``more`` set and its ``edge`` past what was read, so that paging on
    from it continues where the reads stopped and skips nothing. A page
    that filled stops right after its last event, so that paging on
    repeats nothing either. A ``limit`` of 0 reads nothing.
    """
    edge = upto if backwards else after
    if limit <= 0:
        return VisiblePage([], {}, [], edge, False)
    ignored: Collection[str] | None = None
    if reader is not None:
        ignored = reader.ignored
        if ignored is None:
            ignored = await store.ignored_users(reader.user_id)
    events: list[StoredEvent] = []
    memberships: dict[str, str] = {}
    read: list[StoredEvent] = []
    load = limit
    for _ in range(1 + VISIBILITY_LOADS):
        batch, more = await store.room_events(
            room_id, after=after, upto=upto, limit=load, backwards=backwards, accept=accept
        )
        shown: list[StoredEvent] = batch
        at: dict[str, str] = {}
        if reader is not None:
            shown, at = await visible_with_memberships(
                store,
                reader.user_id,
                batch,
                joined_now=reader.joined_now,
                checked_before=reader.checked_before,
                ignored=ignored,
            )
        wanted = limit - len(events)
        if len(shown) >= wanted:
            # Full: the page ends at its last event; what the batch read
            # past it is left for the next page.
            kept = shown[:wanted]
            last = kept[-1].event_id
            cut = next(i for i, event in enumerate(batch) if event.event_id == last) + 1
            events.extend(kept)
            memberships.update((e.event_id, at[e.event_id]) for e in kept if e.event_id in at)
            read.extend(batch[:cut])
            return VisiblePage(
                events,
                memberships,
                read,
                _edge(batch[cut - 1], backwards),
                more or cut < len(batch),
            )
        events.extend(shown)
        memberships.update((e.event_id, at[e.event_id]) for e in shown if e.event_id in at)
        read.extend(batch)
        if batch:
            edge = _edge(batch[-1], backwards)
            if backwards:
                upto = edge
            else:
                after = edge
        if not more:
            break
        missing = limit - len(events)
        load = min(MAX_LIMIT, max(_MIN_EXTRA_LOAD, 4 * missing))
    return VisiblePage(events, memberships, read, edge, more)


def _edge(event: StoredEvent, backwards: bool) -> int:
    """The position just past ``event`` in the direction of reading."""
    return event.stream_ordering - 1 if backwards else event.stream_ordering


HISTORY_VISIBILITY: Final = "m.room.history_visibility"
_VISIBILITIES: Final = frozenset({"world_readable", "shared", "invited", "joined"})


def event_allowed(
    event: StoredEvent, visibility: str | None, then: str | None, *, joined_now: bool
) -> bool:
    """Whether the history visibility at ``event`` (``visibility``, with
    the user's membership ``then`` in the state before it) lets a user see
    it. A change of the visibility is seen by whoever the visibility before
    it or the one it sets lets see it (the spec's rule for these events),
    so a reader learns when the history opened.
    """
    if history_allows(visibility, then, joined_now=joined_now):
        return True
    if event.type != HISTORY_VISIBILITY or event.state_key != "":
        return False
    after = event_content(event).get("history_visibility")
    return history_allows(after if isinstance(after, str) else None, then, joined_now=joined_now)


def history_allows(visibility: str | None, then: str | None, *, joined_now: bool) -> bool:
    """Whether a room's history visibility at an event lets a user see it:
    ``then`` is the user's membership in the state before the event,
    ``joined_now`` whether they are joined to the room now. A visibility
    unset or not understood counts as ``shared``, as the spec says.
    """
    if visibility not in _VISIBILITIES:
        visibility = "shared"
    return (
        visibility == "world_readable"
        or then == "join"
        or (visibility == "shared" and joined_now)
        or (visibility == "invited" and then == "invite")
    )


class TransactionScopes(Protocol):
    """The transaction scopes of devices' events (the part of
    :class:`MessagesStore` a single event's read needs)."""

    async def transaction_ids(
        self, user_id: str, device_id: str, token_hash: bytes, event_ids: Collection[str]
    ) -> dict[str, str]: ...


async def transaction_ids(
    store: MessagesStore, requester: Requester, events: Sequence[StoredEvent]
) -> dict[str, str]:
    """The transaction IDs of the events ``requester``'s device sent, by
    event ID: the spec hands them back to that device alone, in ``unsigned``
    (to that token alone, for a token with no device).
    """
    return await device_transaction_ids(store, TxnOwner.of(requester), events)


async def device_transaction_ids(
    store: TransactionScopes, owner: TxnOwner, events: Sequence[StoredEvent]
) -> dict[str, str]:
    """:func:`transaction_ids` of the events ``owner`` sent."""
    own = {event.event_id: event for event in events if event.sender == owner.user_id}
    if not own:
        return {}
    scopes = await store.transaction_ids(owner.user_id, owner.device_id, owner.token_hash, own)
    found = {}
    for event_id, scope in scopes.items():
        txn_id = _transaction_id(scope, own[event_id])
        if txn_id is not None:
            found[event_id] = txn_id
    return found


async def sent_client_events(
    store: MessagesStore,
    requester: Requester,
    events: Sequence[StoredEvent],
    memberships: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``events`` in the client format, those ``requester``'s device sent
    with the transaction ID it sent them under (see :func:`transaction_ids`),
    each with the requester's membership at it where ``memberships`` has
    one (see :func:`visible_with_memberships`), and state events with what
    they replaced (:mod:`ranvier.core.replaced_state`).
    """
    transactions = await transaction_ids(store, requester, events)
    replaced = await replaced_unsigned(store, events)
    return [
        client_event(
            event,
            unsigned=with_replaced(
                replaced,
                event.event_id,
                reader_unsigned(
                    transactions.get(event.event_id),
                    None if memberships is None else memberships.get(event.event_id),
                ),
            ),
        )
        for event in events
    ]


def reader_unsigned(transaction_id: str | None, membership: str | None) -> dict[str, str] | None:
    """The ``unsigned`` fields of an event that depend on who reads it."""
    unsigned = {}
    if transaction_id is not None:
        unsigned["transaction_id"] = transaction_id
    if membership is not None:
        unsigned["membership"] = membership
    return unsigned or None


async def senders_memberships(
    store: MessagesStore, timeline: Sequence[StoredEvent], *, state_event_id: str | None = None
) -> dict[str, str]:
    """The membership event IDs of the timeline's senders, by sender: from
    the state before ``state_event_id`` (the timeline's first event when not
    given), and, where that state lacks one (a room whose state is still
    partial here lacks most members), from the events' own auth events,
    which always name their sender's membership.
    """
    if not timeline:
        return {}
    senders = {event.sender for event in timeline}
    anchor = state_event_id if state_event_id is not None else timeline[0].event_id
    state = await store.state_before(anchor, [("m.room.member", sender) for sender in senders])
    found = {key[1]: event_id for key, event_id in state.items()}
    missing = senders - found.keys()
    if missing:
        in_timeline = {event.event_id for event in timeline}
        from_auth = await store.auth_memberships([event.event_id for event in timeline], missing)
        found.update(
            (sender, event_id)
            for sender, event_id in from_auth.items()
            if event_id not in in_timeline
        )
    return found


async def readable_upto(store: MessagesStore, user_id: str, room_id: str) -> tuple[int, int, bool]:
    """How far ``user_id`` may read the room's history (now, or their leave
    or ban), from where on events need no visibility check, and whether
    they are joined now; ``M_FORBIDDEN`` for a user who may not read it at
    all (the rule :class:`RoomMessages` states). A user who left and forgot
    the room reads it as one never in it.
    """
    membership = await store.current_membership(room_id, user_id)
    if membership is not None:
        kind, position = membership
        if kind == "join":
            events, _ = await store.positions()
            return events, position, True
        if kind in ("leave", "ban") and not await store.has_forgotten(user_id, room_id):
            return position, position + 1, False
    current = await store.current_state_for_keys(room_id, [("m.room.history_visibility", "")])
    if current and event_content(current[0]).get("history_visibility") == "world_readable":
        # Anyone may read it; each event still as its visibility then says.
        events, _ = await store.positions()
        return events, events + 1, False
    raise MatrixError(f"{user_id} is not in {room_id}", errcode="M_FORBIDDEN", http_status=403)


class RoomMessages:
    """``GET /rooms/{roomId}/messages``.

    Only a member may page a room's history, or anyone a room whose history
    is ``world_readable`` now: a user joined sees it up to now, a user who
    left or was banned up to that event (unless they forgot the room since),
    each event as the history visibility at it allows. Anyone else gets
    ``M_FORBIDDEN``. A page holds ``limit`` events the user may see while
    the room has them (:func:`visible_page`).
    """

    def __init__(self, store: MessagesStore, backfill: HistoryFiller | None = None) -> None:
        self._store = store
        self._backfill = backfill

    async def get_messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        direction: Literal["b", "f"],
        from_token: str | None = None,
        to_token: str | None = None,
        limit: int | None = None,
        event_filter: RoomEventFilter | None = None,
        everything: bool = False,
    ) -> dict[str, Any]:
        """A page of the room's history. With ``everything`` (a server
        admin's read) every event held is shown, whatever the requester's
        membership, the history visibility or whom they ignore.
        """
        from_position = None if from_token is None else parse_pagination_token(from_token)
        to_position = None if to_token is None else parse_pagination_token(to_token)
        if limit is None:
            limit = event_filter.limit if event_filter and event_filter.limit else DEFAULT_LIMIT
        if limit < 0:
            raise MatrixError(
                f"limit must not be negative, not {limit}",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        limit = min(limit, MAX_LIMIT)
        reader = None
        if everything:
            visible, _ = await self._store.positions()
        else:
            visible, checked_before, joined_now = await readable_upto(
                self._store, requester.user_id, room_id
            )
            reader = HistoryReader(requester.user_id, joined_now, checked_before)
        accept = None if event_filter is None else event_filter.predicate()
        if direction == "b":
            start = visible if from_position is None else min(from_position, visible)
            floor = _BOTTOM if to_position is None else to_position
            read_back = functools.partial(
                visible_page,
                self._store,
                room_id,
                reader,
                after=floor,
                upto=start,
                limit=limit,
                backwards=True,
                accept=accept,
            )
            page = await read_back()
            rounds = 0 if self._backfill is None or to_position is not None else _BACKFILL_ROUNDS
            for _ in range(rounds):
                if page.more or not await self._backfill_room(room_id, limit):
                    break
                page = await read_back()
        else:
            start = _BOTTOM if from_position is None else from_position
            ceiling = visible if to_position is None else min(to_position, visible)
            page = await visible_page(
                self._store,
                room_id,
                reader,
                after=start,
                upto=ceiling,
                limit=limit,
                backwards=False,
                accept=accept,
            )
        events = page.events
        end = page.edge if page.more else None
        memberships = None if everything else page.memberships
        answer: dict[str, Any] = {
            "start": from_token if from_token is not None else format_pagination_token(start),
            "chunk": await sent_client_events(self._store, requester, events, memberships),
        }
        if end is not None:
            answer["end"] = format_pagination_token(end)
        if event_filter is not None and event_filter.lazy_load_members and events:
            chronological = sorted(events, key=lambda event: event.stream_ordering)
            members = await senders_memberships(self._store, chronological)
            stored = await self._store.get_events(members.values())
            answer["state"] = [
                client_event(stored[event_id])
                for event_id in sorted(members.values())
                if event_id in stored
            ]
        return answer

    async def _backfill_room(self, room_id: str, limit: int) -> bool:
        assert self._backfill is not None
        return await self._backfill.backfill(room_id, min(max(2 * limit, 50), 100))
