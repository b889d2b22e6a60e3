"""The membership handshakes over federation.

As the resident server, this server answers other servers whose users join,
leave, knock or are invited:

* ``GET /v1/make_join/{roomId}/{userId}?ver=``: a join event template for
  the user, refused with 403 ``M_FORBIDDEN`` when the room's current state
  would not let the user in (bans, join rules) and with 400
  ``M_INCOMPATIBLE_ROOM_VERSION`` when the room's version is not among
  ``ver``. For a restricted room the user may join through membership of
  another room; the template then names a local user who may invite, as
  ``join_authorised_via_users_server``, or the spec's 400
  ``M_UNABLE_TO_AUTHORISE_JOIN`` or ``M_UNABLE_TO_GRANT_JOIN`` says to ask
  another server (:mod:`ranvier.core.restricted_joins`).
* ``PUT /v2/send_join/{roomId}/{eventId}``: the signed join. It is checked
  (the path's event ID, a join of a user of the requesting server, its
  server's signature and content hash, and, when it names one of our users
  to vouch for it, the restricted room's conditions again), signed by this
  server, authorised
  and written like any event; the answer is the room's state before it and
  the auth chain of that state and of the join. With ``omit_members=true``
  (MSC3706) the answer leaves memberships out: see below.
* ``GET /v1/make_leave`` and ``PUT /v2/send_leave``: the same for leaving.
* ``GET /v1/make_knock`` and ``PUT /v1/send_knock``: the same for knocking,
  in rooms of versions that have it; the answer to ``send_knock`` is the
  room's state that identifies it (``knock_room_state``, whole events).
* ``PUT /v2/invite/{roomId}/{eventId}``: an invite of one of our users,
  checked, signed and kept as an outlier until the user joins. The
  ``invite_room_state`` sent with it is kept, stripped (type, state key,
  content, sender), in the stored event's ``unsigned`` as
  ``invite_room_state``, where ``/sync`` finds it for ``invite_state``:
  ``unsigned`` is covered by neither hashes nor signatures, so the event
  stays the one its servers signed, and the stripped state lives and goes
  with the invite it describes (no table of its own to keep in step, and
  where older servers put it themselves). The answer is the signed event
  without it. An invitee who blocks invites (``m.invite_permission_config``,
  spec v1.18) is refused with 403 ``M_INVITE_BLOCKED`` before anything is
  signed or kept, as the client API refuses a local inviter.

Every room endpoint applies the room's server ACL first
(:mod:`ranvier.federation.room_access`). This server answers make_join,
send_join, make_leave, send_leave, make_knock and send_knock only for rooms
it is in with full state: with partial state it cannot tell who may join,
nor give the room's state and servers, so it answers 404 ``M_NOT_FOUND``,
as if it were not in the room, and the other server asks another resident
(MSC3902; Synapse does the same).

A partial-state answer to ``send_join`` (``members_omitted: true``) holds
the state before the join without its ``m.room.member`` events, except the
ones the spec keeps: the joining user's own earlier membership, and, when
the state has neither ``m.room.name`` nor ``m.room.canonical_alias``, the
memberships of the room's heroes (:func:`room_heroes`). Its
``servers_in_room`` are the servers with a joined member in that state,
and its auth chain is that of the state returned and of the join, less the
events already in ``state``.

A join, leave or knock written here is handed to the
:class:`EventNotifier`, so that the homeserver sends it on to the room's
other servers, as the resident server must. Writes of one room's events
are serialised with the room's lock; on
:class:`~ranvier.errors.PartialStateConflictError` the event's context is
computed again and the write tried once more.

:class:`FederationJoinClient` is the other side: the joining server's
``make_join`` and ``send_join`` requests, for
:class:`~ranvier.core.joins.RemoteJoiner`; and :class:`FederationInviter`
sends our users' invites to the invitees' servers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import msgspec

from ranvier.core.builder import prepare_event
from ranvier.core.context import (
    UnknownPrevStateError,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
    out_of_band_to_persist,
)
from ranvier.core.event_auth import check_against_auth_events, run_auth_checks
from ranvier.core.event_signatures import check_event_signatures, required_signers
from ranvier.core.ingest import RoomLocks
from ranvier.core.interfaces import EventNotifier, EventPersister, StateReader, VerifyKeySource
from ranvier.core.loading import EventLoader
from ranvier.core.redactions import ServedEvents
from ranvier.core.restricted_joins import AUTHORISER, RestrictedJoins
from ranvier.core.room_servers import ServersByGroup
from ranvier.errors import MatrixError, PartialStateConflictError
from ranvier.federation.refusals import refusal_error, segment
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.auth import CREATE_KEY, JOIN_RULES_KEY, is_valid_user_id
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import content_hash_matches, hash_and_sign_event
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import (
    SUPPORTED_ROOM_VERSIONS,
    RoomVersion,
    get_room_version,
)
from ranvier.protocol.signing import SigningKeyLike, sign_json, verify_signed_json
from ranvier.protocol.untrusted_json import DECODE_ERRORS, decode_untrusted_json
from ranvier.storage.records import StateKey

from .room_access import RoomAccess

__all__ = [
    "HERO_COUNT",
    "INVITE_ROOM_STATE_KEYS",
    "FederationInviter",
    "FederationJoinClient",
    "InviteChecker",
    "PolicyRecommender",
    "ResidentStateReader",
    "RoomLock",
    "add_membership_routes",
    "room_heroes",
]

#: How many heroes a room summary names, as the spec has it for ``m.heroes``.
HERO_COUNT: Final = 5
_MEMBER: Final = "m.room.member"
_NAME_KEY: Final[StateKey] = ("m.room.name", "")
_CANONICAL_ALIAS_KEY: Final[StateKey] = ("m.room.canonical_alias", "")
# Room versions whose invites' invite_room_state the spec lets through unchecked.
_UNCHECKED_INVITE_STATE_VERSIONS: Final = frozenset(str(number) for number in range(1, 12))

#: Holds a room's lock for the length of an ``async with``.
RoomLock = Callable[[str], AbstractAsyncContextManager[None]]


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _forbidden(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_FORBIDDEN", http_status=403)


def _not_found(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_NOT_FOUND", http_status=404)


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _origin(request: Request) -> str:
    # Every route here is authenticated, so the app has set the origin.
    assert request.origin is not None
    return request.origin


class InviteChecker(Protocol):
    """Refuses invites of users who block them
    (:class:`ranvier.core.invite_permission.InvitePermission`)."""

    async def check_invite(self, invitee: str) -> None:
        """Raise 403 ``M_INVITE_BLOCKED`` when ``invitee`` blocks invites."""
        ...


class PolicyRecommender(Protocol):
    """Whether the room's policy server recommends an event received
    (:class:`ranvier.core.policy_servers.PolicyServers`)."""

    async def recommended(self, event: Pdu) -> Pdu | None:
        """``event`` with the policy server's signature, or None when it is
        not recommended."""
        ...


class ResidentStateReader(StateReader, Protocol):
    """The reads of a resident server, with those that a big room's join
    needs answered without reading its whole state or every member event.
    """

    async def get_state_ids_without_type(
        self, state_group: int, event_type: str
    ) -> Mapping[StateKey, str]:
        """The entries of a group's state for every type but ``event_type``."""
        ...

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined in the room's current state."""
        ...

    async def get_memberships(
        self, event_ids: Collection[str]
    ) -> Mapping[str, tuple[int, str | None]]:
        """Each stored event's stream ordering and ``content.membership``
        (None unless a string).
        """
        ...


