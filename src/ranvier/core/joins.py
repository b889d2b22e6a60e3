"""Joining a room that this server is not in, through servers that are.

A local user joins a remote room with the spec's handshake ("Joining
Rooms"): ``make_join`` asks a resident server for a join event template,
offering the room versions ranvier supports; the template is checked,
completed (``origin``, ``origin_server_ts``), hashed and signed here; and
``send_join`` (v2) hands it to the same server, which answers with the
room's state before the join and the auth chain of that state.

Invariants
----------

* **Nothing is written until the answer checks out.** Every event of the
  answer must be of the room and validly signed; the state must hold the
  create event of the room's version and no key twice; every state and
  auth chain event must be authorised by the events it cites, all of them
  in the answer; the join must pass the auth rules against the state; and
  an ``event`` in the answer must be our join (same event ID, content hash
  intact). An answer failing any of these is the server's fault: the next
  server is tried, and if none is left, :class:`RemoteJoinError` says what
  each one did. No room, state or event is left behind by a failed join.
* **What is written is what was checked**, byte for byte: the state and
  auth chain as outliers (events with content hashes that do not match
  are kept redacted, as the spec says), and the join, in the room's DAG,
  with the answer's state as the state before it.
* **One write for a first join.** When the room has no events here in its
  DAG, the outliers and the join go to storage in one request, which lands
  whole or not at all. Rejoining a room that already has events here needs
  the outliers stored before the room's current state can be resolved
  with the join, so they are written first.

Which failures move on to the next server: no usable answer (5xx, 429,
unreachable), the server not knowing the room or the endpoint (404), the
restricted-room answers that name another server as the one to ask
(``M_UNABLE_TO_AUTHORISE_JOIN``, ``M_UNABLE_TO_GRANT_JOIN``), and answers
that do not check out. Any other refusal (``M_FORBIDDEN``,
``M_INCOMPATIBLE_ROOM_VERSION`` …) is the room's verdict and is raised as
the server gave it.

Partial-state joins (``omit_members``) are not asked for yet: the join
takes the room's full state. The writes are made under the room's lock
(``room_lock``), the one every writer of the room's events must share
(see :mod:`ranvier.core.context`); the handshake itself holds no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import trio

from ranvier.errors import AuthError, MatrixError
from ranvier.protocol.auth import (
    CREATE_KEY,
    StateKey,
    auth_state_keys,
    authorize_event,
    check_auth_rules,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS, RoomVersion
from ranvier.protocol.signing import SigningKeyLike

from .builder import wall_clock_ms
from .context import (
    EventContext,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
)
from .event_signatures import check_event_signatures, redacted_if_hash_mismatch
from .interfaces import EventPersister, JoinClient, StateReader, VerifyKeySource

__all__ = ["RemoteJoin", "RemoteJoinError", "RemoteJoiner", "check_membership_template"]

_log = logging.getLogger(__name__)

# Errcodes with which a server says another server should be asked.
_TRY_ELSEWHERE: Final = frozenset(
    {"M_NOT_FOUND", "M_UNRECOGNIZED", "M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN"}
)
# Fields of a template that the joining server replaces or adds itself.
_NOT_FROM_TEMPLATE: Final = frozenset({"event_id", "hashes", "signatures", "unsigned"})
# Events checked against the auth rules between two checkpoints.
_AUTH_CHECKS_PER_STEP: Final = 200
_MEMBER: Final = "m.room.member"


class RemoteJoinError(MatrixError):
    """No server could take the join: each refused in a way worth trying
    another server for, or answered with something that did not check out.

    ``failures`` lists each server tried with what went wrong there.
    """

    errcode = "M_UNKNOWN"
    http_status = 502

    def __init__(self, room_id: str, failures: Sequence[tuple[str, str]]) -> None:
        if failures:
            detail = "; ".join(f"{server}: {reason}" for server, reason in failures)
            message = f"could not join {room_id} through any server ({detail})"
        else:
            message = f"could not join {room_id}: no server to join through"
        super().__init__(message)
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
    #: The room's state before the join, as that server gave it.
    state_ids: Mapping[StateKey, str]
    #: The servers with a joined user in that state: where the room's
    #: events come from from now on.
    servers_in_room: frozenset[str]


@dataclass(frozen=True, slots=True)
class _CheckedAnswer:
    event: Pdu
    via: str
    state_ids: dict[StateKey, str]
    #: State and auth chain events, deepest last, as they will be written.
    outliers: list[Pdu]
    servers_in_room: frozenset[str]


class _SendJoinAnswer(msgspec.Struct):
    state: list[msgspec.Raw]
    auth_chain: list[msgspec.Raw]
    # msgspec takes no Raw in a union: absent reads as empty, null as "null".
    event: msgspec.Raw = msgspec.Raw()
    members_omitted: bool = False


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
    ``origin_server_ts``.
    """

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: SigningKeyLike,
        client: JoinClient,
        keys: VerifyKeySource,
        store: StateReader,
        persister: EventPersister,
        room_versions: Collection[str] = tuple(SUPPORTED_ROOM_VERSIONS),
        clock: Callable[[], int] = wall_clock_ms,
        room_lock: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
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
        self._room_lock = room_lock

    async def join_remote_room(
        self, user_id: str, room_id: str, servers: Sequence[str]
    ) -> RemoteJoin:
        """Join ``user_id`` (one of our users) to ``room_id`` through the first
        of ``servers`` that can take the join; return the join as written.

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
        failures: list[tuple[str, str]] = []
        tried: set[str] = set()
        for server in servers:
            if server == self.server_name or server in tried:
                continue
            tried.add(server)
            try:
                answer = await self._handshake(server, user_id, room_id)
            except _BadAnswer as exc:
                reason = f"its answer does not check out: {exc}"
            except MatrixError as exc:
                if not _worth_trying_elsewhere(exc):
                    raise
                reason = f"{exc.errcode}: {exc.message}"
            else:
                if self._room_lock is None:
                    return await self._write(room_id, answer)
                async with self._room_lock(room_id):
                    return await self._write(room_id, answer)
            _log.info("joining %s through %s failed: %s", room_id, server, reason)
            failures.append((server, reason))
        raise RemoteJoinError(room_id, failures)

    # The handshake.

    async def _handshake(self, server: str, user_id: str, room_id: str) -> _CheckedAnswer:
        template = await self._client.make_join(server, room_id, user_id, self.room_versions)
        rv, join = self._join_event(template, user_id, room_id)
        body = await self._client.send_join(server, room_id, join.event_id, join.json)
        return await self._check_answer(body, join, rv, server)

    def _join_event(self, answer: object, user_id: str, room_id: str) -> tuple[RoomVersion, Pdu]:
        """Our join, made from a make_join answer."""
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
        event["origin"] = self.server_name
        event["origin_server_ts"] = self._clock()
        try:
            signed = hash_and_sign_event(event, rv, self.server_name, self._signing_key)
            return rv, Pdu.from_json(signed, rv)
        except MatrixError as exc:
            raise _BadAnswer(f"the template does not make a valid event: {exc.message}") from None

    async def _check_answer(
        self, body: bytes, join: Pdu, rv: RoomVersion, server: str
    ) -> _CheckedAnswer:
        try:
            answer = msgspec.json.decode(body, type=_SendJoinAnswer)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _BadAnswer(
                f"the send_join answer is not shaped as the spec says: {exc}"
            ) from None
        if answer.members_omitted:
            raise _BadAnswer("the send_join answer omits members, which were not asked to be")
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
        if failures:
            shown = "; ".join(failures[event_id].message for event_id in sorted(failures)[:3])
            raise _BadAnswer(f"{len(failures)} events are not validly signed ({shown})")
        if redacted_if_hash_mismatch(join) is not join:
            raise _BadAnswer("the returned join's content does not match its content hash")
        events = {event_id: redacted_if_hash_mismatch(e) for event_id, e in events.items()}

        state_ids = _state_map([events[event.event_id] for event in state], rv)
        await _check_authorised(events, join, state_ids)
        return _CheckedAnswer(
            event=join,
            via=server,
            state_ids=state_ids,
            outliers=sorted(events.values(), key=lambda e: (e.depth, e.event_id)),
            servers_in_room=_servers_in(state_ids, events),
        )

    # Writing.

    async def _write(self, room_id: str, answer: _CheckedAnswer) -> RemoteJoin:
        join = answer.event
        rv = join.room_version
        stored = await self._store.get_events([event.event_id for event in answer.outliers])
        outlier = EventContext.for_outlier()
        rows = [
            event_to_persist(event, outlier)
            for event in answer.outliers
            if event.event_id not in stored
        ]
        rejoining = bool(await self._store.get_forward_extremities(room_id))
        if rejoining and rows:
            await self._persister.persist_events(rows)
            rows = []
        context = await compute_event_context(
            join, self._store, self._persister, state_ids_before=answer.state_ids
        )
        current = None
        if rejoining:
            current = await compute_current_state_after(join, context, self._store, self._persister)
        orderings = await self._persister.persist_events(
            [*rows, event_to_persist(join, context)],
            current_state_groups=None if current is None else {room_id: current},
        )
        return RemoteJoin(
            room_id=room_id,
            room_version=rv,
            event=join,
            stream_ordering=orderings[join.event_id],
            via=answer.via,
            state_ids=answer.state_ids,
            servers_in_room=answer.servers_in_room,
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


async def _check_authorised(
    events: Mapping[str, Pdu], join: Pdu, state_ids: Mapping[StateKey, str]
) -> None:
    """Every event authorised by the events it cites, and the join by those
    and by the state.
    """
    for count, event in enumerate(events.values(), start=1):
        try:
            authorize_event(event, events)
        except AuthError as exc:
            raise _BadAnswer(f"{event.event_id} is not authorised: {exc.message}") from None
        if count % _AUTH_CHECKS_PER_STEP == 0:
            await trio.lowlevel.checkpoint()
    try:
        authorize_event(join, events)
        check_auth_rules(
            join,
            {
                key: events[state_ids[key]]
                for key in (CREATE_KEY, *auth_state_keys(join))
                if key in state_ids
            },
        )
    except AuthError as exc:
        raise _BadAnswer(f"our join is not authorised by the room's state: {exc.message}") from None


def _servers_in(state_ids: Mapping[StateKey, str], events: Mapping[str, Pdu]) -> frozenset[str]:
    return frozenset(
        state_key.partition(":")[2]
        for (event_type, state_key), event_id in state_ids.items()
        if event_type == _MEMBER and events[event_id].membership == "join"
    )
