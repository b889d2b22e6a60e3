"""Rooms as the server's admins see, shut and purge them (Synapse's room
admin API, the subset this server has the data for).

Deleting a room here shuts it for this server's users: every local user
joined to it, invited to it or knocking on it leaves through the ordinary
leave (so the room's other servers hear of it), its local aliases are
removed and it leaves the published room list. With ``block`` no local
user may join it again. Then, unless ``purge`` is false (it is true by
default, as Synapse has it), every stored row of the room is deleted in
one write (:mod:`ranvier.storage.room_purge`): the server behaves as if it
never had the room, but for the block, which stays. Media files stay too.
A purge is refused, deleting nothing, while a local user is still in the
room after the leaves (one failed), unless ``force_purge`` is given; the
refusal is the deletion's ``error``. The leaves other servers have not
acknowledged yet (one was down, say) outlive the purge: it keeps them for
those servers, and the federation sender delivers them when it can
(:mod:`ranvier.storage.pdu_outbox`). The work is done before the
``DELETE`` is answered; what happened is kept (in memory, the most recent
:data:`MAX_DELETIONS_KEPT`) for the delete status endpoints.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.auth import StateKey
from ranvier.storage.admin_reads import BlockRecord, RoomRow
from ranvier.storage.records import StoredEvent
from ranvier.storage.room_purge import PurgeResult

from .builder import wall_clock_ms
from .client_events import client_event

__all__ = ["MAX_DELETIONS_KEPT", "AdminRooms", "RoomListRequest"]

#: How many deletions' outcomes are kept for the status endpoints.
MAX_DELETIONS_KEPT: Final = 1000

# order_by -> (the row's value, whether the largest come first), as
# Synapse orders its room list; its two old names are taken too.
_ORDERS: Final[dict[str, tuple[Callable[[RoomRow], Any], bool]]] = {
    "name": (lambda row: row.name, False),
    "canonical_alias": (lambda row: row.canonical_alias, False),
    "joined_members": (lambda row: row.joined_members, True),
    "joined_local_members": (lambda row: row.joined_local_members, True),
    "version": (lambda row: row.version, True),
    "creator": (lambda row: row.creator, False),
    "encryption": (lambda row: row.encryption, False),
    "federatable": (lambda row: row.federatable, True),
    "public": (lambda row: row.public, True),
    "join_rules": (lambda row: row.join_rules, False),
    "guest_access": (lambda row: row.guest_access, False),
    "history_visibility": (lambda row: row.history_visibility, False),
    "state_events": (lambda row: row.state_events, True),
}
_ORDER_ALIASES: Final = {"alphabetical": "name", "size": "joined_members"}


class AdminRoomStore(Protocol):
    """:class:`ranvier.storage.admin.AdminStorage`."""

    async def rooms(self, server_name: str) -> list[RoomRow]: ...

    async def room(self, server_name: str, room_id: str) -> RoomRow | None: ...

    async def room_members(self, room_id: str) -> list[str]: ...

    async def local_members_to_remove(self, room_id: str, server_name: str) -> list[str]: ...

    async def block_of(self, room_id: str) -> BlockRecord | None: ...

    async def block_room(self, room_id: str, user_id: str, blocked_ts: int) -> None: ...

    async def unblock_room(self, room_id: str) -> None: ...


class CurrentState(Protocol):
    """:class:`ranvier.storage.Storage`."""

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]: ...

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]: ...


class RoomPurger(Protocol):
    """:class:`ranvier.storage.room_purge.RoomPurgeStorage`."""

    async def purge_room(
        self,
        room_id: str,
        *,
        refuse_if_members_of: str | None = None,
        origin: str | None = None,
        leaves: Collection[str] = (),
    ) -> PurgeResult | None: ...


class OwedPduSender(Protocol):
    """:class:`ranvier.federation.sender.FederationSender`: told of the
    leaves a purge kept for a destination, to send them."""

    def pdu_outbox_filled(self, destination: str) -> None: ...


class RoomLeaver(Protocol):
    """:class:`ranvier.core.room_leaves.RoomLeaves`."""

    async def leave(self, user_id: str, room_id: str, *, reason: str | None = None) -> str: ...


class AliasRemover(Protocol):
    """:class:`ranvier.core.directory.RoomDirectory`."""

    async def room_aliases(self, room_id: str) -> list[str]: ...

    async def delete_alias(self, user_id: str, alias: str, *, is_admin: bool = False) -> None: ...


class RoomUnlister(Protocol):
    """:class:`ranvier.core.room_list.RoomList`."""

    async def set_visibility(
        self, user_id: str, room_id: str, visibility: object, *, is_admin: bool = False
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class RoomListRequest:
    """A page of ``GET /_synapse/admin/v1/rooms`` as its parameters ask."""

    offset: int = 0
    limit: int = 100
    order_by: str = "name"
    backwards: bool = False
    search_term: str | None = None
    public_rooms: bool | None = None
    empty_rooms: bool | None = None


@dataclass
class _Deletion:
    delete_id: str
    room_id: str
    status: str = "active"
    error: str | None = None
    kicked_users: list[str] = field(default_factory=list)
    failed_to_kick_users: list[str] = field(default_factory=list)
    local_aliases: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "delete_id": self.delete_id,
            "room_id": self.room_id,
            "status": self.status,
            "shutdown_room": {
                "kicked_users": list(self.kicked_users),
                "failed_to_kick_users": list(self.failed_to_kick_users),
                "local_aliases": list(self.local_aliases),
                "new_room_id": None,
            },
        }
        if self.error is not None:
            entry["error"] = self.error
        return entry


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _room_not_found(room_id: str) -> MatrixError:
    return MatrixError(f"room {room_id} not found", errcode="M_NOT_FOUND", http_status=404)


def check_room_id(room_id: str) -> None:
    """400 ``M_INVALID_PARAM`` unless ``room_id`` looks like a room ID."""
    if not room_id.startswith("!") or len(room_id) > 255:
        raise _invalid(f"{room_id[:255]!r} is not a room ID")


def _summary(row: RoomRow) -> dict[str, Any]:
    return {
        "room_id": row.room_id,
        "name": row.name,
        "canonical_alias": row.canonical_alias,
        "joined_members": row.joined_members,
        "joined_local_members": row.joined_local_members,
        "version": row.version,
        "creator": row.creator,
        "encryption": row.encryption,
        "federatable": row.federatable,
        "public": row.public,
        "join_rules": row.join_rules,
        "guest_access": row.guest_access,
        "history_visibility": row.history_visibility,
        "state_events": row.state_events,
        "room_type": row.room_type,
    }


def _matches(row: RoomRow, request: RoomListRequest) -> bool:
    if request.public_rooms is not None and row.public != request.public_rooms:
        return False
    if request.empty_rooms is not None and (row.joined_members == 0) != request.empty_rooms:
        return False
    term = request.search_term
    if term:
        folded = term.casefold()
        alias_local = (row.canonical_alias or "")[1:].partition(":")[0]
        return (
            folded in (row.name or "").casefold()
            or folded in alias_local.casefold()
            or term in row.room_id
        )
    return True


def _ordered(rows: list[RoomRow], order_by: str, backwards: bool) -> list[RoomRow]:
    value, largest_first = _ORDERS[order_by]
    # Ties, and rooms without the value, by room ID, so pages do not shift.
    rows = sorted(rows, key=lambda row: row.room_id)
    present = [row for row in rows if value(row) is not None]
    missing = [row for row in rows if value(row) is None]
    present.sort(key=value, reverse=largest_first != backwards)
    return present + missing


class AdminRooms:
    """Lists, shows, blocks and shuts rooms for admins; see the module's doc."""

    def __init__(
        self,
        *,
        server_name: str,
        store: AdminRoomStore,
        state: CurrentState,
        leaves: RoomLeaver,
        aliases: AliasRemover,
        room_list: RoomUnlister,
        purger: RoomPurger,
        owed_pdus: OwedPduSender | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._state = state
        self._leaves = leaves
        self._aliases = aliases
        self._room_list = room_list
        self._purger = purger
        self._owed_pdus = owed_pdus
        self._clock = clock
        self._deletions: OrderedDict[str, _Deletion] = OrderedDict()

    async def list_rooms(self, request: RoomListRequest) -> dict[str, Any]:
        """A page of the rooms this server has state of."""
        order_by = _ORDER_ALIASES.get(request.order_by, request.order_by)
        if order_by not in _ORDERS:
            raise _invalid(f"unknown order_by {request.order_by[:40]!r}")
        rows = [row for row in await self._store.rooms(self._server_name) if _matches(row, request)]
        rows = _ordered(rows, order_by, request.backwards)
        page = rows[request.offset : request.offset + request.limit]
        answer: dict[str, Any] = {
            "rooms": [_summary(row) for row in page],
            "offset": request.offset,
            "total_rooms": len(rows),
        }
        if request.offset + len(page) < len(rows):
            answer["next_batch"] = answer["next_token"] = request.offset + len(page)
        if request.offset > 0:
            answer["prev_batch"] = max(0, request.offset - request.limit)
        return answer

    async def _row(self, room_id: str) -> RoomRow:
        check_room_id(room_id)
        row = await self._store.room(self._server_name, room_id)
        if row is None:
            raise _room_not_found(room_id)
        return row

    async def require_room(self, room_id: str) -> None:
        """Return if this server knows ``room_id``; 404 ``M_NOT_FOUND`` if not."""
        await self._row(room_id)

    async def room(self, room_id: str) -> dict[str, Any]:
        row = await self._row(room_id)
        return {
            **_summary(row),
            "topic": row.topic,
            "avatar": row.avatar,
            "joined_local_devices": row.joined_local_devices,
            "forgotten": False,
        }

    async def members(self, room_id: str) -> dict[str, Any]:
        await self._row(room_id)
        members = await self._store.room_members(room_id)
        return {"members": members, "total": len(members)}

    async def state(self, room_id: str, event_type: str | None) -> dict[str, Any]:
        await self._row(room_id)
        ids = await self._state.get_current_state_ids(room_id)
        wanted = [eid for (kind, _), eid in ids.items() if event_type is None or kind == event_type]
        events = await self._state.get_events(wanted)
        ordered = sorted(events.values(), key=lambda event: event.stream_ordering)
        return {"state": [client_event(event) for event in ordered]}

    # Blocking.

    async def block_status(self, room_id: str) -> dict[str, Any]:
        check_room_id(room_id)
        record = await self._store.block_of(room_id)
        if record is None:
            return {"block": False}
        return {"block": True, "user_id": record.user_id}

    async def set_block(
        self, admin_id: str, room_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Block or unblock ``room_id``, known here or not."""
        check_room_id(room_id)
        block = body.get("block")
        if not isinstance(block, bool):
            raise BadJsonError("'block' must be true or false")
        if block:
            await self._store.block_room(room_id, admin_id, self._clock())
        else:
            await self._store.unblock_room(room_id)
        return {"block": block}

    # Deleting.

    async def delete(self, admin_id: str, room_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Shut ``room_id`` for this server's users, then purge it unless
        told not to; see the module's doc."""
        return {"delete_id": (await self._delete(admin_id, room_id, body)).delete_id}

    async def delete_now(
        self, admin_id: str, room_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """:meth:`delete`, answered as the first version of the endpoint
        answers: what the shut did, or the error that stopped the purge."""
        deletion = await self._delete(admin_id, room_id, body)
        if deletion.status == "failed":
            raise MatrixError(deletion.error or "the purge failed", http_status=400)
        answer: dict[str, Any] = deletion.json()["shutdown_room"]
        return answer

    async def _delete(self, admin_id: str, room_id: str, body: Mapping[str, Any]) -> _Deletion:
        check_room_id(room_id)
        block = body.get("block", False)
        purge = body.get("purge", True)
        force_purge = body.get("force_purge", False)
        for key, value in (("block", block), ("purge", purge), ("force_purge", force_purge)):
            if not isinstance(value, bool):
                raise BadJsonError(f"'{key}' must be true or false")
        for key in ("room_name", "message", "new_room_user_id"):
            if body.get(key) is not None and not isinstance(body.get(key), str):
                raise BadJsonError(f"'{key}' must be a string")
        if body.get("new_room_user_id") is not None:
            raise _invalid("new_room_user_id is not supported: no replacement room is made")
        if await self._store.room(self._server_name, room_id) is None:
            raise _invalid(f"unknown room {room_id}: this server has no state of it")
        deletion = _Deletion(secrets.token_urlsafe(12), room_id)
        self._keep(deletion)
        try:
            leaves = await self._shut(admin_id, deletion, block=block)
        except MatrixError as exc:
            deletion.status, deletion.error = "failed", exc.message
            raise
        if purge:
            deletion.status = "purging"
            try:
                purged = await self._purger.purge_room(
                    room_id,
                    refuse_if_members_of=None if force_purge else self._server_name,
                    origin=self._server_name,
                    leaves=leaves,
                )
            except MatrixError as exc:
                # The room is shut; the purge's refusal is the outcome to read.
                deletion.status, deletion.error = "failed", exc.message
                return deletion
            except Exception:
                deletion.status, deletion.error = "failed", "the purge failed: nothing was deleted"
                raise
            if purged is not None and self._owed_pdus is not None:
                for destination in purged.owed_destinations:
                    self._owed_pdus.pdu_outbox_filled(destination)
        deletion.status = "complete"
        return deletion

    async def _shut(self, admin_id: str, deletion: _Deletion, *, block: bool) -> list[str]:
        """Shut the room for local users; the event IDs of their leaves."""
        room_id = deletion.room_id
        # Blocked first, so nobody rejoins while the others leave.
        if block:
            await self._store.block_room(room_id, admin_id, self._clock())
        leaves: list[str] = []
        for user_id in await self._store.local_members_to_remove(room_id, self._server_name):
            try:
                leaves.append(await self._leaves.leave(user_id, room_id))
            except MatrixError:
                deletion.failed_to_kick_users.append(user_id)
            else:
                deletion.kicked_users.append(user_id)
        for alias in await self._aliases.room_aliases(room_id):
            await self._aliases.delete_alias(admin_id, alias, is_admin=True)
            deletion.local_aliases.append(alias)
        await self._room_list.set_visibility(admin_id, room_id, "private", is_admin=True)
        return leaves

    def _keep(self, deletion: _Deletion) -> None:
        self._deletions[deletion.delete_id] = deletion
        while len(self._deletions) > MAX_DELETIONS_KEPT:
            self._deletions.popitem(last=False)

    def delete_status(self, room_id: str) -> dict[str, Any]:
        """Every kept deletion of ``room_id``; 404 if there is none."""
        check_room_id(room_id)
        results = [d.json() for d in self._deletions.values() if d.room_id == room_id]
        if not results:
            raise MatrixError(
                f"no deletion of {room_id} is known", errcode="M_NOT_FOUND", http_status=404
            )
        return {"results": results}

    def delete_status_by_id(self, delete_id: str) -> dict[str, Any]:
        deletion = self._deletions.get(delete_id)
        if deletion is None:
            raise MatrixError(
                f"delete {delete_id[:64]!r} not found", errcode="M_NOT_FOUND", http_status=404
            )
        return deletion.json()