def room_heroes(
    memberships: Mapping[str, tuple[int, str | None]], user_id: str, count: int = HERO_COUNT
) -> list[str]:
    """The users a client would name an unnamed room after, as the spec
    picks ``m.heroes`` for ``user_id``: the first ``count`` joined or
    invited members by stream ordering, or, when there are none, the first
    who left or were banned; never ``user_id`` itself.

    ``memberships`` gives each member's ``(stream ordering, membership)``.
    """
    others = sorted(
        (ordering, member, membership)
        for member, (ordering, membership) in memberships.items()
        if member != user_id
    )
    present = [member for _, member, membership in others if membership in ("join", "invite")]
    if present:
        return present[:count]
    return [member for _, member, membership in others if membership in ("leave", "ban")][:count]


def _check_version_offered(request: Request, rv: RoomVersion, room_id: str, origin: str) -> None:
    offered = request.query.get("ver") or ["1"]
    if rv.identifier not in offered:
        raise MatrixError(
            f"{room_id} is a room of version {rv.identifier}, which {origin} does not offer"
            f" ({', '.join(offered)})",
            errcode="M_INCOMPATIBLE_ROOM_VERSION",
            http_status=400,
            room_version=rv.identifier,
        )


def _omit_members(request: Request) -> bool:
    """The ``omit_members`` query parameter: ``true`` or ``false``, as
    MSC3706 has it; anything else is refused with ``M_INVALID_PARAM``.
    """
    value = request.query_value("omit_members")
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise _invalid(f"omit_members must be 'true' or 'false', not {value!r}")


