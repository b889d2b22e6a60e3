"""Room aliases: ``#name:server`` names for rooms.

An alias belongs to the server its server part names. This server keeps
its own aliases (storage's ``room_aliases``) and asks the owning server,
over federation (``/query/directory``), about every other alias.

The rules applied here:

* An alias is ``#``, a localpart of any characters but ``:`` and NUL, ``:``
  and a server name, 255 bytes at most: the grammar of user IDs with
  another sigil. Anything else is 400 ``M_INVALID_PARAM``.
* Only aliases of this server may be created here (400 ``M_INVALID_PARAM``
  otherwise), only for a room the creating user is joined to (403), and
  an alias already taken is 409 ``M_UNKNOWN``, as the spec's example has it.
* An alias may be deleted by the user who created it, a server admin, or a
  user of the room with the power to send ``m.room.canonical_alias``
  (which is what pointing the room's own aliases elsewhere needs).
* Resolving one of our aliases names this server and the other servers
  joined to the room, which a joining server may ask in turn.
* An alias in an application service's exclusive namespace is created and
  deleted by that service's users alone (400 ``M_EXCLUSIVE``); one of ours
  that is not known is asked of the services interested in it, which may
  make it then, before it is looked up again.
* A client's ``m.room.canonical_alias`` lists only aliases that are valid
  (400 ``M_INVALID_PARAM``) and point at that room (400 ``M_BAD_ALIAS``),
  as the spec asks of servers; aliases it already lists are not checked
  again, so a room whose alias was deleted can still drop it, or change
  its other aliases.
* Deleting an alias the room's ``m.room.canonical_alias`` lists also takes
  it out of that event, sent by the deleting user, so clients stop showing
  a name that no longer leads anywhere. A user without the power to send
  that event still deletes the alias (the spec's recommendation); the
  event then keeps it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.auth import CREATE_KEY, POWER_LEVELS_KEY, is_valid_user_id
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import get_send_level, get_user_power_level
from ranvier.protocol.room_versions import get_room_version

from .appservices import AppServiceQueries, AppServices
from .builder import Clock, wall_clock_ms
from .interfaces import EventSender, StateReader

__all__ = [
    "AliasStore",
    "CreatedRoomPublisher",
    "DirectoryQueryClient",
    "JoinedServers",
    "ResolvedAlias",
    "RoomDirectory",
    "parse_room_alias",
]

_MEMBER: Final = "m.room.member"
_CANONICAL_ALIAS: Final = "m.room.canonical_alias"


@dataclass(frozen=True, slots=True)
class ResolvedAlias:
    """Where an alias points: the room, and servers that can help join it."""

    room_id: str
    servers: tuple[str, ...]


class AliasStore(Protocol):
    """This server's aliases (:class:`ranvier.storage.aliases.AliasStorage`)."""

    async def create_alias(
        self, alias: str, room_id: str, creator: str, created_ts: int
    ) -> bool: ...

    async def get_alias(self, alias: str) -> tuple[str, str] | None: ...

    async def delete_alias(self, alias: str) -> bool: ...

    async def get_room_aliases(self, room_id: str) -> Sequence[str]: ...


class DirectoryQueryClient(Protocol):
    """Asks another server what one of its aliases points at.

    Raises 404 ``M_NOT_FOUND`` when that server has no such alias, and 502
    when it gives no usable answer.
    """

    async def query_directory(self, server_name: str, alias: str) -> ResolvedAlias: ...


class CreatedRoomPublisher(Protocol):
    """Publishes a new room by its ``/createRoom`` visibility
    (:class:`ranvier.core.room_list.RoomList`).
    """

    async def on_room_created(self, room_id: str, visibility: str) -> None: ...


