"""Joining a room that this server is not in, through servers that are.

A local user joins a remote room with the spec's handshake ("Joining
Rooms"): ``make_join`` asks a resident server for a join event template,
offering the room versions ranvier supports; the template is checked,
completed (``origin``, ``origin_server_ts``), hashed and signed here; and
``send_join`` (v2) hands it to the same server, which answers with the
room's state before the join and the auth chain of that state.

Partial state (MSC3706, MSC3902)
--------------------------------

Most of a big room's state is memberships, and checking and storing tens
of thousands of them is what makes a join slow. Unless the room is joined
here with full state already, the join asks for the state without them
(``send_join?omit_members=true``). A resident that agrees answers
``members_omitted: true`` with the other state, the few memberships the
spec keeps (heroes of an unnamed room, the joiner's own earlier
membership), an auth chain for all of it and ``servers_in_room``. The room
is then stored as *partial*: its partial-state row names the join event,
the server joined through and the servers in the room, and the join gets a
partial-state context. The un-partial-state task fetches the rest later. A
resident that answers with the full state gives an ordinary join.

What a partial answer lets us check is less than a full one: each event
returned (state and auth chain) is checked against the events it cites,
which must all be in the answer, and the join against the returned state,
where the memberships the join cites stand in for the memberships the
state leaves out. Whether the omitted memberships exist, and whether they
would let the join in (a ban, say), cannot be known until the full state
arrives; the un-partial-state task checks the join again then.

Invariants
----------

* **Nothing is written until the answer checks out.** Every event of the
  answer must be of the room; the state must hold the create event of the
  room's version and no key twice. An event that is not validly signed is
  dropped, and one not authorised by the events it cites (all in the
  answer, none dropped) is rejected, as the spec says of any event
  received: neither is written nor kept in the state. The join must pass
  the auth rules against what is left (as above, when members are
  omitted), so the answer fails only when the join rests on a dropped
  event; an ``event`` in the answer must be our
  join (same event ID, content hash intact); and an answer that omits
  members must have been asked to and must list ``servers_in_room``. An
  answer failing any of these is the server's fault: the next server is
  tried, and if none is left, :class:`RemoteJoinError` says what each one
  did. No room, state or event is left behind by a failed handshake.
* **What is written is what was checked**, byte for byte: the state and
  auth chain as outliers (events with content hashes that do not match
  are kept redacted, as the spec says), and the join, in the room's DAG.
* **A room joined here with full state is never made partial again.**
  Whether the room is known here, and whether its state is partial, is
  read again under the room's lock (``room_lock``), the lock under which
  the un-partial-state task clears a room's partial state; the handshake
  itself holds no lock. A partial answer for a room that became full
  meanwhile gives the join a context from the state here when its prev
  events are known, and otherwise the same join is sent again asking for
  the full state.
* **A partial join lands whole or leaves no partial room.** Storage writes
  the partial-state row (``store_partial_join``) and the events in two
  requests, the row first, because the join's partial-state row refers to
  it. If the events' write fails or is cancelled, the row is removed again
  (``clear_partial_state``, which storage refuses if the join landed after
  all). A crash between the two leaves a partial room whose join event is
  not stored; the next join into the room finds such a row (a partial room
  with no events in its DAG) and removes it first.
* **One write for a first full join.** When the room has no events here in
  its DAG, the outliers and the join go to storage in one request, which
  lands whole or not at all. Joining a room that already has events here
  needs the outliers stored before the join's state can be worked out, so
  they are written first.

Which failures move on to the next server: no usable answer (5xx, 429,
unreachable), the server not knowing the room or the endpoint (404, which
is also how a resident with partial state of its own declines), the
restricted-room answers that name another server as the one to ask
(``M_UNABLE_TO_AUTHORISE_JOIN``, ``M_UNABLE_TO_GRANT_JOIN``), and answers
that do not check out. Any other refusal (``M_FORBIDDEN``,
``M_INCOMPATIBLE_ROOM_VERSION`` …) is the room's verdict and is raised as
the server gave it. Failures to write are raised as they come.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import msgspec
import trio

from ranvier.errors import (
    AuthError,
    MatrixError,
    PartialStateConflictError,
    PartialStateEventsRemainError,
)
from ranvier.protocol.auth import (
    CREATE_KEY,
    StateKey,
    auth_state_keys,
    authorize_event,
    check_auth_rules,
    is_valid_user_id,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS, RoomVersion
from ranvier.protocol.signing import SigningKeyLike
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.storage.records import EventToPersist

from .builder import wall_clock_ms
from .context import (
    EventContext,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
)
from .creation import MemberProfiles, member_event_content
from .event_auth import run_auth_checks
from .event_signatures import check_event_signatures, redacted_if_hash_mismatch
from .ingest import RoomLocks
from .interfaces import EventPersister, StateReader, VerifyKeySource
from .state import resolve_state_maps

__all__ = [
    "PartialJoinPersister",
    "PartialStateJoinClient",
    "RemoteJoin",
    "RemoteJoinError",
    "RemoteJoiner",
    "check_membership_template",
]

_log = logging.getLogger(__name__)

# Errcodes with which a server says another server should be asked.
_TRY_ELSEWHERE: Final = frozenset(
    {"M_NOT_FOUND", "M_UNRECOGNIZED", "M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN"}
)
# Fields of a template that the joining server replaces or adds itself.
# ``origin`` left the PDU format (spec v1.12); a template that still has one
# names the resident server, which our join does not come from.
_NOT_FROM_TEMPLATE: Final = frozenset({"event_id", "hashes", "signatures", "unsigned", "origin"})
# Events checked against the auth rules between two checkpoints.
_AUTH_CHECKS_PER_STEP: Final = 200
_MEMBER: Final = "m.room.member"


@runtime_checkable
class PartialStateJoinClient(Protocol):
    """The requests of the join handshake, sent to a server in the room,
    with ``send_join`` able to ask for the state without memberships.

    Both raise :class:`~ranvier.errors.MatrixError`: with the server's own
    errcode and HTTP status when it refuses, with 502 when it gives no
    usable answer (unreachable, timed out, not JSON).
    """

    async def make_join(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        """The decoded answer to ``make_join``, offering ``room_versions``."""
        ...

    async def send_join(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        omit_members: bool = False,
    ) -> bytes:
        """The answer to ``send_join`` (v2) as received, asked with
        ``omit_members=true`` when ``omit_members``: its events are kept
        byte for byte, as their signatures and hashes need.
        """
        ...


@runtime_checkable
class PartialJoinPersister(EventPersister, Protocol):
    """Event writes, and the record of rooms joined with partial state
    (:class:`ranvier.storage.Storage` has all of them).
    """

    async def store_partial_join(
        self,
        room_id: str,
        room_version: str,
        join_event_id: str,
        joined_via: str,
        servers_in_room: Collection[str],
    ) -> None:
        """Mark a room as joined with partial state, before its join is written."""
        ...

    async def clear_partial_state(self, room_id: str) -> bool:
        """Forget a room's partial state; False if it had none. Raises
        :class:`~ranvier.errors.PartialStateEventsRemainError` while any of
        its events has partial state.
        """
        ...


class RemoteJoinError(MatrixError):
    """No server could take the join: each refused in a way worth trying
    another server for, or answered with something that did not check out
    (502), or there was none to ask (404 ``M_NOT_FOUND``, as the room is
    then unknown to the server).

    ``failures`` lists each server tried with what went wrong there.
    """

    errcode = "M_UNKNOWN"
    http_status = 502

    def __init__(self, room_id: str, failures: Sequence[tuple[str, str]]) -> None:
        if failures:
            detail = "; ".join(f"{server}: {reason}" for server, reason in failures)
            super().__init__(f"could not join {room_id} through any server ({detail})")
        else:
            super().__init__(
                f"could not join {room_id}: no server to join through",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        self.room_id = room_id
        self.failures = list(failures)


class _BadAnswer(Exception):
    """A server's answer that does not check out; says why."""