class _InviteBody(msgspec.Struct):
    room_version: str
    event: msgspec.Raw
    invite_room_state: list[msgspec.Raw] = []


class _Membership:
    def __init__(
        self,
        *,
        server_name: str,
        signing_key: SigningKeyLike,
        store: ResidentStateReader,
        persister: EventPersister,
        keys: VerifyKeySource,
        notifier: EventNotifier | None,
        room_lock: RoomLock,
        clock: Callable[[], int],
        invite_permission: InviteChecker | None,
        policy_servers: PolicyRecommender | None,
        served: ServedEvents | None,
        servers: ServersByGroup,
    ) -> None:
        self._servers = servers
        self._server_name = server_name
        self._served = served
        self._policy_servers = policy_servers
        self._invite_permission = invite_permission
        self._signing_key = signing_key
        self._store = store
        self._persister = persister
        self._keys = keys
        self._notifier = notifier
        self._room_lock = room_lock
        self._clock = clock
        self._restricted = RestrictedJoins(store, server_name)

    # What every handshake checks first.

    async def _resident_room(self, access: RoomAccess, room_id: str, origin: str) -> RoomVersion:
        """The room's version, once the origin passes its ACL and this server
        is found to be in the room with full state.

        Whether we are in the room is asked of storage, which finds one of
        our joined users without reading a big room's whole state.
        """
        await access.check_server_acl(room_id, origin)
        version = await self._store.get_room_version(room_id)
        if version is None or not await self._store.server_has_joined_member(
            room_id, self._server_name
        ):
            raise _not_found(f"{self._server_name} is not in {room_id}")
        if await self._store.is_partial_state_room(room_id):
            raise _not_found(
                f"{self._server_name} does not have the full state of {room_id} yet;"
                " try another server"
            )
        return get_room_version(version)

    def _check_user_of_origin(self, user_id: str, origin: str) -> None:
        if not is_valid_user_id(user_id):
            raise _invalid(f"{user_id!r} is not a user ID")
        if _server_of(user_id) != origin:
            raise _forbidden(f"{user_id} is not a user of {origin}, which asks for it")

    # make_join, make_leave and make_knock.

    async def make_join(self, request: Request) -> Mapping[str, Any]:
        room_id, user_id = request.path_params["room_id"], request.path_params["user_id"]
        origin = _origin(request)
        self._check_user_of_origin(user_id, origin)
        access = RoomAccess(self._store)
        rv = await self._resident_room(access, room_id, origin)
        _check_version_offered(request, rv, room_id, origin)
        content: dict[str, Any] = {"membership": "join"}
        authoriser = await self._restricted.for_remote_user(room_id, rv, user_id)
        if authoriser is not None:
            content[AUTHORISER] = authoriser
        return await self._template(rv, room_id, user_id, content)

    async def make_leave(self, request: Request) -> Mapping[str, Any]:
        room_id, user_id = request.path_params["room_id"], request.path_params["user_id"]
        origin = _origin(request)
        self._check_user_of_origin(user_id, origin)
        access = RoomAccess(self._store)
        rv = await self._resident_room(access, room_id, origin)
        return await self._template(rv, room_id, user_id, {"membership": "leave"})

    async def make_knock(self, request: Request) -> Mapping[str, Any]:
        room_id, user_id = request.path_params["room_id"], request.path_params["user_id"]
        origin = _origin(request)
        self._check_user_of_origin(user_id, origin)
        access = RoomAccess(self._store)
        rv = await self._resident_room(access, room_id, origin)
        _check_version_offered(request, rv, room_id, origin)
        if not rv.knock_join_rule:
            raise MatrixError(
                f"{room_id} is a room of version {rv.identifier}, which has no knocking",
                errcode="M_INCOMPATIBLE_ROOM_VERSION",
                http_status=400,
                room_version=rv.identifier,
            )
        return await self._template(rv, room_id, user_id, {"membership": "knock"})

    async def _template(
        self, rv: RoomVersion, room_id: str, user_id: str, content: dict[str, Any]
    ) -> Mapping[str, Any]:
        """The template answer, once the event it makes is found to pass the
        auth rules against the room's current state.
        """
        template = {
            "type": _MEMBER,
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
        }
        event = await prepare_event(template, room_version=rv, store=self._store, clock=self._clock)
        # Checked as signed by us: a restricted join names our user, whose
        # server's signature the rules require, and we sign it at send_join.
        draft = Pdu.from_json(
            hash_and_sign_event(event, rv, self._server_name, self._signing_key), rv
        )
        failure = await check_against_auth_events(draft, self._store)
        if failure is not None:
            raise _forbidden(
                f"{user_id} may not {content['membership']} {room_id}: {failure.error.message}"
            )
        return {"room_version": rv.identifier, "event": event}

    # send_join, send_leave and send_knock.

    async def send_join(self, request: Request) -> Mapping[str, Any]:
        omit_members = _omit_members(request)
        event, state_group = await self._receive(request, "join", sign=True)
        return await self._send_join_answer(event, state_group, omit_members=omit_members)

    async def send_leave(self, request: Request) -> Mapping[str, Any]:
        await self._receive(request, "leave", sign=False)
        return {}

    async def send_knock(self, request: Request) -> Mapping[str, Any]:
        # A knock in a version without knocking fails the auth rules (403).
        event, _ = await self._receive(request, "knock", sign=False)
        keys = (*INVITE_ROOM_STATE_KEYS, (_MEMBER, event.sender))
        state = await self._store.get_current_state_ids_for_keys(event.room_id, keys)
        return {"knock_room_state": await self._raw_events(sorted(state.values()))}

    async def _receive(self, request: Request, membership: str, *, sign: bool) -> tuple[Pdu, int]:
        """The membership event of the request, written; with the state group
        before it.
        """
        room_id, event_id = request.path_params["room_id"], request.path_params["event_id"]
        origin = _origin(request)
        access = RoomAccess(self._store)
        rv = await self._resident_room(access, room_id, origin)
        event = Pdu.from_json(request.body, rv)
        _check_membership_event(event, room_id, event_id, membership, origin)
        if not content_hash_matches(event.json):
            raise _invalid(f"{event_id} does not match its content hash")
        if membership == "join":
            # Our signature vouches for a restricted join naming our user:
            # the conditions are checked again, make_join or not.
            await self._restricted.check_join_received(event)
        if sign:
            event = self._countersigned(event)
        await self._check_signatures(event)
        if self._policy_servers is not None:
            # Step 7 of the checks on receipt (v1.18). Soft failing a
            # handshake's event would leave its server believing it in the
            # room: it is refused instead, as the auth rules refuse one.
            recommended = await self._policy_servers.recommended(event)
            if recommended is None:
                raise _forbidden(f"the room's policy server does not recommend {event_id}")
            event = recommended
        async with self._room_lock(room_id):
            return await self._write(event)

    def _countersigned(self, event: Pdu) -> Pdu:
        """``event`` with this server's signature added, its hashes untouched."""
        rv = event.room_version
        ours = sign_json(redact(event.json, rv), self._server_name, self._signing_key)
        signed = dict(event.json)
        signed["signatures"] = ours["signatures"]
        return Pdu.from_json(signed, rv)

    async def _check_signatures(self, event: Pdu) -> None:
        failures = await check_event_signatures([event], self._keys)
        if failures:
            servers = ", ".join(required_signers(event))
            raise _invalid(
                f"{event.event_id} is not validly signed by {servers}:"
                f" {failures[event.event_id].message}"
            )

    async def _write(self, event: Pdu) -> tuple[Pdu, int]:
        """Authorise and write ``event`` (the room's lock held): once, or again
        after a partial-state conflict.
        """
        stored = (await self._store.get_events([event.event_id])).get(event.event_id)
        if stored is not None and not stored.outlier:
            # Sent again (a retry after a lost answer): answer as before.
            if stored.rejected_reason is not None or stored.soft_failed:
                raise _forbidden(f"{event.event_id} was refused here before")
            groups = await self._store.get_event_state_groups(event.event_id)
            assert groups is not None  # an event in the DAG has its state
            stored_event = Pdu.from_json(stored.json, event.room_version, check_limits=False)
            return stored_event, groups.before
        for attempt in range(2):
            try:
                context = await compute_event_context(event, self._store, self._persister)
            except UnknownPrevStateError as exc:
                raise _invalid(
                    f"{event.event_id} follows events not known here ({exc.message}); ask"
                    " this server for a template with make_join or make_leave"
                ) from None
            outcome = await run_auth_checks(event, context, self._store)
            if outcome.failure is not None:
                raise _forbidden(
                    f"{event.event_id} is not allowed in {event.room_id}:"
                    f" {outcome.failure.error.message}"
                )
            current = await compute_current_state_after(
                event, outcome.context, self._store, self._persister
            )
            try:
                orderings = await self._persister.persist_events(
                    [event_to_persist(event, outcome.context)],
                    current_state_groups=None if current is None else {event.room_id: current},
                )
            except PartialStateConflictError:
                if attempt:
                    raise MatrixError(
                        f"the state of {event.room_id} changed while {event.event_id} was"
                        " written; send it again",
                        errcode="M_LIMIT_EXCEEDED",
                        http_status=429,
                        retry_after_ms=1000,
                    ) from None
                continue
            if self._notifier is not None:
                await self._notifier.on_new_event(event, orderings[event.event_id])
            assert outcome.context.state_group_before is not None  # not an outlier
            return event, outcome.context.state_group_before
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_join_answer(
        self, event: Pdu, state_group: int, *, omit_members: bool
    ) -> Mapping[str, Any]:
        """The room's state before the join and the auth chains of it and of
        the join; with ``omit_members``, the partial answer of MSC3706.
        """
        # No ``origin``: the spec's answer has none (v1.14), and no PDU has one (v1.12).
        answer: dict[str, Any] = {"members_omitted": omit_members}
        if omit_members:
            kept, servers = await self._partial_state(event, state_group)
            answer["servers_in_room"] = sorted(servers)
        else:
            kept = set((await self._store.get_state_ids(state_group)).values())
        loader = EventLoader(self._store, event.room_version)
        chain = await loader.auth_chain([*kept, event.event_id])
        if omit_members:
            chain -= kept
        chain.discard(event.event_id)
        answer["state"] = await self._raw_events(sorted(kept))
        answer["auth_chain"] = await self._raw_events(sorted(chain))
        answer["event"] = msgspec.Raw(event.raw)
        return answer

    async def _partial_state(self, join: Pdu, state_group: int) -> tuple[set[str], frozenset[str]]:
        """The state a partial answer keeps (every event but the memberships
        the spec lets go), and the servers with a joined member.

        A room with a name or an alias needs no heroes, so only the joiner's
        own membership is read of what is mostly a state of members, and the
        servers come from the members kept between joins
        (:class:`~ranvier.core.room_servers.ServersByGroup`): a join of a
        room of 50,000 members reads its few other state events.
        """
        assert join.state_key is not None  # a membership event
        others = await self._store.get_state_ids_without_type(state_group, _MEMBER)
        kept = set(others.values())
        if _NAME_KEY in others or _CANONICAL_ALIAS_KEY in others:
            own = await self._store.get_state_ids_for_keys(state_group, [(_MEMBER, join.state_key)])
            kept.update(own.values())
            return kept, await self._servers.joined_servers_at(join.room_id, state_group)
        # Heroes are chosen among every member, so every membership is read.
        state_ids = await self._store.get_state_ids(state_group)
        members = {
            state_key: event_id
            for (event_type, state_key), event_id in state_ids.items()
            if event_type == _MEMBER
        }
        stored = await self._store.get_memberships(members.values())
        memberships = {
            user_id: stored[event_id] for user_id, event_id in members.items() if event_id in stored
        }
        servers = frozenset(
            _server_of(user_id)
            for user_id, (_, membership) in memberships.items()
            if membership == "join"
        )
        wanted = [join.state_key, *room_heroes(memberships, join.state_key)]
        kept.update(members[user_id] for user_id in wanted if user_id in members)
        return kept, servers

    async def _raw_events(self, event_ids: Sequence[str]) -> list[msgspec.Raw]:
        # As served: an event a redaction applies to goes out redacted, as
        # /state and /event send it, or its removed content would reach the
        # asking server, which is never shown the redaction, to keep.
        if self._served is None:
            stored = await self._store.get_events(event_ids)
        else:
            stored = dict(await self._served.get_served_events(event_ids))
        return [msgspec.Raw(stored[event_id].json) for event_id in event_ids if event_id in stored]

    # invite.

    async def invite(self, request: Request) -> Mapping[str, Any]:
        room_id, event_id = request.path_params["room_id"], request.path_params["event_id"]
        origin = _origin(request)
        try:
            body = msgspec.json.decode(request.body, type=_InviteBody)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MatrixError(
                f"invalid invite request: {exc}", errcode="M_BAD_JSON", http_status=400
            ) from None
        rv = SUPPORTED_ROOM_VERSIONS.get(body.room_version)
        if rv is None:
            raise MatrixError(
                f"room version {body.room_version!r} is not supported here",
                errcode="M_INCOMPATIBLE_ROOM_VERSION",
                http_status=400,
                room_version=body.room_version,
            )
        await RoomAccess(self._store).check_server_acl(room_id, origin)
        event = Pdu.from_json(bytes(body.event), rv)
        _check_membership_event(event, room_id, event_id, "invite", origin, sender_only=True)
        if event.state_key is None or _server_of(event.state_key) != self._server_name:
            raise _invalid(f"{event.state_key!r} is not a user of {self._server_name}")
        if self._invite_permission is not None:
            await self._invite_permission.check_invite(event.state_key)
        if not content_hash_matches(event.json):
            raise _invalid(f"{event_id} does not match its content hash")
        await self._check_signatures(event)
        await self._check_invite_room_state(rv, room_id, body.invite_room_state)
        signed = self._countersigned(event)
        if not await self._store.get_events([signed.event_id]):
            kept = _with_invite_room_state(signed, body.invite_room_state)
            await self._persister.persist_events([out_of_band_to_persist(kept)])
        return {"event": msgspec.Raw(signed.raw)}

    async def _check_invite_room_state(
        self, rv: RoomVersion, room_id: str, entries: Sequence[msgspec.Raw]
    ) -> None:
        """The spec's checks of ``invite_room_state``: required from room
        version 12 (older versions' servers sent stripped events, which are
        let through unchecked).
        """
        if rv.identifier in _UNCHECKED_INVITE_STATE_VERSIONS:
            return
        try:
            events = [Pdu.from_json(bytes(raw), rv, check_limits=False) for raw in entries]
        except MatrixError as exc:
            raise _invalid(f"invite_room_state holds an invalid event: {exc.message}") from None
        if not any(e.type == CREATE_KEY[0] and e.state_key == CREATE_KEY[1] for e in events):
            raise _invalid("invite_room_state has no m.room.create event")
        strangers = [event.event_id for event in events if event.room_id != room_id]
        if strangers:
            raise _invalid(f"invite_room_state holds events of another room: {strangers[0]}")
        failures = await check_event_signatures(events, self._keys)
        if failures:
            first = failures[min(failures)]
            raise _invalid(f"invite_room_state holds an event not validly signed: {first.message}")