class JoinedServers(Protocol):
    """Which servers are joined to a room (:class:`ranvier.core.room_servers.RoomServers`)."""

    async def joined_servers(self, room_id: str) -> Collection[str]: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def parse_room_alias(alias: object) -> tuple[str, str]:
    """``(localpart, server name)`` of a room alias; 400 ``M_INVALID_PARAM`` if it is not one."""
    if type(alias) is not str or not alias.startswith("#"):
        raise _invalid(f"{alias!r} is not a room alias: an alias starts with '#'")
    localpart, sep, server_name = alias[1:].partition(":")
    # An alias follows the user ID grammar, with '#' for '@'.
    if not sep or not localpart or not is_valid_user_id("@" + alias[1:]):
        raise _invalid(f"{alias!r} is not a room alias: it must be #localpart:server.name")
    return localpart, server_name


class RoomDirectory:
    """Creates, resolves and deletes aliases by the rules above.

    ``store`` reads rooms (their version, membership and power levels);
    ``servers`` names the servers joined to a room; ``client`` asks other
    servers about their aliases (without one, they resolve to 404).
    """

    def __init__(
        self,
        *,
        server_name: str,
        aliases: AliasStore,
        store: StateReader,
        servers: JoinedServers,
        client: DirectoryQueryClient | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.server_name = server_name
        self._aliases = aliases
        self._store = store
        self._servers = servers
        self._client = client
        self._clock = clock
        #: The published room list, which ``/createRoom``'s ``visibility``
        #: reaches through :meth:`publish_created_room`; set by the server.
        self.room_list: CreatedRoomPublisher | None = None
        #: Application services, whose exclusive aliases are theirs alone.
        self.app_services = AppServices()
        #: Asks services about unknown aliases of theirs; set by the server.
        self.app_service_queries: AppServiceQueries | None = None
        #: Sends the canonical alias event a deleted alias is taken out of;
        #: set by the server (without one, that event is left as it is).
        self.state_sender: EventSender | None = None

    async def may_change_directory(self, user_id: str, room_id: str) -> bool:
        """Whether ``user_id`` is joined to the room with the power to send
        ``m.room.canonical_alias``: what changing the room's aliases, or its
        place in the published room list, takes.
        """
        return await self._may_edit_aliases(user_id, room_id)

    async def publish_created_room(self, room_id: str, visibility: str) -> None:
        """What ``/createRoom`` calls once the room exists: ``visibility``
        ``public`` publishes it in the room list.
        """
        if self.room_list is not None:
            await self.room_list.on_room_created(room_id, visibility)

    def check_local_alias(self, alias: str) -> None:
        """Raise 400 unless ``alias`` is an alias this server may create."""
        _, server_name = parse_room_alias(alias)
        if server_name != self.server_name:
            raise _invalid(f"{alias} belongs to {server_name}; this server is {self.server_name}")

    def check_may_create(self, user_id: str, alias: str) -> None:
        """Raise unless ``user_id`` may create ``alias`` on this server, as
        :meth:`create_alias` would: checked before a room is made for an
        alias, so that a refusal leaves no room behind.
        """
        self.check_local_alias(alias)
        self.app_services.check_alias_change(user_id, alias)

    async def is_taken(self, alias: str) -> bool:
        """Whether one of our aliases already points somewhere."""
        return await self._aliases.get_alias(alias) is not None

    async def create_alias(
        self, user_id: str, alias: str, room_id: str, *, app_service: str | None = None
    ) -> None:
        """Point ``alias`` at ``room_id`` for ``user_id``, who must be joined to it.

        The application service ``app_service`` (the one whose token made
        the request, if one did) needs no membership for an alias of its
        own namespace: answering a query for an unknown alias is how a
        bridge makes one, pointing it at a room it may not be in.
        """
        self.check_may_create(user_id, alias)
        if type(room_id) is not str or not room_id.startswith("!"):
            raise _invalid(f"{room_id!r} is not a room ID")
        if await self._store.get_room_version(room_id) is None:
            raise MatrixError(
                f"room {room_id} is not known here", errcode="M_NOT_FOUND", http_status=404
            )
        service = None if app_service is None else self.app_services.by_id(app_service)
        in_namespace = service is not None and service.is_interested_in_alias(alias)
        if not in_namespace and await self._membership(user_id, room_id) != "join":
            raise MatrixError(
                f"{user_id} is not in room {room_id}, so cannot give it an alias",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if not await self._aliases.create_alias(alias, room_id, user_id, self._clock()):
            raise MatrixError(
                f"room alias {alias} already exists", errcode="M_UNKNOWN", http_status=409
            )

    async def resolve(self, alias: str) -> ResolvedAlias:
        """Where ``alias`` points, asking its server if it is another's; 404 if nowhere."""
        _, server_name = parse_room_alias(alias)
        if server_name == self.server_name:
            return await self.resolve_local(alias)
        if self._client is None:
            raise _unknown_alias(alias)
        return await self._client.query_directory(server_name, alias)

    async def resolve_local(self, alias: str) -> ResolvedAlias:
        """Where one of our aliases points, with the servers joined to the room."""
        _, server_name = parse_room_alias(alias)
        found = None if server_name != self.server_name else await self._aliases.get_alias(alias)
        if (
            found is None
            and server_name == self.server_name
            and self.app_service_queries is not None
            and await self.app_service_queries.query_alias(alias)
        ):
            found = await self._aliases.get_alias(alias)
        if found is None:
            raise _unknown_alias(alias)
        room_id = found[0]
        others = sorted(set(await self._servers.joined_servers(room_id)) - {self.server_name})
        return ResolvedAlias(room_id, (self.server_name, *others))

    async def delete_alias(
        self,
        user_id: str,
        alias: str,
        *,
        is_admin: bool = False,
        update_canonical_alias: bool = True,
    ) -> None:
        """Remove one of our aliases, if ``user_id`` may (see the module's rules).

        ``update_canonical_alias`` false leaves the room's canonical alias
        event alone: for a user whose events are not to reach the room.
        """
        self.check_local_alias(alias)
        self.app_services.check_alias_change(user_id, alias)
        found = await self._aliases.get_alias(alias)
        if found is None:
            raise _unknown_alias(alias)
        room_id, creator = found
        if not (user_id == creator or is_admin or await self._may_edit_aliases(user_id, room_id)):
            raise MatrixError(
                f"{user_id} did not create {alias} and may not change room {room_id}'s aliases",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if not await self._aliases.delete_alias(alias):
            raise _unknown_alias(alias)
        if update_canonical_alias:
            await self._drop_from_canonical_alias(user_id, room_id, alias)

    async def _drop_from_canonical_alias(self, user_id: str, room_id: str, alias: str) -> None:
        if self.state_sender is None:
            return
        content = await self._canonical_alias_content(room_id)
        if content is None:
            return
        changed = dict(content)
        if changed.get("alias") == alias:
            del changed["alias"]
        alt_aliases = changed.get("alt_aliases")
        if type(alt_aliases) is list and alias in alt_aliases:
            kept = [other for other in alt_aliases if other != alias]
            if kept:
                changed["alt_aliases"] = kept
            else:
                del changed["alt_aliases"]
        if changed == content:
            return
        try:
            await self.state_sender.send_event(
                user_id, room_id, _CANONICAL_ALIAS, changed, state_key=""
            )
        except MatrixError as error:
            # The alias is gone either way; only a refusal by the room's
            # rules leaves the event naming it, as the spec allows.
            if error.http_status != 403:
                raise

    async def _canonical_alias_content(self, room_id: str) -> dict[str, Any] | None:
        """The content of the room's current ``m.room.canonical_alias``, if any."""
        key = (_CANONICAL_ALIAS, "")
        current = await self._store.get_current_state_ids_for_keys(room_id, [key])
        version = await self._store.get_room_version(room_id)
        if key not in current or version is None:
            return None
        row = (await self._store.get_events([current[key]])).get(current[key])
        if row is None:
            return None
        return Pdu.from_json(row.json, get_room_version(version), check_limits=False).content

    async def check_canonical_alias(self, room_id: str, content: Mapping[str, Any]) -> None:
        """Raise unless every alias ``content`` adds to the room's current
        ``m.room.canonical_alias`` is valid and resolves to ``room_id``.

        An alias of another server is asked of that server; one nobody
        knows is ``M_BAD_ALIAS``, while a server that cannot be reached is
        that failure, so the client can tell a wrong alias from a
        passing fault.
        """
        listed = _canonical_aliases(content)
        if not listed:
            return
        for alias in listed:
            parse_room_alias(alias)
        present: set[str] = set()
        old = await self._canonical_alias_content(room_id)
        if old is not None:
            try:
                present = set(_canonical_aliases(old))
            except MatrixError:
                # A malformed old event vouches for none of its aliases.
                present = set()
        for alias in dict.fromkeys(listed):
            if alias in present:
                continue
            try:
                resolved = await self.resolve(alias)
            except MatrixError as error:
                if error.errcode != "M_NOT_FOUND":
                    raise
                raise _bad_alias(f"room alias {alias} does not exist") from None
            if resolved.room_id != room_id:
                raise _bad_alias(f"room alias {alias} points to another room, not {room_id}")

    async def room_aliases(self, room_id: str) -> list[str]:
        """Our aliases of ``room_id``; who may ask is the caller's check."""
        return list(await self._aliases.get_room_aliases(room_id))

    async def _may_edit_aliases(self, user_id: str, room_id: str) -> bool:
        version = await self._store.get_room_version(room_id)
        if version is None or await self._membership(user_id, room_id) != "join":
            return False
        rv = get_room_version(version)
        state = await self._store.get_current_state_ids_for_keys(
            room_id, [CREATE_KEY, POWER_LEVELS_KEY]
        )
        rows = await self._store.get_events(list(state.values()))
        events: Mapping[str, Pdu] = {
            event_id: Pdu.from_json(row.json, rv, check_limits=False)
            for event_id, row in rows.items()
        }
        create = events.get(state.get(CREATE_KEY, ""))
        power_levels = events.get(state.get(POWER_LEVELS_KEY, ""))
        level = get_user_power_level(user_id, power_levels=power_levels, create=create)
        return level >= get_send_level(power_levels, _CANONICAL_ALIAS, state=True)

    async def _membership(self, user_id: str, room_id: str) -> str | None:
        key = (_MEMBER, user_id)
        found = await self._store.get_current_state_ids_for_keys(room_id, [key])
        event_id = found.get(key)
        if event_id is None:
            return None
        row = (await self._store.get_events([event_id])).get(event_id)
        if row is None:
            return None
        version = await self._store.get_room_version(room_id)
        assert version is not None  # the room has state
        return Pdu.from_json(row.json, get_room_version(version), check_limits=False).membership


def _canonical_aliases(content: Mapping[str, Any]) -> list[str]:
    """The aliases an ``m.room.canonical_alias`` content lists, ``alias``
    first; 400 ``M_INVALID_PARAM`` if either field is of the wrong type."""
    aliases: list[str] = []
    alias = content.get("alias")
    if alias is not None:
        if type(alias) is not str:
            raise _invalid("alias must be a string")
        aliases.append(alias)
    alt_aliases = content.get("alt_aliases")
    if alt_aliases is not None:
        if type(alt_aliases) is not list or not all(type(a) is str for a in alt_aliases):
            raise _invalid("alt_aliases must be a list of strings")
        aliases.extend(alt_aliases)
    return aliases


def _bad_alias(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_ALIAS", http_status=400)


def _unknown_alias(alias: str) -> MatrixError:
    return MatrixError(f"room alias {alias} is not known", errcode="M_NOT_FOUND", http_status=404)
