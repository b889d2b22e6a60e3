"""Admins putting users into rooms and giving them power there (Synapse's
``/join/{roomIdOrAlias}`` and ``/rooms/{roomIdOrAlias}/make_room_admin``).

Joining
-------

An admin joins one of this server's users to a room as if the user had
joined: the join takes the ordinary path (:class:`~ranvier.core.room_joins.RoomJoins`),
here or through another server, with an alias's servers and the
``server_name`` hints to try. When the rules refuse that join (an
invite-only room, say) and this server is in the room, a local user joined
to it with the power to invite invites the user (the requesting admin if
they can, else the most powerful), and the user joins on that invite. A
room whose server refuses the join and that no local user is in stays
refused, as does a banned user, a guest a room does not let in, and a
room an admin blocked.

Making a room admin
-------------------

An admin gives a user the power of the most powerful user of this server
joined to a room, through that user, who must have the power to change
the room's power levels. One of this server's users not joined is joined
first (invited by that user first unless the room is public); a user of
another server is invited unless they are in the room, or it is public.
The power levels then give the user the granter's level. A creator of a
room of version 12 has a power above any level and is never in ``users``:
a user a creator raises gets the highest of 100 and the levels ``users``
gives; a creator is raised by nobody. Nothing is written when no local
user can do it (400, saying why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ranvier.errors import AuthError, MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.storage.admin_reads import UserRow

from .directory import ResolvedAlias
from .interfaces import EventSender
from .local_powers import LocalPowers, PowerReader, read_local_powers
from .room_joins import JoinedRoom

__all__ = ["AdminRoomMembership"]

_POWER_LEVELS = "m.room.power_levels"


class Accounts(Protocol):
    """:class:`ranvier.storage.admin.AdminStorage`."""

    async def user(self, user_id: str) -> UserRow | None: ...

    async def is_room_blocked(self, room_id: str) -> bool: ...


class Joiner(Protocol):
    """:class:`ranvier.core.room_joins.RoomJoins`."""

    async def join(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: Sequence[str] = (),
        *,
        reason: str | None = None,
        guest: bool = False,
    ) -> JoinedRoom: ...


class AliasResolver(Protocol):
    """:class:`ranvier.core.directory.RoomDirectory`."""

    async def resolve(self, alias: str) -> ResolvedAlias: ...


class Events(EventSender, Protocol):
    """:class:`ranvier.core.creation.EventCreator`."""

    async def invite(
        self, sender: str, room_id: str, target: str, *, reason: str | None = None
    ) -> str: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _cannot(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_FORBIDDEN", http_status=400)


def _room_not_found(room_id: str) -> MatrixError:
    return MatrixError(
        f"room {room_id} is not known to this server", errcode="M_NOT_FOUND", http_status=404
    )


class AdminRoomMembership:
    """Joins users to rooms and makes them room admins; see the module's doc."""

    def __init__(
        self,
        *,
        server_name: str,
        accounts: Accounts,
        joins: Joiner,
        directory: AliasResolver,
        events: Events,
        state: PowerReader,
    ) -> None:
        self._server_name = server_name
        self._accounts = accounts
        self._joins = joins
        self._directory = directory
        self._events = events
        self._state = state

    def _is_local(self, user_id: str) -> bool:
        return user_id.partition(":")[2] == self._server_name

    async def _resolve(self, room_id_or_alias: str) -> ResolvedAlias:
        """The room named, with the alias's servers; 404 for an unknown alias."""
        if room_id_or_alias.startswith("#"):
            return await self._directory.resolve(room_id_or_alias)
        if not room_id_or_alias.startswith("!") or len(room_id_or_alias) > 255:
            raise _invalid(f"{room_id_or_alias[:255]!r} is neither a room ID nor a room alias")
        return ResolvedAlias(room_id_or_alias, ())

    async def _local_account(self, user_id: object) -> UserRow:
        if user_id is None:
            raise MatrixError("'user_id' is required", errcode="M_MISSING_PARAM", http_status=400)
        if type(user_id) is not str or not is_valid_user_id(user_id):
            raise _invalid(f"{str(user_id)[:255]!r} is not a user ID")
        if not self._is_local(user_id):
            raise _invalid(
                f"{user_id} is not a user of this server: only local users can be joined"
            )
        row = await self._accounts.user(user_id)
        if row is None:
            raise MatrixError(f"user {user_id} not found", errcode="M_NOT_FOUND", http_status=404)
        if row.deactivated:
            raise _invalid(f"{user_id} is deactivated")
        return row

    async def _check_not_blocked(self, room_id: str) -> None:
        # Before any invite: the join after it would be refused anyway.
        if await self._accounts.is_room_blocked(room_id):
            raise MatrixError(
                f"room {room_id} is blocked on this server: its users may not join it",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    # Joining.

    async def join(
        self,
        admin_id: str,
        room_id_or_alias: str,
        body: Mapping[str, Any],
        servers: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Join the body's ``user_id`` to the room; ``{"room_id": ...}``."""
        account = await self._local_account(body.get("user_id"))
        user_id = account.user_id
        resolved = await self._resolve(room_id_or_alias)
        room_id = resolved.room_id
        candidates = [*servers, *resolved.servers]
        await self._check_not_blocked(room_id)
        try:
            joined = await self._joins.join(user_id, room_id, candidates, guest=account.guest)
        except MatrixError as refusal:
            if refusal.errcode != "M_FORBIDDEN" or account.guest:
                raise
            await self._invite_in(admin_id, user_id, room_id, refusal)
            joined = await self._joins.join(user_id, room_id, candidates, guest=account.guest)
        return {"room_id": joined.room_id}

    async def _invite_in(
        self, admin_id: str, user_id: str, room_id: str, refusal: MatrixError
    ) -> None:
        """Invite ``user_id`` through a local user who may, after the rules
        refused their join; raise ``refusal`` where an invite cannot help."""
        powers = await read_local_powers(self._state, self._server_name, room_id, about=(user_id,))
        if powers is None or not powers.joined_local():
            raise refusal
        if powers.memberships.get(user_id) in ("join", "invite", "ban"):
            raise refusal
        inviter = powers.strongest(powers.named_level("invite"), prefer=admin_id)
        if inviter is None:
            raise MatrixError(
                f"{user_id} may not join {room_id} ({refusal.message}), and no user of"
                f" {self._server_name} in it has the power to invite them",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        await self._events.invite(inviter, room_id, user_id)

    # Making a room admin.

    async def make_room_admin(
        self, admin_id: str, room_id_or_alias: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Give the body's ``user_id`` (the admin by default) the power of
        the room's most powerful local user; ``{}``."""
        target = body.get("user_id", admin_id)
        if type(target) is not str or not is_valid_user_id(target):
            raise _invalid(f"{str(target)[:255]!r} is not a user ID")
        if self._is_local(target):
            account = await self._accounts.user(target)
            if account is None:
                raise MatrixError(
                    f"user {target} not found", errcode="M_NOT_FOUND", http_status=404
                )
        room_id = (await self._resolve(room_id_or_alias)).room_id
        powers = await read_local_powers(self._state, self._server_name, room_id, about=(target,))
        if powers is None:
            raise _room_not_found(room_id)
        granter = self._granter(powers)
        level = powers.highest_grantable(granter)
        raise_power = not powers.is_creator(target) and powers.level(target) < level
        await self._bring_in(powers, granter, target)
        if raise_power:
            await self._grant(powers, granter, target, level)
        return {}

    def _granter(self, powers: LocalPowers) -> str:
        """The local user who changes the power levels; 400 saying why none can."""
        joined = powers.joined_local()
        if not joined:
            raise _cannot(f"no user of {self._server_name} is joined to {powers.room_id}")
        required = powers.state_level(_POWER_LEVELS)
        granter = powers.strongest(required)
        if granter is None:
            best = min(joined, key=lambda user_id: (-powers.level(user_id), user_id))
            raise _cannot(
                f"no user of {self._server_name} joined to {powers.room_id} may change its"
                f" power levels: that takes {required}, and the most powerful, {best},"
                f" has {powers.level(best)}"
            )
        return granter

    async def _bring_in(self, powers: LocalPowers, granter: str, target: str) -> None:
        """Join a local ``target`` (invited first unless the room is public),
        or invite another server's unless it is public; nothing for a user
        already there."""
        membership = powers.memberships.get(target)
        if membership == "join" or (membership == "invite" and not self._is_local(target)):
            return
        if self._is_local(target):
            await self._check_not_blocked(powers.room_id)
            if membership != "invite" and powers.join_rule != "public":
                await self._events.invite(granter, powers.room_id, target)
            await self._joins.join(target, powers.room_id)
        elif powers.join_rule != "public":
            await self._events.invite(granter, powers.room_id, target)

    async def _grant(self, powers: LocalPowers, granter: str, target: str, level: int) -> None:
        content: dict[str, Any] = (
            dict(powers.power_levels.content) if powers.power_levels is not None else {}
        )
        users = content.get("users")
        users = dict(users) if isinstance(users, dict) else {}
        if powers.power_levels is None and not powers.is_creator(granter):
            # Without a power levels event the creator has 100 by the rules;
            # the first one sent must say so, or the creator loses it.
            users[granter] = powers.level(granter)
        users[target] = level
        content["users"] = users
        try:
            await self._events.send_event(
                granter, powers.room_id, _POWER_LEVELS, content, state_key=""
            )
        except AuthError as exc:
            raise _cannot(
                f"{granter} may not change the power levels of {powers.room_id}: {exc.message}"
            ) from None