class _StrippedStateEvent(msgspec.Struct):
    type: str
    state_key: str
    content: dict[str, Any]
    sender: str


def _with_invite_room_state(invite: Pdu, entries: Sequence[msgspec.Raw]) -> Pdu:
    """``invite`` with the stripped form of ``entries`` in its ``unsigned``
    as ``invite_room_state``; entries that are not state events are left out.
    """
    stripped = []
    for raw in entries:
        try:
            entry = msgspec.json.decode(raw, type=_StrippedStateEvent)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        stripped.append(msgspec.structs.asdict(entry))
    if not stripped:
        return invite
    unsigned = invite.json.get("unsigned")
    kept = dict(unsigned) if isinstance(unsigned, dict) else {}
    kept["invite_room_state"] = stripped
    return Pdu.from_json({**invite.json, "unsigned": kept}, invite.room_version)


def _check_membership_event(
    event: Pdu,
    room_id: str,
    event_id: str,
    membership: str,
    origin: str,
    *,
    sender_only: bool = False,
) -> None:
    """The spec's checks of a membership event sent to the resident server."""
    if event.event_id != event_id:
        raise _invalid(f"the event's ID is {event.event_id}, not {event_id} as the path says")
    if event.room_id != room_id:
        raise _invalid(f"the event is in {event.room_id}, not {room_id} as the path says")
    if event.type != _MEMBER or event.membership != membership:
        raise _invalid(f"the event is not an m.room.member event with membership {membership!r}")
    if _server_of(event.sender) != origin:
        raise _invalid(f"the event's sender {event.sender} is not a user of {origin}")
    if not sender_only and event.state_key != event.sender:
        raise _invalid(f"the event's state_key {event.state_key!r} is not its sender")


