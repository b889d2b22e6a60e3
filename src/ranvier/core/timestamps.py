"""Jump to a date: ``GET /rooms/{roomId}/timestamp_to_event?ts=&dir=``.

The answer is the room's event whose ``origin_server_ts`` is nearest to
``ts`` in the direction asked (``b``: at ``ts`` or before it, ``f``: at it
or after it), among the events of its timeline here: in its DAG, neither
rejected nor soft failed. Of events at one timestamp, ``b`` takes the last
written, ``f`` the first (see :mod:`ranvier.storage.timestamps`).

Who may ask is ``/messages``'s rule (:func:`~ranvier.core.pagination.readable_upto`):
a user who may not read the room gets 403 ``M_FORBIDDEN``, one who left
finds nothing after their leave, and an event the history visibility hides
from the user is passed over for the next nearest (of the
:data:`_CANDIDATES` nearest). Nothing found is 404 ``M_NOT_FOUND``.

**Other servers.** A room joined over federation is held here from the
join on, and another server may have missed nothing we hold yet hold what
we lack. When the nearest event here sits next to a gap (one of its prev
events is not held here), or there is none here in that direction, the
other servers in the room are asked in turn
(``GET /_matrix/federation/v1/timestamp_to_event``), until one names an
event in the right direction. When that event is nearer than ours it is
taken: fetched with ``/event`` if not held, and checked as every pulled
event is (signatures, hashes, the auth rules at its place in the DAG, the
state at its gap fetched). An event older than what is held is written
behind it as backfilled history; one after everything held (asked when
nothing here lies in the forward direction) is a pulled event like any
other. If the fetch or the checks fail, the next server is asked; if
none answers with anything better, ours stands.

The federation endpoint answering other servers
(:mod:`ranvier.federation.timestamps`) reads the same index and asks
nobody else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage.records import EventToPersist, StoredEvent

from .ingest import FederationIngester
from .pagination import MessagesStore, readable_upto, visible_to

__all__ = [
    "EventsByTimestamp",
    "RemoteTimestampClient",
    "TimestampReader",
    "nearest_in_direction",
]

_log: Final = logging.getLogger(__name__)

#: The nearest events looked at for one the user may see.
_CANDIDATES: Final = 50

Direction = Literal["b", "f"]


class TimestampReader(Protocol):
    """The reads by timestamp (:class:`ranvier.storage.timestamps.TimestampReads`)."""

    async def nearest_events(
        self, room_id: str, ts: int, *, backwards: bool, upto: int, limit: int
    ) -> list[StoredEvent]: ...

    async def next_to_gap(self, event: StoredEvent) -> bool: ...


class RemoteTimestampClient(Protocol):
    """What is asked of other servers
    (:class:`ranvier.federation.client.FederationEventFetcher`): their
    nearest event to a time, and one event. Both raise
    :class:`~ranvier.errors.MatrixError` when the server has no usable
    answer (404 included).
    """

    async def timestamp_to_event(
        self, destination: str, room_id: str, ts: int, direction: Direction
    ) -> tuple[str, int]: ...

    async def get_event(self, destination: str, event_id: str) -> bytes: ...


class JoinedServers(Protocol):
    """The servers in a room (:class:`ranvier.core.room_servers.RoomServers`)."""

    async def joined_servers(self, room_id: str) -> frozenset[str]: ...


class RoomVersionReader(Protocol):
    async def get_room_version(self, room_id: str) -> str | None: ...


class BackfillWriter(Protocol):
    """Writes events behind a room's history here
    (:class:`ranvier.storage.backfill.BackfillStorage`).
    """

    async def persist_backfilled_events(
        self, events: Sequence[EventToPersist]
    ) -> Mapping[str, int]: ...


def nearest_in_direction(ts: int, found: int, direction: Direction) -> bool:
    """Whether a timestamp ``found`` lies in ``direction`` from ``ts``."""
    return found <= ts if direction == "b" else found >= ts


def _not_found(room_id: str, ts: int, direction: Direction) -> MatrixError:
    way = "before" if direction == "b" else "after"
    return MatrixError(
        f"no event of {room_id} at or {way} {ts} was found",
        errcode="M_NOT_FOUND",
        http_status=404,
    )


class EventsByTimestamp:
    """Answers ``/timestamp_to_event`` for local users.

    Without ``remote`` (or without ``servers``, ``versions``, ``ingester``
    and ``backfill``), only the events held here are looked at.
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: MessagesStore,
        timestamps: TimestampReader,
        remote: RemoteTimestampClient | None = None,
        servers: JoinedServers | None = None,
        versions: RoomVersionReader | None = None,
        ingester: FederationIngester | None = None,
        backfill: BackfillWriter | None = None,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._timestamps = timestamps
        self._remote = remote
        self._servers = servers
        self._versions = versions
        self._ingester = ingester
        self._backfill = backfill

    async def find(
        self, user_id: str, room_id: str, ts: int, direction: Direction
    ) -> dict[str, Any]:
        """``{"event_id", "origin_server_ts"}`` of the nearest event
        ``user_id`` may see; 403 or 404 as the module says.
        """
        visible, checked_before, joined_now = await readable_upto(self._store, user_id, room_id)
        candidates = await self._timestamps.nearest_events(
            room_id, ts, backwards=direction == "b", upto=visible, limit=_CANDIDATES
        )
        seen = await visible_to(
            self._store, user_id, candidates, joined_now=joined_now, checked_before=checked_before
        )
        local = seen[0] if seen else None
        if local is None or await self._timestamps.next_to_gap(local):
            found = await self._ask_others(room_id, ts, direction, local)
            if (
                found is not None
                and (joined_now or found.stream_ordering <= visible)
                and await visible_to(
                    self._store,
                    user_id,
                    [found],
                    joined_now=joined_now,
                    checked_before=checked_before,
                )
            ):
                local = found
        if local is None:
            raise _not_found(room_id, ts, direction)
        return {"event_id": local.event_id, "origin_server_ts": local.origin_server_ts}

    async def _ask_others(
        self, room_id: str, ts: int, direction: Direction, local: StoredEvent | None
    ) -> StoredEvent | None:
        """A nearer event than ``local`` from another server in the room,
        held here now; None when no server names one that can be taken.
        """
        if self._remote is None or self._servers is None:
            return None
        servers = sorted(await self._servers.joined_servers(room_id) - {self._server_name})
        for server in servers:
            try:
                event_id, found_ts = await self._remote.timestamp_to_event(
                    server, room_id, ts, direction
                )
            except MatrixError as exc:
                _log.info("timestamp_to_event of %s at %s failed: %s", room_id, server, exc.message)
                continue
            if not nearest_in_direction(ts, found_ts, direction):
                _log.info("%s named %s, not %s of %d", server, event_id, direction, ts)
                continue
            if local is not None and abs(found_ts - ts) >= abs(local.origin_server_ts - ts):
                return None
            event = await self._held(event_id, room_id)
            if event is None:
                # Nothing here at all in the forward direction: the event
                # comes after what is held, and is taken as any pulled one.
                behind = not (local is None and direction == "f")
                event = await self._fetch(server, room_id, event_id, behind=behind)
            if event is not None and nearest_in_direction(ts, event.origin_server_ts, direction):
                return event
        return None

    async def _held(self, event_id: str, room_id: str) -> StoredEvent | None:
        """``event_id`` when it is in the room's timeline here."""
        event = (await self._store.get_events([event_id])).get(event_id)
        if (
            event is None
            or event.room_id != room_id
            or event.outlier
            or event.rejected_reason is not None
            or event.soft_failed
        ):
            return None
        return event

    async def _fetch(
        self, server: str, room_id: str, event_id: str, *, behind: bool
    ) -> StoredEvent | None:
        """``event_id`` fetched from ``server`` and taken in, checked as any
        pulled event; ``behind`` writes it behind the history held.
        """
        assert self._remote is not None
        if self._versions is None or self._ingester is None or self._backfill is None:
            return None
        version = await self._versions.get_room_version(room_id)
        if version is None:
            return None
        try:
            raw = await self._remote.get_event(server, event_id)
            event = Pdu.from_json(raw, get_room_version(version), check_limits=False)
        except MatrixError as exc:
            _log.info("fetching %s from %s failed: %s", event_id, server, exc.message)
            return None
        if event.event_id != event_id or event.room_id != room_id:
            _log.info("%s answered for %s with another event", server, event_id)
            return None
        if behind:
            outcomes = await self._ingester.on_backfilled_events(
                server, [event], self._backfill.persist_backfilled_events
            )
        else:
            outcomes = await self._ingester.on_pulled_events(server, [event])
        for outcome in outcomes:
            if outcome.error is not None:
                _log.info("%s from %s not taken: %s", event_id, server, outcome.error.message)
        return await self._held(event_id, room_id)