@dataclass(frozen=True, slots=True)
class RemoteJoin:
    """A join through another server, as written here."""

    room_id: str
    room_version: RoomVersion
    #: The join event as written: signed by us, and by the resident if it
    #: returned the event.
    event: Pdu
    stream_ordering: int
    #: The server the join went through.
    via: str
    #: The room's state before the join, as that server gave it: without
    #: most memberships when ``partial_state``.
    state_ids: Mapping[StateKey, str]
    #: The servers in the room at the join, other than this one: those with
    #: a joined user in the state given, and, for a partial answer, those
    #: the resident listed. Where the room's events come from from now on.
    servers_in_room: frozenset[str]
    #: Whether the join was written with partial state (the room then has
    #: partial state here until the un-partial-state task completes it).
    partial_state: bool = False


@dataclass(frozen=True, slots=True)
class _CheckedAnswer:
    event: Pdu
    via: str
    state_ids: dict[StateKey, str]
    #: State and auth chain events, deepest last, as they will be written.
    outliers: list[Pdu]
    servers_in_room: frozenset[str]
    #: The resident left memberships out of the state.
    partial: bool


class _SendJoinAnswer(msgspec.Struct):
    state: list[msgspec.Raw]
    auth_chain: list[msgspec.Raw]
    # msgspec takes no Raw in a union: absent reads as empty, null as "null".
    event: msgspec.Raw = msgspec.Raw()
    members_omitted: bool = False
    servers_in_room: list[str] | None = None