def add_membership_routes(
    router: Router,
    *,
    server_name: str,
    signing_key: SigningKeyLike,
    store: ResidentStateReader,
    persister: EventPersister,
    keys: VerifyKeySource,
    notifier: EventNotifier | None = None,
    room_lock: RoomLock | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    invite_permission: InviteChecker | None = None,
    policy_servers: PolicyRecommender | None = None,
    served: ServedEvents | None = None,
    servers: ServersByGroup | None = None,
) -> None:
    """Serve the membership handshakes as a resident server.

    ``server_name`` and ``signing_key`` are ours (joins and invites get our
    signature); ``keys`` gives other servers' keys (and ours) for their
    events' signatures; ``notifier`` hears of each join and leave written,
    to send it to the room's other servers. ``room_lock`` holds a room's
    lock: pass the :class:`~ranvier.core.ingest.RoomLocks` the rest of the
    server writes the room's events under (``room_locks.hold``); without
    it, the routes have locks of their own. ``clock`` gives
    templates' ``origin_server_ts``. ``invite_permission`` refuses invites
    of our users who block them; ``policy_servers`` checks joins, leaves
    and knocks received with the room's policy server, if it has one.
    ``served`` reads the events the answers carry (send_join's state and
    auth chain, a knock's room state) redacted where a redaction applies;
    without it they go out as stored. ``servers`` gives the servers in the
    room for ``servers_in_room``: pass the one the rest of the server keeps
    (:attr:`RoomServers.by_group <ranvier.core.room_servers.RoomServers.by_group>`),
    whose members of big rooms are kept already; without it, the routes
    keep their own.
    """
    handler = _Membership(
        server_name=server_name,
        signing_key=signing_key,
        store=store,
        persister=persister,
        keys=keys,
        notifier=notifier,
        room_lock=room_lock if room_lock is not None else RoomLocks().hold,
        clock=clock,
        invite_permission=invite_permission,
        policy_servers=policy_servers,
        served=served,
        servers=servers if servers is not None else ServersByGroup(store),
    )
    v1, v2 = "/_matrix/federation/v1", "/_matrix/federation/v2"
    router.add("GET", f"{v1}/make_join/{{room_id}}/{{user_id}}", handler.make_join)
    router.add("PUT", f"{v2}/send_join/{{room_id}}/{{event_id}}", handler.send_join)
    router.add("GET", f"{v1}/make_leave/{{room_id}}/{{user_id}}", handler.make_leave)
    router.add("PUT", f"{v2}/send_leave/{{room_id}}/{{event_id}}", handler.send_leave)
    router.add("GET", f"{v1}/make_knock/{{room_id}}/{{user_id}}", handler.make_knock)
    router.add("PUT", f"{v1}/send_knock/{{room_id}}/{{event_id}}", handler.send_knock)
    router.add("PUT", f"{v2}/invite/{{room_id}}/{{event_id}}", handler.invite)


