"""A room's history from before this server's copy of it began, fetched
from a server in the room when a client pages back past what is held.

A room joined over federation is held here from the join on (with the
state at the join as outliers). When ``/messages`` pages back to the
oldest event held and the room's ``m.room.create`` event is not in its DAG
here, :class:`Backfiller` asks the servers in the room, one after another,
for the events before the oldest ones held (``GET /backfill`` from the
prev events they cite that are not held) and hands what comes back to
:meth:`~ranvier.core.ingest.FederationIngester.on_backfilled_events`,
which checks each event as any pulled event (signatures, hashes, auth at
its place in the DAG, gaps filled) and writes it before everything held,
moving neither the forward extremities nor current state.

One room backfills once at a time: a second request waits and then finds
the events held.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import trio

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage.records import EventToPersist

from .ingest import FederationIngester

__all__ = ["BackfillClient", "BackfillStore", "Backfiller", "JoinedServers"]

_log: Final = logging.getLogger(__name__)

#: The backward extremities one request starts from.
_STARTS: Final = 5


class BackfillStore(Protocol):
    """What :class:`Backfiller` reads and writes
    (:class:`ranvier.storage.backfill.BackfillStorage`), and the room's version.
    """

    async def has_room_start(self, room_id: str) -> bool: ...

    async def backward_extremities(self, room_id: str, limit: int) -> list[str]: ...

    async def persist_backfilled_events(
        self, events: Sequence[EventToPersist]
    ) -> Mapping[str, int]: ...


class RoomVersionReader(Protocol):
    async def get_room_version(self, room_id: str) -> str | None: ...


class BackfillClient(Protocol):
    """``GET /backfill`` of another server
    (:class:`ranvier.federation.backfill.FederationBackfillClient`).
    """

    async def backfill(
        self, destination: str, room_id: str, event_ids: Sequence[str], limit: int
    ) -> list[bytes]: ...


class JoinedServers(Protocol):
    """The servers in a room (:class:`ranvier.core.room_servers.RoomServers`)."""

    async def joined_servers(self, room_id: str) -> frozenset[str]: ...


class Backfiller:
    """Fetches a room's older history on demand, for
    :class:`~ranvier.core.pagination.RoomMessages`.
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: BackfillStore,
        versions: RoomVersionReader,
        client: BackfillClient,
        servers: JoinedServers,
        ingester: FederationIngester,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._versions = versions
        self._client = client
        self._servers = servers
        self._ingester = ingester
        self._locks: dict[str, trio.Lock] = {}

    async def backfill(self, room_id: str, limit: int) -> bool:
        """Fetch up to about ``limit`` events from before the oldest held in
        ``room_id``; whether any were added. False, asking nobody, when the
        room's history here goes back to its create event.
        """
        lock = self._locks.setdefault(room_id, trio.Lock())
        try:
            async with lock:
                return await self._backfill(room_id, limit)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(room_id, None)

    async def _backfill(self, room_id: str, limit: int) -> bool:
        if await self._store.has_room_start(room_id):
            return False
        starts = await self._store.backward_extremities(room_id, _STARTS)
        version = await self._versions.get_room_version(room_id)
        if not starts or version is None:
            return False
        rv = get_room_version(version)
        servers = sorted(await self._servers.joined_servers(room_id) - {self._server_name})
        for server in servers:
            try:
                raws = await self._client.backfill(server, room_id, starts, limit)
            except MatrixError as exc:
                _log.info("backfill of %s from %s failed: %s", room_id, server, exc.message)
                continue
            events = []
            for raw in raws:
                try:
                    event = Pdu.from_json(raw, rv, check_limits=False)
                except MatrixError as exc:
                    _log.info("ignoring a backfilled event from %s: %s", server, exc.message)
                    continue
                if event.room_id == room_id:
                    events.append(event)
            if not events:
                continue
            outcomes = await self._ingester.on_backfilled_events(
                server, events, self._store.persist_backfilled_events
            )
            added = [
                outcome
                for outcome in outcomes
                if outcome.result is not None and not outcome.result.already_known
            ]
            refused = [outcome for outcome in outcomes if outcome.error is not None]
            _log.info(
                "backfilled %d of %d events of %s from %s (%d refused%s)",
                len(added),
                len(events),
                room_id,
                server,
                len(refused),
                f", first: {refused[0].error.message}" if refused and refused[0].error else "",
            )
            if added:
                return True
        return False
