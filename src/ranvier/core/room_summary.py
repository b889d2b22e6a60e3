"""Room summaries: ``GET /_matrix/client/v1/room_summary/{roomIdOrAlias}``.

A summary is what a space's hierarchy shows of one room (the published
room list's fields, with the room type, encryption, version and, for
restricted rooms, the rooms whose members may join), read the same way
(:func:`ranvier.core.hierarchy.local_summary`), plus the asking user's
membership.

Who may see it: a user joined to, invited to or knocking on the room;
anyone at all when its join rule is public, knock or knock_restricted or
its history is world-readable (the only rooms shown without an access
token); and a user joined to one of the rooms a restricted room allows.
Anyone else is answered exactly as for a room that does not exist (404
``M_NOT_FOUND``), so the answer does not tell whether a private room is
there.

A room this server is not in is asked of the servers the client names in
``via`` (and, for an alias, those the alias resolved to) through
federation's ``/hierarchy``, with the client the space hierarchy uses; when
none answers, what this server last knew of the room is shown, if anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from ranvier.core.directory import ResolvedAlias
from ranvier.core.hierarchy import (
    HierarchyStore,
    RemoteHierarchies,
    allow_list,
    local_summary,
    open_rule,
)
from ranvier.errors import MatrixError
from ranvier.storage.hierarchy_reads import HierarchyRoomState

__all__ = ["AliasResolver", "RoomSummaries"]

#: Memberships that let a user see a room whatever its rules.
_MEMBER_STATES: Final = frozenset(("join", "invite", "knock"))


class AliasResolver(Protocol):
    """Where an alias points (:class:`ranvier.core.directory.RoomDirectory`)."""

    async def resolve(self, alias: str) -> ResolvedAlias: ...


def _not_found(target: str) -> MatrixError:
    return MatrixError(
        f"room {target} is not known here or may not be seen",
        errcode="M_NOT_FOUND",
        http_status=404,
    )


def _without_children(summary: Mapping[str, Any]) -> dict[str, Any]:
    shown = {key: value for key, value in summary.items() if key != "children_state"}
    if not allow_list(shown):
        shown.pop("allowed_room_ids", None)
    return shown


class RoomSummaries:
    """Summarises one room for a user, or for nobody in particular."""

    def __init__(
        self,
        *,
        server_name: str,
        store: HierarchyStore,
        remote: RemoteHierarchies,
        aliases: AliasResolver,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._remote = remote
        self._aliases = aliases

    async def summary(
        self, user_id: str | None, room_id_or_alias: str, *, via: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The summary of ``room_id_or_alias`` as ``user_id`` (None without
        an access token) may see it; 404 ``M_NOT_FOUND`` otherwise."""
        room_id, servers = await self._target(room_id_or_alias, via)
        local = (await self._store.room_states([room_id], user_id=user_id)).get(room_id)
        summary = await self._summary_of(room_id, local, servers)
        if summary is None:
            raise _not_found(room_id_or_alias)
        membership = local.membership if local is not None else None
        if not await self._may_see(user_id, summary, local, membership):
            raise _not_found(room_id_or_alias)
        if user_id is not None:
            # No membership event at all reads as never joined: "leave".
            summary["membership"] = membership or "leave"
        return summary

    async def _target(self, room_id_or_alias: str, via: Sequence[str]) -> tuple[str, list[str]]:
        """The room ID, and the servers to ask if this one is not in it."""
        if room_id_or_alias.startswith("#"):
            resolved = await self._aliases.resolve(room_id_or_alias)
            return resolved.room_id, list(dict.fromkeys([*via, *resolved.servers]))
        # Room IDs of room version 12 on have no server name.
        if room_id_or_alias.startswith("!") and len(room_id_or_alias) > 1:
            return room_id_or_alias, list(dict.fromkeys(via))
        raise MatrixError(
            f"{room_id_or_alias[:80]!r} is neither a room ID nor a room alias",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )

    async def _summary_of(
        self, room_id: str, local: HierarchyRoomState | None, servers: Sequence[str]
    ) -> dict[str, Any] | None:
        if local is not None and self._server_name in local.joined_servers:
            return local_summary(local)
        others = [server for server in servers if server != self._server_name]
        if others:
            remote = await self._remote.get_space(room_id, others, suggested_only=False)
            if remote is not None:
                return _without_children(remote.room)
        # Nobody answered: what this server last knew of it, if anything.
        return None if local is None else local_summary(local)

    async def _may_see(
        self,
        user_id: str | None,
        summary: Mapping[str, Any],
        local: HierarchyRoomState | None,
        membership: str | None,
    ) -> bool:
        if user_id is not None and membership in _MEMBER_STATES:
            return True
        version = local.room_version if local is not None else summary.get("room_version")
        if open_rule(summary, version if isinstance(version, str) else None):
            return True
        if user_id is None:
            return False
        allowed = allow_list(summary)
        return bool(allowed) and bool(await self._store.rooms_joined_by_user(user_id, allowed))
