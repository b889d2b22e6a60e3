"""The client-server API's rooms: creating them, memberships, sending
events and state, and reading state, events and members.

* ``POST /createRoom``
* ``POST /join/{roomIdOrAlias}`` (``via`` and the older ``server_name``
  query parameters, each repeatable), ``POST /rooms/{roomId}/join``,
  ``/leave``, ``/invite``, ``/kick``, ``/ban``, ``/unban``, ``/forget``
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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol, get_args

from ranvier.api.appservices import massaged_timestamp
from ranvier.core.accounts import Requester
from ranvier.core.client_txns import ClientTransactions
from ranvier.core.creation import EventCreator, Preset
from ranvier.core.directory import RoomDirectory
from ranvier.core.pagination import parse_pagination_token
from ranvier.core.room_forgetting import RoomForgetting
from ranvier.core.room_joins import RoomJoins
from ranvier.core.rooms import RoomReader
from ranvier.core.shadow_bans import NO_DELAY, ShadowBans
from ranvier.core.suspension import (
    SuspendedAction,
    refuse_if_suspended,
    refuse_send_if_suspended,
    suspended_error,
)
from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION
from ranvier.web import Request, Router

__all__ = ["CLIENT_V3", "Leaves", "RequestAuth", "add_room_routes"]

CLIENT_V3: Final = "/_matrix/client/v3"
_CANONICAL_ALIAS: Final = "m.room.canonical_alias"
_MEMBER: Final = "m.room.member"


class RequestAuth(Protocol):
    """Who a request comes from (:class:`ranvier.api.auth.Auth`)."""

    async def get_user(self, request: Request) -> Requester: ...


class Leaves(Protocol):
    """Users' own leaves (:class:`ranvier.core.room_leaves.RoomLeaves`, or
    :class:`ranvier.core.server_notices.NoticeGuardedLeaves` in front of it)."""

    async def leave(self, user_id: str, room_id: str, *, reason: str | None = None) -> str: ...


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
    ) -> None:
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
        if visibility not in ("public", "private"):
            raise MatrixError(
                f"visibility must be public or private, not {visibility!r}",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
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
        requester = await self._auth.get_user(request)
        refuse_if_suspended(requester, "join")
        reason = _reason(_body(request))
        servers = [*request.query.get("via", ()), *request.query.get("server_name", ())]
        joined = await self._joins.join(
            requester.user_id,
            request.path_params["room_id_or_alias"],
            servers,
            reason=reason,
            guest=requester.guest,
        )
        return {"room_id": joined.room_id}

    async def join_by_id(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        refuse_if_suspended(requester, "join")
        room_id = _room_id(request)
        reason = _reason(_body(request))
        joined = await self._joins.join(
            requester.user_id, room_id, reason=reason, guest=requester.guest
        )
        return {"room_id": joined.room_id}

    async def leave(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        reason = _reason(_body(request))
        await self._leaves.leave(requester.user_id, room_id, reason=reason)
        return {}

    async def invite(self, request: Request) -> Mapping[str, Any]:
        requester, room_id, target, reason = await self._targeted(request, refused="invite")
        if requester.shadow_banned:
            await self._creator.rehearse_invite(requester.user_id, room_id, target, reason=reason)
            await self._shadow_bans.pause()
            return {}
        await self._creator.invite(requester.user_id, room_id, target, reason=reason)
        return {}

    async def kick(self, request: Request) -> Mapping[str, Any]:
        requester, room_id, target, reason = await self._targeted(request)
        await self._creator.kick(requester.user_id, room_id, target, reason=reason)
        return {}

    async def ban(self, request: Request) -> Mapping[str, Any]:
        requester, room_id, target, reason = await self._targeted(request)
        await self._creator.ban(requester.user_id, room_id, target, reason=reason)
        return {}

    async def unban(self, request: Request) -> Mapping[str, Any]:
        requester, room_id, target, reason = await self._targeted(request)
        if await self._reader.membership(target, room_id) != "ban":
            raise MatrixError(
                f"{target} is not banned from {room_id}", errcode="M_FORBIDDEN", http_status=403
            )
        await self._creator.unban(requester.user_id, room_id, target, reason=reason)
        return {}

    async def _targeted(
        self, request: Request, *, refused: SuspendedAction | None = None
    ) -> tuple[Requester, str, str, str | None]:
        """``(requester, room ID, target user, reason)`` of a request that
        changes another user's membership: invite, kick, ban and unban;
        ``refused`` to a suspended sender."""
        requester = await self._auth.get_user(request)
        if refused is not None:
            refuse_if_suspended(requester, refused)
        room_id = _room_id(request)
        body = _body(request, required=True)
        return requester, room_id, _target(body), _reason(body)

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

        event_id = await self._transactions.run(
            requester.user_id, requester.device_id, scope, room_id, send
        )
        return {"event_id": event_id}

    async def put_state(self, request: Request) -> Mapping[str, Any]:
        requester = await self._auth.get_user(request)
        room_id = _room_id(request)
        event_type = request.path_params["event_type"]
        state_key = request.path_params.get("state_key", "")
        content = _body(request, required=True)
        ts = massaged_timestamp(request, requester)
        refuse_if_suspended(requester, "state")
        await self._reader.check_joined(requester.user_id, room_id)
        if event_type == _CANONICAL_ALIAS and state_key == "":
            await self._directory.check_canonical_alias(room_id, content)
        if requester.shadow_banned and _faked_state(event_type, content):
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

        event_id = await self._transactions.run(
            requester.user_id, requester.device_id, scope, room_id, send
        )
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
            device_id=requester.device_id,
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


def _faked_state(event_type: str, content: Mapping[str, Any]) -> bool:
    """Whether a shadow-banned member's ``/state`` request is faked: all
    but the member events that end or bar a membership (a leave, kick, ban
    or unban). The sender is joined, so a ``join`` of their own is a new
    profile in this room, and an ``invite`` an invite."""
    return event_type != _MEMBER or content.get("membership") in ("join", "invite")


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
) -> None:
    """Serve the rooms endpoints listed in the module's docstring;
    ``shadow_bans`` paces the answers faked for shadow-banned users (not
    at all without it)."""
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
    )
    room = f"{CLIENT_V3}/rooms/{{room_id}}"
    router.add("POST", f"{CLIENT_V3}/createRoom", rooms.create_room)
    router.add("POST", f"{CLIENT_V3}/join/{{room_id_or_alias}}", rooms.join)
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
