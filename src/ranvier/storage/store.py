"""Storage as the rest of ranvier sees it: typed async writes and reads.

Writes go to the storage actor, reads to the reader pool. Start it with
``await nursery.start(storage.run)``; it is ready, migrated and readable
when that returns.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypeVar

import trio

from ranvier.errors import PartialStateConflictError
from ranvier.protocol.room_versions import RoomVersion, RoomVersionLike

from . import reads, writes
from .accounts import AccountStorage
from .actor import StorageActor, WriteOperation
from .admin import AdminStorage
from .admin_federation import FederationAdminStorage
from .admin_redactions import AdminRedactionStorage
from .aliases import AliasStorage
from .appservices import AppServiceStorage
from .auth_chains import AuthChainStorage
from .backfill import BackfillStorage
from .client_data import ClientDataStorage
from .client_transactions import ClientTransactionStorage, TransactionRow
from .connections import SynchronousMode
from .dehydrated_devices import DehydratedDeviceStorage
from .e2e_keys import E2eKeyStorage
from .erasure import ErasureStorage
from .event_stream import EventStreamReads
from .forgotten_rooms import ForgottenRoomStorage
from .guests import GuestStorage
from .hierarchy_reads import HierarchyReads
from .housekeeping import HousekeepingStorage
from .login_tokens import LoginTokenStorage
from .media import MediaStorage
from .media_admin import MediaAdminStorage
from .notification_reads import NotificationReads
from .partial_state_device_updates import PartialStateDeviceUpdateStorage
from .pdu_outbox import PduOutboxStorage
from .pushers import PusherStorage
from .ratelimit_overrides import RateLimitOverrideStorage
from .readers import ReaderPool
from .receipts import ReceiptStorage
from .records import (
    DestinationRetry,
    EventStateGroups,
    EventToPersist,
    PartialStateRoom,
    ReceivedTransaction,
    ReplacedState,
    ServerKey,
    StateDelta,
    StateKey,
    StateMap,
    StoredEvent,
)
from .redactions import RedactionStorage, events_for_auth, redaction_targets
from .refresh_tokens import RefreshTokenStorage
from .registration_tokens import RegistrationTokenStorage
from .relations import RelationStorage
from .remote_device_lists import RemoteDeviceListStorage
from .replaced_state import read_replaced_state
from .reports import ReportStorage
from .room_keys import RoomKeyStorage
from .room_members import RoomMemberStorage
from .room_purge import RoomPurgeStorage
from .room_upgrades import RoomUpgradeStorage
from .run_reads import RunReads
from .search import SearchStorage
from .search_scrub import SearchScrubStorage
from .server_notices import ServerNoticeStorage
from .sliding_sync import SlidingSyncStorage
from .sso import SsoStorage
from .sync_reads import SyncReads
from .threepids import ThreepidStorage
from .timestamps import TimestampReads
from .uia import UiaStorage
from .url_previews import UrlPreviewStorage
from .write_backend import WriteBackend
from .write_marks import WriteMark

__all__ = ["Storage"]

# What an event write gives back: orderings, or a run's orderings and mark.
_Written = TypeVar("_Written", dict[str, int], writes.RunWritten)


class StreamListener(Protocol):
    """What storage tells after a commit a ``/sync`` may report, whichever
    path wrote: the events position reached (None if no event was added),
    the un-partial-state position reached (None if no room was cleared),
    the rooms touched and the users whose membership events were written.
    """

    def __call__(
        self,
        events: int | None,
        un_partial: int | None,
        *,
        rooms: Collection[str],
        users: Collection[str],
    ) -> None: ...


def _version_id(room_version: RoomVersionLike) -> str:
    return room_version.identifier if isinstance(room_version, RoomVersion) else room_version


class Storage:
    """One database: its storage actor and its reader pool.

    ``synchronous`` is SQLite's durability setting (``FULL``: a commit
    survives power loss); ``batch_cap`` bounds how many requests share one
    transaction; ``queue_size`` how many may wait before writers are made to
    wait; ``readers`` how many reads run at once. ``writer`` replaces the
    storage actor as where writes go (the actor's settings then do not
    apply); reads stay on this process's reader pool over the same file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: SynchronousMode = "FULL",
        batch_cap: int = 256,
        queue_size: int = 1024,
        readers: int = 4,
        max_page_count: int | None = None,
        writer: WriteBackend | None = None,
    ) -> None:
        self.path = path
        #: Where writes go: this process's storage actor unless another
        #: backend is given (a worker's client of the main process's actor).
        self.writer: WriteBackend = writer or StorageActor(
            path,
            synchronous=synchronous,
            batch_cap=batch_cap,
            queue_size=queue_size,
            max_page_count=max_page_count,
        )
        self.readers = ReaderPool(path, size=readers)
        self.sync = SyncReads(self.writer, self.readers)
        #: Told after a commit that moves either stream a sync follows; see
        #: :class:`StreamListener`.
        self.on_stream_advance: StreamListener | None = None
        #: For metrics: the server whose users' events count as ``local`` in
        #: ``events_persisted`` (the rest as ``federation``; backfilled
        #: events are counted by :attr:`backfill`), and the writes of events
        #: refused for a partial-state conflict, each retried by its caller.
        self.server_name: str | None = None
        self.events_persisted = {"local": 0, "federation": 0}
        self.partial_state_conflicts = 0
        self.aliases = AliasStorage(self.writer, self.readers)
        self.client_transactions = ClientTransactionStorage(self.writer, self.readers)
        self.room_members = RoomMemberStorage(self.writer, self.readers)
        self.accounts = AccountStorage(self.writer, self.readers)
        self.admin = AdminStorage(self.writer, self.readers)
        self.admin_redactions = AdminRedactionStorage(self.writer, self.readers)
        self.federation_admin = FederationAdminStorage(self.writer, self.readers)
        self.redactions = RedactionStorage(self.readers)
        self.erasure = ErasureStorage(self.readers)
        self.relations = RelationStorage(self.readers)
        self.search = SearchStorage(self.readers)
        self.hierarchy = HierarchyReads(self.readers)
        self.auth_chains = AuthChainStorage(self.readers)
        self.client_data = ClientDataStorage(self.writer, self.readers)
        self.receipts = ReceiptStorage(self.writer, self.readers)
        self.backfill = BackfillStorage(self.writer, self.readers)
        self.e2e_keys = E2eKeyStorage(self.writer, self.readers)
        self.remote_device_lists = RemoteDeviceListStorage(self.writer, self.readers)
        self.partial_state_device_updates = PartialStateDeviceUpdateStorage(
            self.writer, self.readers
        )
        self.dehydrated_devices = DehydratedDeviceStorage(self.writer, self.readers)
        self.room_keys = RoomKeyStorage(self.writer, self.readers)
        self.media = MediaStorage(self.writer, self.readers)
        self.media_admin = MediaAdminStorage(self.writer, self.readers)
        self.run_reads = RunReads(self.readers)
        self.notifications = NotificationReads(self.readers)
        self.event_stream = EventStreamReads(self.readers)
        self.pushers = PusherStorage(self.writer, self.readers)
        self.ratelimit_overrides = RateLimitOverrideStorage(self.writer, self.readers)
        self.appservices = AppServiceStorage(self.writer, self.readers)
        self.reports = ReportStorage(self.writer, self.readers)
        self.server_notices = ServerNoticeStorage(self.writer, self.readers)
        self.room_upgrades = RoomUpgradeStorage(self.writer)
        self.url_previews = UrlPreviewStorage(self.writer, self.readers)
        self.timestamps = TimestampReads(self.readers)
        self.sliding_sync = SlidingSyncStorage(self.writer, self.readers)
        self.registration_tokens = RegistrationTokenStorage(self.writer, self.readers)
        self.refresh_tokens = RefreshTokenStorage(self.writer, self.readers)
        self.login_tokens = LoginTokenStorage(self.writer, self.readers)
        self.sso = SsoStorage(self.writer, self.readers)
        self.uia = UiaStorage(self.writer, self.readers)
        self.threepids = ThreepidStorage(self.writer, self.readers)
        self.guests = GuestStorage(self.readers)
        self.housekeeping = HousekeepingStorage(self.writer, self.readers, self.e2e_keys)
        self.forgotten_rooms = ForgottenRoomStorage(self.writer, self.readers)
        self.room_purge = RoomPurgeStorage(self.writer)
        self.search_scrub = SearchScrubStorage(self.writer, self.readers)
        self.pdu_outbox = PduOutboxStorage(self.writer, self.readers)

    @property
    def actor(self) -> StorageActor:
        """This process's storage actor, when it is the one writing."""
        if not isinstance(self.writer, StorageActor):
            raise RuntimeError("this storage writes through another process's storage actor")
        return self.writer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.writer.run(task_status=task_status)
        finally:
            self.readers.close()

    # Writes.

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        """Write events in one go; return their stream orderings by event ID.

        ``current_state_groups`` names, per room, the state group that is its
        current state after these events, when the caller resolved it; see
        :mod:`ranvier.storage.writes` for the rule otherwise. Raises
        :class:`~ranvier.errors.PartialStateConflictError`, writing none of
        them, if one has partial state and its room no longer does.
        """
        return await self._write_events(
            writes.PersistEvents(tuple(events), dict(current_state_groups or {})), events
        )

    async def persist_run(
        self,
        room_id: str,
        events: Sequence[EventToPersist],
        *,
        answer: ReceivedTransaction | None = None,
        current_state_groups: Mapping[str, int] | None = None,
        since: WriteMark | None = None,
    ) -> writes.RunWritten:
        """:meth:`persist_events` for a run of ``room_id``'s events, with the
        answer to the federation transaction that brought them recorded in
        the same commit: one write where the events and the record would
        take two, and no moment at which one is stored and not the other.

        With ``since``, written only if the room is as the write that got
        that mark left it (:class:`~ranvier.storage.writes.PersistRun`);
        else :class:`~ranvier.errors.StaleRunError`, nothing written. The
        answer carries the room's mark after this write.
        """
        return await self._write_events(
            writes.PersistRun(
                room_id,
                tuple(events),
                dict(current_state_groups or {}),
                answer=answer,
                since=since,
            ),
            events,
        )

    def room_mark(self, room_id: str) -> WriteMark | None:
        """The room's mark now (:mod:`ranvier.storage.write_marks`), or None
        when another process's actor writes."""
        if not isinstance(self.writer, StorageActor):
            return None
        return self.writer.room_mark(room_id)

    async def _write_events(
        self, operation: WriteOperation[_Written], events: Sequence[EventToPersist]
    ) -> _Written:
        try:
            written = await self.writer.submit(operation)
        except PartialStateConflictError:
            self.partial_state_conflicts += 1
            raise
        self.events_written(
            written.orderings if isinstance(written, writes.RunWritten) else written, events
        )
        return written

    async def persist_events_recording_transactions(
        self, events: Sequence[EventToPersist], transactions: Sequence[TransactionRow]
    ) -> tuple[dict[str, int], list[str]]:
        """:meth:`persist_events` naming no current state, with the client
        transactions that sent the events recorded in the same commit; see
        :meth:`ClientTransactionStorage.persist_events_recording`.
        """
        try:
            orderings, recorded = await self.client_transactions.persist_events_recording(
                events, transactions
            )
        except PartialStateConflictError:
            self.partial_state_conflicts += 1
            raise
        self.events_written(orderings, events)
        return orderings, recorded

    def events_written(
        self, orderings: Mapping[str, int], events: Sequence[EventToPersist]
    ) -> None:
        """Tell the stream listener of events just written (here, or through
        the main process by a worker's persister): the rooms they are in, and
        the users whose membership they change."""
        if self.server_name is not None:
            ours = self.server_name
            local = sum(event.sender.partition(":")[2] == ours for event in events)
            self.events_persisted["local"] += local
            self.events_persisted["federation"] += len(events) - local
        if orderings and self.on_stream_advance is not None:
            self.on_stream_advance(
                max(orderings.values()),
                None,
                rooms={event.room_id for event in events},
                users={
                    event.state_key
                    for event in events
                    if event.type == "m.room.member" and event.state_key is not None
                },
            )

    async def store_room(self, room_id: str, room_version: RoomVersionLike) -> None:
        """Make a room known before any of its events or state is stored."""
        await self.writer.submit(
            functools.partial(
                writes.store_room, room_id=room_id, room_version=_version_id(room_version)
            )
        )

    async def store_state_group(
        self, room_id: str, prev_group: int | None, delta: StateDelta
    ) -> int:
        """Store a state ahead of the events that will use it: ``prev_group``
        plus ``delta``, or ``delta`` alone as a snapshot when ``prev_group`` is
        None. The room must be known (:meth:`store_room`).
        """
        delta = dict(delta)
        return await self.writer.submit(
            functools.partial(
                writes.store_state_group, room_id=room_id, prev_group=prev_group, delta=delta
            )
        )

    async def store_partial_join(
        self,
        room_id: str,
        room_version: RoomVersionLike,
        join_event_id: str,
        joined_via: str,
        servers_in_room: Collection[str],
    ) -> None:
        await self.writer.submit(
            functools.partial(
                writes.store_partial_join,
                room_id=room_id,
                room_version=_version_id(room_version),
                join_event_id=join_event_id,
                joined_via=joined_via,
                servers_in_room=frozenset(servers_in_room),
            )
        )

    async def update_state_for_partial_event(
        self,
        event_id: str,
        state_group_before: int,
        state_group_after: int | None,
        rejected_reason: str | None = None,
    ) -> None:
        await self.writer.submit(
            functools.partial(
                writes.update_state_for_partial_event,
                event_id=event_id,
                state_group_before=state_group_before,
                state_group_after=state_group_after,
                rejected_reason=rejected_reason,
            )
        )

    async def clear_partial_state(self, room_id: str) -> bool:
        """Raises :class:`~ranvier.errors.PartialStateEventsRemainError` while
        any of the room's events has partial state.
        """
        cleared = await self.writer.submit(
            functools.partial(writes.clear_partial_state, room_id=room_id)
        )
        if cleared and self.on_stream_advance is not None:
            self.on_stream_advance(
                None, (await self.sync.positions())[1], rooms={room_id}, users=()
            )
        return cleared

    async def set_current_state(self, room_id: str, state_group: int) -> None:
        await self.writer.submit(
            functools.partial(writes.set_current_state, room_id=room_id, state_group=state_group)
        )

    async def record_transaction(self, transaction: ReceivedTransaction) -> None:
        await self.writer.submit(
            functools.partial(writes.record_transaction, transaction=transaction)
        )

    async def store_server_keys(self, keys: Sequence[ServerKey]) -> None:
        keys = tuple(keys)
        await self.writer.submit(functools.partial(writes.store_server_keys, keys=keys))

    async def store_destination_retry(
        self, destination: str, retry: DestinationRetry | None
    ) -> None:
        await self.writer.submit(
            functools.partial(writes.store_destination_retry, destination=destination, retry=retry)
        )

    # Reads.

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return await self.readers.read(functools.partial(reads.get_event, event_id=event_id))

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        ids = frozenset(event_ids)
        return await self.readers.read(functools.partial(reads.get_events, event_ids=ids))

    async def get_events_for_auth(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        ids = frozenset(event_ids)
        return await self.readers.read(functools.partial(events_for_auth, event_ids=ids))

    async def get_redaction_targets(self, event_ids: Collection[str]) -> frozenset[str]:
        ids = frozenset(event_ids)
        return await self.readers.read(functools.partial(redaction_targets, event_ids=ids))

    async def get_replaced_state(self, event_ids: Collection[str]) -> dict[str, ReplacedState]:
        """What each state event of ``event_ids`` replaced, the replaced
        event as served (:mod:`ranvier.storage.replaced_state`)."""
        ids = frozenset(event_ids)
        return await self.readers.read(functools.partial(read_replaced_state, event_ids=ids))

    async def have_seen_events(self, event_ids: Collection[str]) -> frozenset[str]:
        ids = frozenset(event_ids)
        return await self.readers.read(functools.partial(reads.have_seen_events, event_ids=ids))

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        return await self.readers.read(
            functools.partial(reads.get_event_state_groups, event_id=event_id)
        )

    async def get_events_state_groups(
        self, event_ids: Collection[str]
    ) -> dict[str, EventStateGroups]:
        """The state groups around each of ``event_ids`` that has them."""
        ids = frozenset(event_ids)
        return await self.readers.read(
            functools.partial(reads.get_events_state_groups, event_ids=ids)
        )

    async def get_events_with_accepted_children(self, event_ids: Collection[str]) -> frozenset[str]:
        """Which of ``event_ids`` an accepted event of the DAG cites as a prev event."""
        ids = frozenset(event_ids)
        return await self.readers.read(
            functools.partial(reads.get_events_with_accepted_children, event_ids=ids)
        )

    async def get_state_ids(self, state_group: int) -> StateMap:
        return await self.readers.read(
            functools.partial(reads.get_state_ids, state_group=state_group)
        )

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        return await self.readers.read(
            functools.partial(reads.get_current_state_ids, room_id=room_id)
        )

    async def get_current_state_group(self, room_id: str) -> int | None:
        return await self.readers.read(
            functools.partial(reads.get_current_state_group, room_id=room_id)
        )

    async def get_forward_extremities(self, room_id: str) -> frozenset[str]:
        return await self.readers.read(
            functools.partial(reads.get_forward_extremities, room_id=room_id)
        )

    async def get_room_version(self, room_id: str) -> str | None:
        return await self.readers.read(functools.partial(reads.get_room_version, room_id=room_id))

    async def is_partial_state_room(self, room_id: str) -> bool:
        return await self.readers.read(
            functools.partial(reads.is_partial_state_room, room_id=room_id)
        )

    async def get_room_head(self, room_id: str) -> tuple[frozenset[str], bool]:
        """The room's forward extremities and whether its state is partial,
        in one read: the event creator asks both first for each group of events.
        """

        def read(conn: sqlite3.Connection) -> tuple[frozenset[str], bool]:
            return (
                reads.get_forward_extremities(conn, room_id=room_id),
                reads.is_partial_state_room(conn, room_id=room_id),
            )

        return await self.readers.read(read)

    async def get_partial_state_events(self, room_id: str) -> list[str]:
        return await self.readers.read(
            functools.partial(reads.get_partial_state_events, room_id=room_id)
        )

    async def get_partial_state_rooms(self) -> dict[str, PartialStateRoom]:
        return await self.readers.read(reads.get_partial_state_rooms)

    # Narrow state reads, so that checking an event in a big room reads a few
    # rows instead of the whole state.

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> StateMap:
        """The entries of a group's state for ``keys``; keys not in it are left out."""
        wanted = frozenset(keys)
        return await self.readers.read(
            functools.partial(reads.get_state_ids_for_keys, state_group=state_group, keys=wanted)
        )

    async def get_state_ids_without_type(self, state_group: int, event_type: str) -> StateMap:
        """The entries of a group's state for every type but ``event_type``,
        read without reading that type's rows.
        """
        return await self.readers.read(
            functools.partial(
                reads.get_state_ids_without_type, state_group=state_group, event_type=event_type
            )
        )

    async def get_state_deltas(
        self, state_groups: Sequence[int]
    ) -> tuple[int, dict[int, dict[StateKey, str | None]]]:
        """The first of ``state_groups`` as a base, and each group's state as
        changes against it; see :func:`ranvier.storage.reads.get_state_deltas`.
        """
        groups = tuple(state_groups)
        return await self.readers.read(
            functools.partial(reads.get_state_deltas, state_groups=groups)
        )

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> StateMap:
        """The entries of a room's current state for ``keys``; keys not in it are left out."""
        wanted = frozenset(keys)
        return await self.readers.read(
            functools.partial(reads.get_current_state_ids_for_keys, room_id=room_id, keys=wanted)
        )

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined in the room's current state."""
        return await self.room_members.server_has_joined_member(room_id, server_name)

    async def get_memberships(
        self, event_ids: Collection[str]
    ) -> dict[str, tuple[int, str | None]]:
        """Each stored event's stream ordering and string ``content.membership``."""
        return await self.room_members.get_memberships(event_ids)

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> frozenset[str]:
        """Which of ``event_ids`` still have partial state."""
        ids = frozenset(event_ids)
        return await self.readers.read(
            functools.partial(reads.get_partial_state_event_ids, event_ids=ids)
        )

    async def get_received_transaction(
        self, origin: str, transaction_id: str
    ) -> ReceivedTransaction | None:
        return await self.readers.read(
            functools.partial(
                reads.get_received_transaction, origin=origin, transaction_id=transaction_id
            )
        )

    async def get_server_keys(
        self, server_name: str, key_ids: Collection[str] | None = None
    ) -> dict[str, ServerKey]:
        ids = None if key_ids is None else frozenset(key_ids)
        return await self.readers.read(
            functools.partial(reads.get_server_keys, server_name=server_name, key_ids=ids)
        )

    async def get_destination_retry(self, destination: str) -> DestinationRetry | None:
        return await self.readers.read(
            functools.partial(reads.get_destination_retry, destination=destination)
        )

    # Outgoing federation: how far each destination has been sent each room.

    async def store_destination_rooms(self, destination: str, positions: Mapping[str, int]) -> None:
        """See :func:`ranvier.storage.writes.store_destination_rooms`."""
        positions = dict(positions)
        await self.writer.submit(
            functools.partial(
                writes.store_destination_rooms, destination=destination, positions=positions
            )
        )

    async def mark_destination_rooms_sent(
        self, destination: str, positions: Mapping[str, int]
    ) -> None:
        """See :func:`ranvier.storage.writes.mark_destination_rooms_sent`."""
        positions = dict(positions)
        await self.writer.submit(
            functools.partial(
                writes.mark_destination_rooms_sent, destination=destination, positions=positions
            )
        )

    async def get_unsent_destination_rooms(
        self, destination: str, limit: int = 100
    ) -> list[reads.UnsentDestinationRoom]:
        return await self.readers.read(
            functools.partial(
                reads.get_unsent_destination_rooms, destination=destination, limit=limit
            )
        )

    async def get_destinations_with_unsent_rooms(
        self, after: str | None = None, limit: int = 100
    ) -> list[str]:
        return await self.readers.read(
            functools.partial(reads.get_destinations_with_unsent_rooms, after=after, limit=limit)
        )

    # How far back a room's DAG reaches here.

    async def get_min_depth(self, room_id: str) -> int | None:
        """The smallest depth of the room's non-outlier events; None when it has none."""
        return await self.readers.read(functools.partial(reads.get_min_depth, room_id=room_id))

    # How far each partial-state room's resync has come, for other processes.

    async def store_resync_progress(
        self,
        room_id: str,
        *,
        phase: str,
        server: str | None,
        events_resynced: int,
        events_total: int,
        attempts: int,
        last_error: str | None,
        updated_ts: int,
    ) -> bool:
        """See :func:`ranvier.storage.writes.store_resync_progress`."""
        return await self.writer.submit(
            functools.partial(
                writes.store_resync_progress,
                room_id=room_id,
                phase=phase,
                server=server,
                events_resynced=events_resynced,
                events_total=events_total,
                attempts=attempts,
                last_error=last_error,
                updated_ts=updated_ts,
            )
        )

    async def get_resync_progress(self) -> dict[str, reads.ResyncProgress]:
        return await self.readers.read(reads.get_resync_progress)
