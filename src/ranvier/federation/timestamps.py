"""``GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=``: the
event this server holds nearest to a time, for another server's client
jumping to a date (:mod:`ranvier.core.timestamps` is our side of it).

The asking server is held to what the other history reads ask of it
(:mod:`ranvier.federation.room_access`): the room's server ACL first, then
being in the room, or the room being world-readable. While the room's
state here is partial the request is refused with 403 and
:data:`~ranvier.federation.room_access.PARTIAL_STATE_ERRCODE`, as
``/state`` is, so that the server asks another: which servers are in the
room is not yet known here. The event named is any of the room's timeline
here, whoever may see its content: fetching it (``/event``) applies the
history visibility. Only what is held here is looked at; nobody else is
asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.room_servers import RoomServersReader
from ranvier.errors import MatrixError
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.numbers import is_decimal_number
from ranvier.storage.records import StoredEvent

from .room_access import RoomAccess

__all__ = ["TimestampStore", "add_timestamp_route"]

#: Above every stream position: other servers are not bounded by a leave.
_TOP: Final = 2**62


class TimestampStore(RoomServersReader, Protocol):
    """The room's state and versions, and the reads by timestamp."""

    @property
    def timestamps(self) -> _NearestEvents: ...


class _NearestEvents(Protocol):
    async def nearest_events(
        self, room_id: str, ts: int, *, backwards: bool, upto: int, limit: int
    ) -> list[StoredEvent]: ...


def _param(request: Request, name: str) -> str:
    value = request.query_value(name)
    if value is None:
        raise MatrixError(
            f"the query parameter {name!r} is required", errcode="M_MISSING_PARAM", http_status=400
        )
    return value


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def add_timestamp_route(router: Router, *, store: TimestampStore) -> None:
    """Serve ``/timestamp_to_event`` from ``store``."""

    async def timestamp_to_event(request: Request) -> Mapping[str, Any]:
        room_id = request.path_params["room_id"]
        origin = request.origin
        assert origin is not None  # the route is authenticated
        ts_text, direction = _param(request, "ts"), _param(request, "dir")
        if not is_decimal_number(ts_text) or len(ts_text) > 15:
            raise _invalid(f"ts must be a non-negative integer, not {ts_text[:40]!r}")
        if direction not in ("b", "f"):
            raise _invalid(f"dir must be b or f, not {direction[:40]!r}")
        if await store.get_room_version(room_id) is None:
            raise MatrixError(
                f"{room_id} is not known here", errcode="M_NOT_FOUND", http_status=404
            )
        access = RoomAccess(store, partial_rooms=store)
        await access.check_server_acl(room_id, origin)
        await access.check_full_state(room_id)
        if not (
            await access.server_in_room(room_id, origin) or await access.world_readable(room_id)
        ):
            raise MatrixError(
                f"{origin} is not in {room_id}", errcode="M_FORBIDDEN", http_status=403
            )
        ts = int(ts_text)
        found = await store.timestamps.nearest_events(
            room_id, ts, backwards=direction == "b", upto=_TOP, limit=1
        )
        if not found:
            way = "before" if direction == "b" else "after"
            raise MatrixError(
                f"no event of {room_id} at or {way} {ts} is held here",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        return {"event_id": found[0].event_id, "origin_server_ts": found[0].origin_server_ts}

    router.add("GET", "/_matrix/federation/v1/timestamp_to_event/{room_id}", timestamp_to_event)