def check_membership_template(
    template: object, *, room_id: str, user_id: str, membership: str
) -> dict[str, Any]:
    """The template a server handed out for ``user_id``'s ``membership`` in
    ``room_id``, once found to be what was asked for (the spec's checks on a
    make_join or make_leave answer); :class:`ValueError` saying what is
    wrong otherwise.
    """
    if not isinstance(template, dict):
        raise ValueError("the template event is not a JSON object")
    for field, expected in (
        ("type", _MEMBER),
        ("room_id", room_id),
        ("sender", user_id),
        ("state_key", user_id),
    ):
        if template.get(field) != expected:
            raise ValueError(f"the template's {field} is {template.get(field)!r}, not {expected!r}")
    content = template.get("content")
    if not isinstance(content, dict) or content.get("membership") != membership:
        raise ValueError(f"the template's content.membership is not {membership!r}")
    return template


class RemoteJoiner:
    """Joins local users to rooms through other servers.

    ``server_name`` and ``signing_key`` are ours, to sign join events;
    ``client`` sends the handshake's requests; ``keys`` gives other
    servers' keys for the answer's signatures; ``store`` and ``persister``
    are storage. ``room_versions`` are those offered to the resident server
    (by default every version ranvier supports); ``clock`` gives the join's
    ``origin_server_ts``. ``room_lock`` holds a room's lock: pass the
    :class:`~ranvier.core.ingest.RoomLocks` that event ingestion, local
    events and the un-partial-state task share (``room_locks.hold``);
    without it the joiner has locks of its own. ``partial_state`` False
    never asks for partial state.
    """

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: SigningKeyLike,
        client: PartialStateJoinClient,
        keys: VerifyKeySource,
        store: StateReader,
        persister: PartialJoinPersister,
        room_versions: Collection[str] = tuple(SUPPORTED_ROOM_VERSIONS),
        clock: Callable[[], int] = wall_clock_ms,
        room_lock: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
        partial_state: bool = True,
    ) -> None:
        unsupported = sorted(set(room_versions).difference(SUPPORTED_ROOM_VERSIONS))
        if unsupported:
            raise ValueError(f"room versions {', '.join(unsupported)} are not supported")
        self.server_name = server_name
        self._signing_key = signing_key
        self._client = client
        self._keys = keys
        self._store = store
        self._persister = persister
        self.room_versions = tuple(room_versions)
        self._clock = clock
        self._room_lock = room_lock if room_lock is not None else RoomLocks().hold
        self.partial_state = partial_state
        #: Where a join's display name and avatar come from (the profiles),
        #: set once they exist; None: joins carry none.
        self.member_profiles: MemberProfiles | None = None

    async def join_remote_room(
        self,
        user_id: str,
        room_id: str,
        servers: Sequence[str],
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> RemoteJoin:
        """Join ``user_id`` (one of our users) to ``room_id`` through the first
        of ``servers`` that can take the join; return the join as written.
        A ``reason`` goes into the join's content, and so do the keys of
        ``content`` (:func:`~ranvier.core.creation.member_event_content`).

        Raises the refusal of a server that speaks for the room (M_FORBIDDEN
        for a user who may not join, M_INCOMPATIBLE_ROOM_VERSION for a room
        of a version not offered …) as that server gave it, and
        :class:`RemoteJoinError` when no server could take the join.
        """
        if user_id.partition(":")[2] != self.server_name:
            raise MatrixError(
                f"{user_id} is not a user of {self.server_name}: only its own server can join it",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        added = member_event_content("join", content, reason)
        failures: list[tuple[str, str]] = []
        tried: set[str] = set()
        for server in servers:
            if server == self.server_name or server in tried:
                continue
            tried.add(server)
            omit_members = self.partial_state and not await self._joined_with_full_state(room_id)
            answer = await self._checked(
                self._handshake(server, user_id, room_id, omit_members, added)
            )
            if isinstance(answer, _CheckedAnswer):
                joined = await self._write_locked(room_id, answer)
                if joined is not None:
                    return joined
                # The room's partial state was cleared while we were asking,
                # and the state here cannot place the join: ask for it whole.
                _log.info("%s became full during the join; asking %s again", room_id, server)
                answer = await self._checked(self._send_join(server, answer.event, False))
                if isinstance(answer, _CheckedAnswer):
                    joined = await self._write_locked(room_id, answer)
                    assert joined is not None  # a full answer is always written
                    return joined
            _log.info("joining %s through %s failed: %s", room_id, server, answer)
            failures.append((server, answer))
        raise RemoteJoinError(room_id, failures)

    async def _joined_with_full_state(self, room_id: str) -> bool:
        """Whether the room has events here and all of its state: a join
        into it must not make it partial.
        """
        if not await self._store.get_forward_extremities(room_id):
            return False
        return not await self._store.is_partial_state_room(room_id)

    # The handshake.

    async def _checked(self, pending: Awaitable[_CheckedAnswer]) -> _CheckedAnswer | str:
        """The checked answer, or why the server failed us when that is
        worth trying another server for.
        """
        try:
            return await pending
        except _BadAnswer as exc:
            return f"its answer does not check out: {exc}"
        except MatrixError as exc:
            if not _worth_trying_elsewhere(exc):
                raise
            return f"{exc.errcode}: {exc.message}"

    async def _handshake(
        self,
        server: str,
        user_id: str,
        room_id: str,
        omit_members: bool,
        content: Mapping[str, Any],
    ) -> _CheckedAnswer:
        template = await self._client.make_join(server, room_id, user_id, self.room_versions)
        profile = (
            {}
            if self.member_profiles is None
            else await self.member_profiles.member_content(user_id)
        )
        join = self._join_event(template, user_id, room_id, {**profile, **content})
        return await self._send_join(server, join, omit_members)

    async def _send_join(self, server: str, join: Pdu, omit_members: bool) -> _CheckedAnswer:
        body = await self._client.send_join(
            server, join.room_id, join.event_id, join.json, omit_members=omit_members
        )
        return await self._check_answer(body, join, server, asked_partial=omit_members)

    def _join_event(
        self, answer: object, user_id: str, room_id: str, profile: Mapping[str, Any]
    ) -> Pdu:
        """Our join, made from a make_join answer, with ``profile`` (the
        user's profile, under the keys the user gave) added to its content.
        """
        if not isinstance(answer, dict):
            raise _BadAnswer("the make_join answer is not a JSON object")
        version = answer.get("room_version")
        if version not in self.room_versions:
            raise _BadAnswer(
                f"the make_join answer names room version {version!r}, which was not offered"
            )
        rv = SUPPORTED_ROOM_VERSIONS[version]
        try:
            template = check_membership_template(
                answer.get("event"), room_id=room_id, user_id=user_id, membership="join"
            )
        except ValueError as exc:
            raise _BadAnswer(str(exc)) from None
        event = {key: value for key, value in template.items() if key not in _NOT_FROM_TEMPLATE}
        event["content"] = {**template["content"], **profile}
        event["origin_server_ts"] = self._clock()
        try:
            signed = hash_and_sign_event(event, rv, self.server_name, self._signing_key)
            return Pdu.from_json(signed, rv)
        except MatrixError as exc:
            raise _BadAnswer(f"the template does not make a valid event: {exc.message}") from None

    async def _check_answer(
        self, body: bytes, join: Pdu, server: str, *, asked_partial: bool
    ) -> _CheckedAnswer:
        rv = join.room_version
        try:
            # Events stay msgspec.Raw, each checked as it is parsed.
            answer = decode_untrusted_json(body, type=_SendJoinAnswer, check_nesting=False)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _BadAnswer(
                f"the send_join answer is not shaped as the spec says: {exc}"
            ) from None
        partial = answer.members_omitted
        if partial and not asked_partial:
            raise _BadAnswer("the send_join answer omits members, which were not asked to be")
        if partial and answer.servers_in_room is None:
            raise _BadAnswer("the send_join answer omits members but has no servers_in_room")
        listed = answer.servers_in_room if partial and answer.servers_in_room else []
        strange = [name for name in listed if not is_valid_user_id(f"@x:{name}")]
        if strange:
            raise _BadAnswer(f"servers_in_room holds {strange[0]!r}, which is not a server name")
        try:
            state = [_parse(raw, rv) for raw in answer.state]
            auth_chain = [_parse(raw, rv) for raw in answer.auth_chain]
            returned = None if bytes(answer.event) in (b"", b"null") else _parse(answer.event, rv)
        except MatrixError as exc:
            raise _BadAnswer(
                f"an event in the send_join answer is invalid: {exc.message}"
            ) from None

        if returned is not None:
            if returned.event_id != join.event_id:
                raise _BadAnswer(
                    f"the send_join answer returns {returned.event_id}, not our join"
                    f" {join.event_id}"
                )
            join = returned
        events: dict[str, Pdu] = {}
        for event in (*auth_chain, *state):
            events.setdefault(event.event_id, event)
        events.pop(join.event_id, None)
        strangers = sorted(e.event_id for e in events.values() if e.room_id != join.room_id)
        if strangers:
            raise _BadAnswer(f"events of another room in the answer: {', '.join(strangers[:5])}")

        failures = await check_event_signatures([*events.values(), join], self._keys)
        if join.event_id in failures:
            raise _BadAnswer(f"our join is not validly signed: {failures[join.event_id].message}")
        # The spec drops an event that fails its signature checks; the join
        # fails only if it needed one (see _check_authorised).
        dropped = {
            event_id: f"{event_id} is not validly signed ({failure.message})"
            for event_id, failure in failures.items()
        }
        if redacted_if_hash_mismatch(join) is not join:
            raise _BadAnswer("the returned join's content does not match its content hash")
        events = {
            event_id: redacted_if_hash_mismatch(e)
            for event_id, e in events.items()
            if event_id not in dropped
        }
        events = await _authorised_only(events, dropped)
        state_ids = _state_map([events.get(event.event_id, event) for event in state], rv)
        state_ids = {key: event_id for key, event_id in state_ids.items() if event_id in events}
        await _check_authorised(events, join, state_ids, members_omitted=partial, dropped=dropped)
        servers = _servers_in(state_ids, events).union(listed, [server])
        return _CheckedAnswer(
            event=join,
            via=server,
            state_ids=state_ids,
            outliers=sorted(events.values(), key=lambda e: (e.depth, e.event_id)),
            servers_in_room=frozenset(servers - {self.server_name}),
            partial=partial,
        )

    # Writing.

    async def _write_locked(self, room_id: str, answer: _CheckedAnswer) -> RemoteJoin | None:
        """Write the join under the room's lock; None when the answer is
        partial, the room has full state here, and the join cannot be placed
        in it.
        """
        async with self._room_lock(room_id):
            partial_room = await self._store.is_partial_state_room(room_id)
            in_dag = bool(await self._store.get_forward_extremities(room_id))
            if partial_room and not in_dag:
                partial_room = not await self._drop_unfinished_partial_join(room_id)
            if not answer.partial:
                return await self._write_full(room_id, answer, in_dag=in_dag)
            if not in_dag and not partial_room:
                return await self._write_first_partial(room_id, answer)
            return await self._write_into_room(room_id, answer, partial_room=partial_room)

    async def _outlier_rows(self, answer: _CheckedAnswer) -> list[EventToPersist]:
        stored = await self._store.get_events([event.event_id for event in answer.outliers])
        outlier = EventContext.for_outlier()
        return [
            event_to_persist(event, outlier)
            for event in answer.outliers
            if event.event_id not in stored
        ]

    async def _write_full(
        self, room_id: str, answer: _CheckedAnswer, *, in_dag: bool
    ) -> RemoteJoin:
        """A join with the room's full state before it."""
        join = answer.event
        rows = await self._outlier_rows(answer)
        if in_dag and rows:
            await self._persister.persist_events(rows)
            rows = []
        context = await compute_event_context(
            join, self._store, self._persister, state_ids_before=answer.state_ids
        )
        current = None
        if in_dag:
            current = await compute_current_state_after(join, context, self._store, self._persister)
        orderings = await self._persister.persist_events(
            [*rows, event_to_persist(join, context)],
            current_state_groups=None if current is None else {room_id: current},
        )
        return self._joined(answer, orderings[join.event_id], context)

    async def _write_first_partial(self, room_id: str, answer: _CheckedAnswer) -> RemoteJoin:
        """The room's first join here, with partial state: the room's
        partial-state row, then the outliers and the join in one request.
        """
        join = answer.event
        rows = await self._outlier_rows(answer)
        context = await compute_event_context(
            join,
            self._store,
            self._persister,
            state_ids_before=answer.state_ids,
            partial_state=True,
        )
        await self._persister.store_partial_join(
            room_id,
            join.room_version.identifier,
            join.event_id,
            answer.via,
            sorted(answer.servers_in_room),
        )
        try:
            orderings = await self._persister.persist_events(
                [*rows, event_to_persist(join, context)]
            )
        except BaseException:
            await self._undo_partial_join(room_id)
            raise
        _log.info(
            "joined %s through %s with partial state (%d state events, %d servers in the room)",
            room_id,
            answer.via,
            len(answer.state_ids),
            len(answer.servers_in_room),
        )
        return self._joined(answer, orderings[join.event_id], context)

    async def _write_into_room(
        self, room_id: str, answer: _CheckedAnswer, *, partial_room: bool
    ) -> RemoteJoin | None:
        """A join from a partial answer into a room that has events here.

        The answer's state lacks the memberships we know of (our own users'
        among them), so the join's state is worked out from its prev events
        where they are known here, as for any event. Prev events not known
        here: in a partial room their state is resolved with the answer's,
        and the join has partial state; in a room with full state the join
        cannot be placed (None).
        """
        join = answer.event
        prev_ids = list(dict.fromkeys(join.prev_event_ids))
        after: dict[str, int] = {}
        for prev_id in prev_ids:
            groups = await self._store.get_event_state_groups(prev_id)
            if groups is not None:
                after[prev_id] = groups.after
        unknown = [prev_id for prev_id in prev_ids if prev_id not in after]
        if unknown and not partial_room:
            return None
        rows = await self._outlier_rows(answer)
        if rows:
            await self._persister.persist_events(rows)
        if not unknown:
            context = await compute_event_context(join, self._store, self._persister)
        else:
            states = [await self._store.get_state_ids(g) for g in dict.fromkeys(after.values())]
            state = answer.state_ids
            if states:
                state = await resolve_state_maps(
                    self._store, room_id, join.room_version, [*states, answer.state_ids]
                )
            context = await compute_event_context(
                join, self._store, self._persister, state_ids_before=state, partial_state=True
            )
        outcome = await run_auth_checks(join, context, self._store)
        if outcome.failure is not None:
            raise MatrixError(
                f"{join.event_id} was accepted by {answer.via}, but the state of {room_id}"
                f" here does not allow it: {outcome.failure.error.message}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        current = await compute_current_state_after(
            join, outcome.context, self._store, self._persister
        )
        try:
            orderings = await self._persister.persist_events(
                [event_to_persist(join, outcome.context)],
                current_state_groups=None if current is None else {room_id: current},
            )
        except PartialStateConflictError:
            # Cleared by someone not holding the room's lock: the state here
            # is full now, so work the join's context out again from it.
            return await self._write_into_room(room_id, answer, partial_room=False)
        return self._joined(answer, orderings[join.event_id], outcome.context)

    async def _undo_partial_join(self, room_id: str) -> None:
        """Remove the partial-state row of a join whose events were not written."""
        with trio.CancelScope(shield=True):
            try:
                await self._persister.clear_partial_state(room_id)
            except PartialStateEventsRemainError:
                # The write landed after all (only its caller was cancelled):
                # the room rightly has partial state.
                pass
            except Exception:
                _log.exception(
                    "the partial state of %s could not be removed after a failed join;"
                    " the next join into it removes it",
                    room_id,
                )

    async def _drop_unfinished_partial_join(self, room_id: str) -> bool:
        """Remove the partial-state row of a room with no events in its DAG,
        left by a join whose events were never written; False if events of
        the room still have partial state.
        """
        try:
            await self._persister.clear_partial_state(room_id)
        except PartialStateEventsRemainError:
            return False
        _log.warning("%s had partial state from a join that never completed; removed", room_id)
        return True

    def _joined(self, answer: _CheckedAnswer, ordering: int, context: EventContext) -> RemoteJoin:
        join = answer.event
        return RemoteJoin(
            room_id=join.room_id,
            room_version=join.room_version,
            event=join,
            stream_ordering=ordering,
            via=answer.via,
            state_ids=answer.state_ids,
            servers_in_room=answer.servers_in_room,
            partial_state=context.partial_state,
        )


def _worth_trying_elsewhere(exc: MatrixError) -> bool:
    return exc.http_status >= 500 or exc.http_status == 429 or exc.errcode in _TRY_ELSEWHERE


def _parse(raw: msgspec.Raw, rv: RoomVersion) -> Pdu:
    # Events from the room's past may cite more prev and auth events than
    # new events may: the limits are for events being created.
    return Pdu.from_json(bytes(raw), rv, check_limits=False)


def _state_map(state: Sequence[Pdu], rv: RoomVersion) -> dict[StateKey, str]:
    """The answer's state as a map, once found to be a state of the room."""
    state_ids: dict[StateKey, str] = {}
    for event in state:
        if event.state_key is None:
            raise _BadAnswer(f"{event.event_id} in the state is not a state event")
        key = (event.type, event.state_key)
        if key in state_ids and state_ids[key] != event.event_id:
            raise _BadAnswer(f"the state holds two events for {key}")
        state_ids[key] = event.event_id
    create_id = state_ids.get(CREATE_KEY)
    if create_id is None:
        raise _BadAnswer("the state has no m.room.create event")
    create = next(event for event in state if event.event_id == create_id)
    version = create.content.get("room_version", "1")
    if version != rv.identifier:
        raise _BadAnswer(
            f"the room's create event says version {version!r}, the server said {rv.identifier!r}"
        )
    return state_ids


async def _authorised_only(events: Mapping[str, Pdu], dropped: dict[str, str]) -> dict[str, Pdu]:
    """The events authorised by the events they cite, each cited event
    judged first; the others, and every event citing one of them or one
    already in ``dropped``, are rejected as the spec says, and added to
    ``dropped`` with the reason. Cited events are followed, not depths,
    which the sending server chose.
    """
    kept: dict[str, Pdu] = {}
    checked = 0
    # From v12 events find the create event by the room ID, not by citing it.
    for start in sorted(events, key=lambda event_id: events[event_id].type != CREATE_KEY[0]):
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            event_id, cited_done = stack.pop()
            if event_id in kept or event_id in dropped:
                continue
            event = events[event_id]
            if not cited_done:
                stack.append((event_id, True))
                stack.extend(
                    (cited, False)
                    for cited in event.auth_event_ids
                    if cited in events and cited not in kept and cited not in dropped
                )
                continue
            try:
                authorize_event(event, kept)
            except AuthError as exc:
                dropped[event_id] = f"{event_id} is not authorised: {exc.message}"
            else:
                kept[event_id] = event
            checked += 1
            if checked % _AUTH_CHECKS_PER_STEP == 0:
                await trio.lowlevel.checkpoint()
    return kept


async def _check_authorised(
    events: Mapping[str, Pdu],
    join: Pdu,
    state_ids: Mapping[StateKey, str],
    *,
    members_omitted: bool,
    dropped: Mapping[str, str],
) -> None:
    """The join authorised by the events it cites and by the state, all of
    them kept by :func:`_authorised_only`. With ``members_omitted``, a
    membership the state lacks is taken from the join's own auth events.
    """
    await trio.lowlevel.checkpoint()
    auth_state = {
        key: events[state_ids[key]]
        for key in (CREATE_KEY, *auth_state_keys(join))
        if key in state_ids
    }
    if members_omitted:
        for auth_id in join.auth_event_ids:
            cited = events.get(auth_id)
            if cited is not None and cited.type == _MEMBER and cited.state_key is not None:
                auth_state.setdefault((_MEMBER, cited.state_key), cited)
    try:
        authorize_event(join, events)
        check_auth_rules(join, auth_state)
    except AuthError as exc:
        why = ""
        if dropped:
            shown = "; ".join(dropped[event_id] for event_id in sorted(dropped)[:3])
            why = f" ({len(dropped)} events of the answer were dropped: {shown})"
        raise _BadAnswer(
            f"our join is not authorised by the room's state: {exc.message}{why}"
        ) from None


def _servers_in(state_ids: Mapping[StateKey, str], events: Mapping[str, Pdu]) -> set[str]:
    return {
        state_key.partition(":")[2]
        for (event_type, state_key), event_id in state_ids.items()
        if event_type == _MEMBER and events[event_id].membership == "join"
    }
