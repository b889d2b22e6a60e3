"""The client-server API's rooms: creating them, memberships, sending
events and state, and reading state, events and members.

* ``POST /createRoom``
* ``POST /join/{roomIdOrAlias}`` and ``POST /knock/{roomIdOrAlias}``
  (``via`` and the older ``server_name`` query parameters, each
  repeatable, name servers to go through when this server is not in the
  room), ``POST /rooms/{roomId}/join``, ``/leave`` (which withdraws a
  knock too), ``/invite``, ``/kick``, ``/ban``, ``/unban``, ``/forget``
* ``PUT /rooms/{roomId}/send/{eventType}/{txnId}``,
  ``PUT /rooms/{roomId}/state/{eventType}[/{stateKey}]``, both taking an
  application service's ``ts`` (timestamp massaging:
  :func:`ranvier.api.appservices.massaged_timestamp`),
  ``PUT /rooms/{roomId}/redact/{eventId}/{txnId}``
* ``GET /rooms/{roomId}/state``, ``/state/{eventType}[/{stateKey}]``,
  ``/event/{eventId}``, ``/members``, ``/joined_members``, and
  ``GET /joined_rooms``
* ``GET /v1/mutual_rooms``: the rooms both the requester and another user
  are joined to, in one batch (so a ``from`` token is never valid)

Every route needs an access token. Handlers check the request's shape
(400 ``M_BAD_JSON`` for a body of the wrong shape, ``M_NOT_JSON`` for one
that is not JSON) and hand the rest to core: who may do and see what is
decided there (:mod:`ranvier.core.creation`, :mod:`ranvier.core.rooms`).
A shadow-banned user's events, invites and per-room profile are checked
and answered as sent, and dropped (:mod:`ranvier.core.shadow_bans`).

An ``m.room.member`` event sent through ``/state`` is the membership
change it names, made as the endpoint for that change makes it: a join or
knock of the sender's own (through another server for a room this one is
not in, routed by the room ID's server and the inviter's), a leave of
their own (declining an invite or withdrawing a knock too), an invite or
ban of another user, and another's leave, which lifts a ban or else
kicks. Every membership route goes through one method
(:meth:`_Rooms.change_membership`), with the same checks, rate limits
and errors; the event keeps every key of the content sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, Protocol, get_args

from ranvier.api.appservices import massaged_timestamp
from ranvier.api.ratelimit import Category, UserLimits
from ranvier.core.accounts import Requester
from ranvier.core.client_txns import ClientTransactions, TxnOwner
from ranvier.core.creation import EventCreator, Preset, member_event_content
from ranvier.core.directory import RoomDirectory
from ranvier.core.interfaces import Leaves
from ranvier.core.knocks import Knocked
from ranvier.core.pagination import parse_pagination_token
from ranvier.core.room_forgetting import RoomForgetting
from ranvier.core.room_joins import RoomJoins
from ranvier.core.room_list import check_visibility
from ranvier.core.rooms import RoomReader
from ranvier.core.shadow_bans import NO_DELAY, ShadowBans
from ranvier.core.suspension import (
    refuse_if_suspended,
    refuse_send_if_suspended,
    suspended_error,
)
from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION
from ranvier.web import Request, Router

__all__ = [
    "CLIENT_V3",
    "Knocks",
    "Leaves",
    "MembershipAction",
    "RequestAuth",
    "add_room_routes",
]

CLIENT_V3: Final = "/_matrix/client/v3"
_CANONICAL_ALIAS: Final = "m.room.canonical_alias"
_MEMBER: Final = "m.room.member"


class RequestAuth(Protocol):
    """Who a request comes from (:class:`ranvier.api.auth.Auth`)."""

    async def get_user(self, request: Request) -> Requester: ...


class Knocks(Protocol):
    """Users' knocks (:class:`ranvier.core.knocks.RoomKnocks`)."""

    async def knock_event(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: Sequence[str] = (),
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> Knocked: ...


#: What a client may do to a membership: the spec's memberships, with a
#: leave of another user split into a kick and the lifting of a ban.
MembershipAction = Literal["join", "knock", "leave", "invite", "ban", "kick", "unban"]

#: The memberships a member event may name (the spec's ``membership``
#: enum), each with the action it stands for when it is the sender's own.
_MEMBERSHIPS: Final[Mapping[str, MembershipAction]] = {
    "invite": "invite",
    "join": "join",
    "knock": "knock",
    "leave": "leave",
    "ban": "ban",
}

#: The rate-limit categories of the actions that have routes of their own,
#: where a member event sent through /state counts too.
_ACTION_CATEGORIES: Final[Mapping[MembershipAction, Category]] = {
    "join": "join",
    "invite": "invite",
}


class _Changed(NamedTuple):
    """A membership changed: the room (resolved, for a join by alias) and the event."""

    room_id: str
    event_id: str


def _bad_json(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_JSON", http_status=400)


def _body(request: Request, *, required: bool = False) -> dict[str, Any]:
    """The request's JSON object; ``{}`` for a missing body unless ``required``."""
    content = request.content
    if content is None and not required:
        return {}
    if not isinstance(content, dict):
        raise _bad_json("the request body must be a JSON object")
    return content


def _optional(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _bad_json(f"{name} must be of type {_JSON_TYPES.get(names, names)}")
    return value


_JSON_TYPES: Final = {"str": "string", "dict": "object", "list": "array", "bool": "boolean"}


def _reason(body: Mapping[str, Any]) -> str | None:
    value: str | None = _optional(body, "reason", str)
    return value


def _reason_only(body: Mapping[str, Any]) -> dict[str, Any]:
    """The member event content a membership route keeps of its body: the
    reason, if given."""
    reason = _reason(body)
    return {} if reason is None else {"reason": reason}


def _target(body: Mapping[str, Any]) -> str:
    user_id = body.get("user_id")
    if user_id is None:
        raise MatrixError("user_id is required", errcode="M_MISSING_PARAM", http_status=400)
    if not isinstance(user_id, str):
        raise _bad_json("user_id must be a string")
    return user_id


def _room_id(request: Request) -> str:
    room_id = request.path_params["room_id"]
    if not room_id.startswith("!"):
        raise MatrixError(
            f"{room_id!r} is not a room ID", errcode="M_INVALID_PARAM", http_status=400
        )
    return room_id


class _Rooms:
    def __init__(
        self,
        *,
        server_name: str,
        auth: RequestAuth,
        creator: EventCreator,
        reader: RoomReader,
        joins: RoomJoins,
        leaves: Leaves,
        transactions: ClientTransactions,
        directory: RoomDirectory,
        forgetting: RoomForgetting,
        shadow_bans: ShadowBans,
        knocks: Knocks | None,
        limits: UserLimits | None,
    ) -> None:
        self._knocks = knocks
        self._limits = limits
        self._shadow_bans = shadow_bans
        self._forgetting = forgetting
        self._leaves = leaves
        self._server_name = server_name
        self._auth = auth
        self._creator = creator
        self._reader = reader
        self._joins = joins
        self._transactions = transactions
        self._directory = directory

    # --- Creating a room ------------------------------------------------------------

    async def create_room(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        refuse_if_suspended(requester, "create_room")
        body = _body(request)
        visibility = _optional(body, "visibility", str) or "private"
        check_visibility(visibility)
        preset = _optional(body, "preset", str)
        if preset is None:
            preset = "public_chat" if visibility == "public" else "private_chat"
        if preset not in get_args(Preset):
            raise MatrixError(
                f"unknown preset {preset!r}; presets are {', '.join(get_args(Preset))}",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        name = _optional(body, "name", str)
        topic = _optional(body, "topic", str)
        invite = _optional(body, "invite", list) or []
        if not all(isinstance(user_id, str) for user_id in invite):
            raise _bad_json("invite must be a list of user IDs")
        if _optional(body, "invite_3pid", list):
            raise MatrixError(
                "invites by third-party identifier are not supported here",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        initial_state = list(_optional(body, "initial_state", list) or [])
        if not all(isinstance(item, dict) for item in initial_state):
            raise _bad_json("each initial_state entry must be a JSON object")
        override = _optional(body, "power_level_content_override", dict)
        creation_content = _optional(body, "creation_content", dict)
        room_version = _optional(body, "room_version", str) or DEFAULT_ROOM_VERSION
        is_direct = bool(_optional(body, "is_direct", bool))
        alias_name = _optional(body, "room_alias_name", str)
        alias = None
        if alias_name is not None:
            alias = f"#{alias_name}:{self._server_name}"
            self._directory.check_may_create(requester.user_id, alias)
            if await self._directory.is_taken(alias):
                raise _alias_in_use(alias)
            if not any(
                item.get("type") == _CANONICAL_ALIAS and item.get("state_key", "") == ""
                for item in initial_state
            ):
                initial_state.append(
                    {"type": _CANONICAL_ALIAS, "state_key": "", "content": {"alias": alias}}
                )
        room_id = await self._creator.create_room(
            requester.user_id,
            preset=preset,
            name=name,
            topic=topic,
            invite=invite,
            initial_state=initial_state,
            power_level_content_override=override,
            creation_content=creation_content,
            room_version=room_version,
            is_direct=is_direct,
            send_invites=not requester.shadow_banned,
        )
        if invite and requester.shadow_banned:
            await self._shadow_bans.pause()
        if creation_content is not None and "predecessor" in creation_content:
            await self._joins.joined_at_creation(requester.user_id, room_id)
        await self._directory.publish_created_room(room_id, visibility)
        if alias is not None:
            try:
                await self._directory.create_alias(requester.user_id, alias, room_id)
            except MatrixError as exc:
                if exc.http_status == 409:
                    raise _alias_in_use(alias) from None
                raise
        return {"room_id": room_id}

    # --- Memberships ----------------------------------------------------------------

    async def join(self, request: Request) -> Mapping[str, Any]:
        return await self._own_by_id_or_alias(request, "join")

    async def knock(self, request: Request) -> Mapping[str, Any]:
        return await self._own_by_id_or_alias(request, "knock")

    async def _own_by_id_or_alias(
        self, request: Request, membership: Literal["join", "knock"]
    ) -> Mapping[str, Any]:
        """``POST /join/{roomIdOrAlias}`` and ``/knock/{roomIdOrAlias}``: the
        requester's own join or knock, through the servers the query names."""
        requester = await self._auth.get_user(request)
        content = _reason_only(_body(request))
        servers = [*request.query.get("via", ()), *request.query.get("server_name", ())]
        room = request.path_params["room_id_or_alias"]
        changed = await self.change_membership(
            requester, room, requester.user_id, membership, content, servers=servers
        )
        return {"room_id": changed.room_id}

    async def join_by_id(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        content = _reason_only(_body(request))
        joined = await self.change_membership(
            requester, room_id, requester.user_id, "join", content
        )
        return {"room_id": joined.room_id}

    async def leave(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        content = _reason_only(_body(request))
        await self.change_membership(requester, room_id, requester.user_id, "leave", content)
        return {}

    async def invite(self, request: Request) -> Mapping[str, Any]:
        return await self._targeted(request, "invite")

    async def kick(self, request: Request) -> Mapping[str, Any]:
        return await self._targeted(request, "kick")

    async def ban(self, request: Request) -> Mapping[str, Any]:
        return await self._targeted(request, "ban")

    async def unban(self, request: Request) -> Mapping[str, Any]:
        return await self._targeted(request, "unban")

    async def _targeted(self, request: Request, action: MembershipAction) -> Mapping[str, Any]:
        """A request that changes another user's membership, named by the
        body's ``user_id``: invite, kick, ban and unban."""
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        body = _body(request, required=True)
        target = _target(body)
        await self.change_membership(requester, room_id, target, action, _reason_only(body))
        return {}

    async def change_membership(
        self,
        requester: Requester,
        room: str,
        target: str,
        action: MembershipAction,
        content: Mapping[str, Any],
        *,
        servers: Sequence[str] = (),
        origin_server_ts: int | None = None,
    ) -> _Changed:
        """Change ``target``'s membership of ``room`` as ``requester`` asks:
        the one path of the membership routes and of member events sent
        through ``/state``.

        ``room`` is a room ID, or an alias for a join or knock, which
        ``servers`` may help reach. ``content`` is the member event's
        content as the client gave it, its shape checked, whatever its
        ``membership`` says (the action decides that);
        ``origin_server_ts`` is an application service's timestamp, for
        the events made here: a join or leave made from another server's
        template is dated now (:meth:`ranvier.core.room_joins.RoomJoins.join`,
        :meth:`ranvier.core.room_leaves.RoomLeaves.leave`).
        A suspended sender may not join, knock or invite; a shadow-banned
        one's invites, and joins of a room already joined (a change of
        per-room profile), are checked and faked.
        """
        user_id = requester.user_id
        if not is_valid_user_id(target):
            raise MatrixError(
                f"{target!r} is not a user ID", errcode="M_INVALID_PARAM", http_status=400
            )
        if action in ("join", "knock", "leave") and target != user_id:
            raise MatrixError(
                f"{user_id} may not {action} for {target}: a user {action}s for themselves",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        ts = origin_server_ts
        if action == "join":
            refuse_if_suspended(requester, "join")
            if requester.shadow_banned and await self._rejoins(user_id, room):
                joined_again = member_event_content("join", content)
                faked = await self._creator.rehearse_event(
                    user_id, room, _MEMBER, joined_again, state_key=user_id, origin_server_ts=ts
                )
                await self._shadow_bans.pause()
                return _Changed(room, faked)
            joined = await self._joins.join(
                user_id,
                room,
                servers,
                guest=requester.guest,
                content=content,
                origin_server_ts=ts,
            )
            return _Changed(joined.room_id, joined.event_id)
        if action == "knock":
            refuse_if_suspended(requester, "knock")
            if self._knocks is None:
                raise MatrixError(
                    "this server does not knock on rooms", errcode="M_UNKNOWN", http_status=501
                )
            knocked = await self._knocks.knock_event(
                user_id, room, servers, content=content, origin_server_ts=ts
            )
            return _Changed(knocked.room_id, knocked.event_id)
        if action == "leave":
            left = await self._leaves.leave(user_id, room, content=content, origin_server_ts=ts)
            return _Changed(room, left)
        if action == "invite":
            refuse_if_suspended(requester, "invite")
            if requester.shadow_banned:
                faked = await self._creator.rehearse_invite(user_id, room, target, content=content)
                await self._shadow_bans.pause()
                return _Changed(room, faked)
            invited = await self._creator.invite(
                user_id, room, target, content=content, origin_server_ts=ts
            )
            return _Changed(room, invited)
        if action == "ban":
            banned = await self._creator.ban(
                user_id, room, target, content=content, origin_server_ts=ts
            )
            return _Changed(room, banned)
        if action == "unban":
            if await self._reader.membership(target, room) != "ban":
                raise MatrixError(
                    f"{target} is not banned from {room}", errcode="M_FORBIDDEN", http_status=403
                )
            unbanned = await self._creator.unban(
                user_id, room, target, content=content, origin_server_ts=ts
            )
            return _Changed(room, unbanned)
        kicked = await self._creator.kick(
            user_id, room, target, content=content, origin_server_ts=ts
        )
        return _Changed(room, kicked)

    async def _rejoins(self, user_id: str, room: str) -> bool:
        """Whether a join of ``user_id`` is of a room they are joined to."""
        return room.startswith("!") and await self._reader.membership(user_id, room) == "join"

    async def forget(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        await self._forgetting.forget(requester.user_id, _room_id(request))
        return {}

    # --- Sending --------------------------------------------------------------------

    async def send(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        event_type = request.path_params["event_type"]
        txn_id = request.path_params["txn_id"]
        content = _body(request, required=True)
        # The scope is the path alone: a retry with another ts is the same
        # transaction, answered with the event the first request sent.
        scope = f"/rooms/{room_id}/send/{event_type}/{txn_id}"
        ts = massaged_timestamp(request, requester)
        if refuse_send_if_suspended(requester, event_type):
            # A suspended account may take back its own events only.
            redacts = content.get("redacts")
            if not isinstance(redacts, str):
                raise suspended_error("redact_others")
            await self._reader.check_may_redact(requester.user_id, room_id, redacts, suspended=True)

        async def send() -> str:
            # The auth rules refuse a message from a non-member under the
            # room's lock, so membership is read only to say why a send
            # failed: a non-member hears that it is not in the room, as
            # before anything else, and a member hears the failure itself.
            try:
                if not requester.shadow_banned:
                    return await self._creator.send_event(
                        requester.user_id, room_id, event_type, content, origin_server_ts=ts
                    )
                faked = await self._creator.rehearse_event(
                    requester.user_id, room_id, event_type, content, origin_server_ts=ts
                )
            except MatrixError:
                await self._reader.check_joined(requester.user_id, room_id)
                raise
            await self._shadow_bans.pause()
            return faked

        event_id = await self._transactions.run(TxnOwner.of(requester), scope, room_id, send)
        return {"event_id": event_id}

    async def put_state(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        event_type = request.path_params["event_type"]
        state_key = request.path_params.get("state_key", "")
        content = _body(request, required=True)
        ts = massaged_timestamp(request, requester)
        if event_type == _MEMBER:
            return await self._put_member(requester, room_id, state_key, content, ts)
        refuse_if_suspended(requester, "state")
        await self._reader.check_joined(requester.user_id, room_id)
        if event_type == _CANONICAL_ALIAS and state_key == "":
            await self._directory.check_canonical_alias(room_id, content)
        if requester.shadow_banned:
            event_id = await self._creator.rehearse_event(
                requester.user_id,
                room_id,
                event_type,
                content,
                state_key=state_key,
                origin_server_ts=ts,
            )
            await self._shadow_bans.pause()
            return {"event_id": event_id}
        event_id = await self._creator.send_event(
            requester.user_id,
            room_id,
            event_type,
            content,
            state_key=state_key,
            origin_server_ts=ts,
        )
        return {"event_id": event_id}

    async def _put_member(
        self,
        requester: Requester,
        room_id: str,
        target: str,
        content: Mapping[str, Any],
        ts: int | None,
    ) -> Mapping[str, Any]:
        """A member event sent through ``/state``: the membership change it
        names, counted against that change's rate limit as well as a message."""
        membership = content.get("membership")
        if type(membership) is not str or membership not in _MEMBERSHIPS:
            raise _bad_json(
                f"membership must be one of {', '.join(_MEMBERSHIPS)}, not {membership!r}"
            )
        _reason(content)
        action = _MEMBERSHIPS[membership]
        if action == "leave" and target != requester.user_id:
            banned = await self._reader.membership(target, room_id) == "ban"
            action = "unban" if banned else "kick"
        category = _ACTION_CATEGORIES.get(action)
        if category is not None and self._limits is not None:
            await self._limits.check(category, requester)
        changed = await self.change_membership(
            requester, room_id, target, action, content, origin_server_ts=ts
        )
        return {"event_id": changed.event_id}

    async def redact(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        target = request.path_params["event_id"]
        txn_id = request.path_params["txn_id"]
        reason = _reason(_body(request))
        content: dict[str, Any] = {"redacts": target}
        if reason is not None:
            content["reason"] = reason
        scope = f"/rooms/{room_id}/redact/{target}/{txn_id}"

        async def send() -> str:
            await self._reader.check_may_redact(
                requester.user_id, room_id, target, suspended=requester.suspended
            )
            if not requester.shadow_banned:
                return await self._creator.send_event(
                    requester.user_id, room_id, "m.room.redaction", content
                )
            faked = await self._creator.rehearse_event(
                requester.user_id, room_id, "m.room.redaction", content
            )
            await self._shadow_bans.pause()
            return faked

        event_id = await self._transactions.run(TxnOwner.of(requester), scope, room_id, send)
        return {"event_id": event_id}

    # --- Reading --------------------------------------------------------------------

    async def get_state(self, request: Request) -> list[Any]:
        requester = await self._auth.get_user(request)
        return await self._reader.state(requester.user_id, _room_id(request))

    async def get_state_event(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        form = request.query_value("format") or "content"
        if form not in ("content", "event"):
            raise MatrixError(
                f"format must be content or event, not {form!r}",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        event = await self._reader.state_event(
            requester.user_id,
            room_id,
            request.path_params["event_type"],
            request.path_params.get("state_key", ""),
        )
        if form == "event":
            return event
        content: Mapping[str, Any] = event["content"]
        return content

    async def get_event(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        return await self._reader.event(
            requester.user_id,
            _room_id(request),
            request.path_params["event_id"],
            sent_by=TxnOwner.of(requester),
        )

    async def get_members(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        at = request.query_value("at")
        chunk = await self._reader.members(
            requester.user_id,
            _room_id(request),
            membership=request.query_value("membership"),
            not_membership=request.query_value("not_membership"),
            at=None if at is None else parse_pagination_token(at),
        )
        return {"chunk": chunk}

    async def get_joined_members(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        return {"joined": await self._reader.joined_members(requester.user_id, _room_id(request))}

    async def get_joined_rooms(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        return {"joined_rooms": await self._reader.joined_rooms(requester.user_id)}

    async def get_mutual_rooms(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        other = request.query_value("user_id")
        if other is None:
            raise MatrixError(
                "the query parameter 'user_id' is required",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        if not is_valid_user_id(other) or other == requester.user_id:
            raise MatrixError(
                f"{other!r} is not another user's ID",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        if request.query_value("from") is not None:
            raise MatrixError(
                "this server gives no 'from' tokens: its first answer holds every room",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        joined = [
            room_id
            for room_id in await self._reader.joined_rooms(requester.user_id)
            if await self._reader.membership(other, room_id) == "join"
        ]
        return {"joined": joined, "count": len(joined)}


def _alias_in_use(alias: str) -> MatrixError:
    return MatrixError(f"room alias {alias} is taken", errcode="M_ROOM_IN_USE", http_status=400)


def add_room_routes(
    router: Router,
    *,
    server_name: str,
    auth: RequestAuth,
    creator: EventCreator,
    reader: RoomReader,
    joins: RoomJoins,
    leaves: Leaves,
    transactions: ClientTransactions,
    directory: RoomDirectory,
    forgetting: RoomForgetting,
    shadow_bans: ShadowBans | None = None,
    knocks: Knocks | None = None,
    limits: UserLimits | None = None,
) -> None:
    """Serve the rooms endpoints listed in the module's docstring;
    ``shadow_bans`` paces the answers faked for shadow-banned users (not
    at all without it). ``knocks`` makes knocks, and serves ``/knock``
    (without it a knock sent as a member event is answered 501);
    ``limits`` counts member events sent through ``/state`` against the
    limits of the routes they stand for (their routes limit the rest: see
    :mod:`ranvier.api.ratelimit`)."""
    rooms = _Rooms(
        server_name=server_name,
        auth=auth,
        creator=creator,
        reader=reader,
        joins=joins,
        leaves=leaves,
        transactions=transactions,
        directory=directory,
        forgetting=forgetting,
        shadow_bans=shadow_bans or ShadowBans(delay_seconds=NO_DELAY),
        knocks=knocks,
        limits=limits,
    )
    room = f"{CLIENT_V3}/rooms/{{room_id}}"
    router.add("POST", f"{CLIENT_V3}/createRoom", rooms.create_room)
    router.add("POST", f"{CLIENT_V3}/join/{{room_id_or_alias}}", rooms.join)
    if knocks is not None:
        router.add("POST", f"{CLIENT_V3}/knock/{{room_id_or_alias}}", rooms.knock)
    router.add("GET", f"{CLIENT_V3}/joined_rooms", rooms.get_joined_rooms)
    router.add("GET", "/_matrix/client/v1/mutual_rooms", rooms.get_mutual_rooms)
    router.add("POST", f"{room}/join", rooms.join_by_id)
    router.add("POST", f"{room}/leave", rooms.leave)
    router.add("POST", f"{room}/invite", rooms.invite)
    router.add("POST", f"{room}/kick", rooms.kick)
    router.add("POST", f"{room}/ban", rooms.ban)
    router.add("POST", f"{room}/unban", rooms.unban)
    router.add("POST", f"{room}/forget", rooms.forget)
    router.add("PUT", f"{room}/send/{{event_type}}/{{txn_id}}", rooms.send)
    router.add("PUT", f"{room}/state/{{event_type}}", rooms.put_state)
    router.add("PUT", f"{room}/state/{{event_type}}/{{state_key}}", rooms.put_state)
    router.add("PUT", f"{room}/redact/{{event_id}}/{{txn_id}}", rooms.redact)
    router.add("GET", f"{room}/state", rooms.get_state)
    router.add("GET", f"{room}/state/{{event_type}}", rooms.get_state_event)
    router.add("GET", f"{room}/state/{{event_type}}/{{state_key}}", rooms.get_state_event)
    router.add("GET", f"{room}/event/{{event_id}}", rooms.get_event)
    router.add("GET", f"{room}/members", rooms.get_members)
    router.add("GET", f"{room}/joined_members", rooms.get_joined_members)