class FederationJoinClient:
    """The joining server's side of the handshake, over ``http``: a
    :class:`~ranvier.core.interfaces.JoinClient`.

    A refusal comes out as a :class:`~ranvier.errors.MatrixError` with the
    server's errcode and status (and its ``room_version``, for
    ``M_INCOMPATIBLE_ROOM_VERSION``); no usable answer as one with 502.
    """

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def make_join(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        path = f"/_matrix/federation/v1/make_join/{segment(room_id)}/{segment(user_id)}"
        try:
            return await self._http.get_json(destination, path, query={"ver": list(room_versions)})
        except FederationError as exc:
            raise refusal_error(exc, with_room_version=True) from None

    async def send_join(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        omit_members: bool = False,
    ) -> bytes:
        path = f"/_matrix/federation/v2/send_join/{segment(room_id)}/{segment(event_id)}"
        query = {"omit_members": "true"} if omit_members else None
        try:
            response = await self._http.request(
                "PUT", destination, path, query=query, content=dict(event)
            )
        except FederationError as exc:
            raise refusal_error(exc, with_room_version=True) from None
        return response.body


#: The state an invitee's server is shown of the room, as the spec
#: recommends for ``invite_room_state``, with the inviter's membership.
INVITE_ROOM_STATE_KEYS: Final[tuple[StateKey, ...]] = (
    CREATE_KEY,
    JOIN_RULES_KEY,
    ("m.room.name", ""),
    ("m.room.avatar", ""),
    ("m.room.topic", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.encryption", ""),
)


class FederationInviter:
    """Sends our users' invites of other servers' users to those servers
    (``PUT /v2/invite``), for :class:`~ranvier.core.creation.EventCreator`:
    a :class:`~ranvier.core.interfaces.RemoteInviter`.

    The invitee's server is shown the room's current state at
    :data:`INVITE_ROOM_STATE_KEYS` (whole events, as room version 12
    requires) and must answer with the same event signed by it; that
    signature is checked here with ``keys``. A refusal comes out as a
    :class:`~ranvier.errors.MatrixError` with the server's errcode and
    status, no usable answer as one with 502. ``served`` reads the state
    shown redacted where a redaction applies (as stored without it).
    """

    def __init__(
        self,
        http: FederationHttpClient,
        *,
        store: StateReader,
        keys: VerifyKeySource,
        served: ServedEvents | None = None,
    ) -> None:
        self._http = http
        self._store = store
        self._keys = keys
        self._served = served

    async def send_invite(self, event: Pdu) -> Pdu:
        if event.membership != "invite" or event.state_key is None:
            raise _invalid(f"{event.event_id} is not an invite")
        destination = _server_of(event.state_key)
        keys = (*INVITE_ROOM_STATE_KEYS, (_MEMBER, event.sender))
        state = await self._store.get_current_state_ids_for_keys(event.room_id, keys)
        # Redacted where a redaction applies, as the room's state is served.
        if self._served is None:
            stored = await self._store.get_events(state.values())
        else:
            stored = dict(await self._served.get_served_events(state.values()))
        # The request is signed as canonical JSON, so its events travel decoded.
        body = {
            "room_version": event.room_version.identifier,
            "event": event.json,
            "invite_room_state": [
                msgspec.json.decode(stored[event_id].json)
                for event_id in state.values()
                if event_id in stored
            ],
        }
        path = f"/_matrix/federation/v2/invite/{segment(event.room_id)}/{segment(event.event_id)}"
        try:
            response = await self._http.request("PUT", destination, path, content=body)
        except FederationError as exc:
            raise refusal_error(exc, with_room_version=True) from None
        return await self._countersigned(response.body, event, destination)

    async def _countersigned(self, body: bytes, event: Pdu, destination: str) -> Pdu:
        def bad(reason: str) -> MatrixError:
            return MatrixError(
                f"{destination} answered invite {event.event_id} with {reason}",
                errcode="M_UNKNOWN",
                http_status=502,
            )

        try:
            answer = decode_untrusted_json(body, type=_InviteAnswer)
            signed = Pdu.from_json(bytes(answer.event), event.room_version)
        except (*DECODE_ERRORS, msgspec.ValidationError, MatrixError):
            raise bad("something that is not the signed event") from None
        if signed.event_id != event.event_id:
            raise bad(f"another event, {signed.event_id}")
        theirs = sorted(signed.signatures.get(destination, {}))
        redacted = redact(signed.json, signed.room_version)
        for key_id in theirs:
            try:
                key = await self._keys.get_verify_key(
                    destination, key_id, at_ts=signed.origin_server_ts
                )
                verify_signed_json(redacted, destination, key)
            except MatrixError as exc:
                raise bad(f"a signature that does not check out: {exc.message}") from None
        if not theirs:
            raise bad("no signature of its own")
        return signed


class _InviteAnswer(msgspec.Struct):
    event: msgspec.Raw
