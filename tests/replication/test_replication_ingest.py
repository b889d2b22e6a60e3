"""The seed's race across the process boundary: an event ingested on a worker
whose room's partial state the main process clears under it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from _replication import Main, Worker

from ranvier.core.ingest import EventVerifier, FederationIngester
from ranvier.errors import PartialStateConflictError
from ranvier.protocol.signing import generate_signing_key
from ranvier.replication.client import ReplicationEventPersister
from ranvier.storage import EventToPersist, Storage
from ranvier.storage.records import StateDelta
from ranvier.testing import KnownKeys, RemoteRooms, RoomBuilder, ingest_all

OURS = "ours.test"
REMOTE = "remote.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"


class MainClearsFirst:
    """The worker's event persister, with the main process finishing the
    room's partial state just before the first write of ``event_id``
    reaches it: the race with the un-partial-state task, made to happen.
    """

    def __init__(
        self, persister: ReplicationEventPersister, main: Storage, room_id: str, event_id: str
    ) -> None:
        self.persister = persister
        self.main = main
        self.room_id = room_id
        self.event_id = event_id
        #: Whether each write of the event had partial state.
        self.writes: list[bool] = []
        #: The errors the worker's persister raised.
        self.errors: list[Exception] = []

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        mine = [event for event in events if event.event_id == self.event_id]
        if mine:
            assert mine[0].context is not None
            self.writes.append(mine[0].context.partial_state)
            if len(self.writes) == 1:
                await self._finish_partial_state()
        try:
            return await self.persister.persist_events(
                events, current_state_groups=current_state_groups
            )
        except PartialStateConflictError as exc:
            self.errors.append(exc)
            raise

    async def _finish_partial_state(self) -> None:
        for event_id in await self.main.get_partial_state_events(self.room_id):
            groups = await self.main.get_event_state_groups(event_id)
            assert groups is not None
            await self.main.update_state_for_partial_event(event_id, groups.before, None)
        assert await self.main.clear_partial_state(self.room_id)

    async def store_room(self, room_id: str, room_version: str) -> None:
        await self.persister.store_room(room_id, room_version)

    async def store_state_group(
        self, room_id: str, prev_group: int | None, delta: StateDelta
    ) -> int:
        return await self.persister.store_state_group(room_id, prev_group, delta)


async def test_a_conflict_on_the_main_process_is_recomputed_and_lands_with_full_state(
    main: Main, worker: Worker
) -> None:
    keys = {server: generate_signing_key("k1") for server in (OURS, REMOTE)}
    room = RoomBuilder(creator=ALICE, keys=keys)
    room.public_room(BOB)
    await ingest_all(worker.storage, list(room.events.values()))
    # Joined with partial state: one event written with partial state.
    await worker.storage.store_partial_join(
        room.room_id, room.version, room.last, joined_via=REMOTE, servers_in_room=[REMOTE]
    )
    persister = worker.persister("federation")
    partial = room.message(BOB, "written with partial state")
    await persister.persist_events([await worker.with_partial_state(room, partial)])
    assert await main.storage.get_partial_state_events(room.room_id) == [partial.event_id]

    event = room.message(BOB, "after the partial one")
    racing = MainClearsFirst(persister, main.storage, room.room_id, event.event_id)
    ingester = FederationIngester(
        store=worker.storage,
        persister=racing,
        client=RemoteRooms(room),
        verifier=EventVerifier(KnownKeys(keys)),
    )
    result = await ingester.on_receive_pdu(REMOTE, event)

    # Sent with partial state, refused by the main process with its 409,
    # raised on the worker as the conflict, recomputed, sent with full state.
    assert racing.writes == [True, False]
    assert [type(error) for error in racing.errors] == [PartialStateConflictError]
    assert main.app.writes_run["fed_send_events"] >= 3
    assert result.error is None
    assert result.context is not None
    assert not result.context.partial_state
    for storage in (worker.storage, main.storage):
        assert await storage.get_partial_state_event_ids([event.event_id]) == frozenset()
        assert await storage.get_forward_extremities(room.room_id) == {event.event_id}
        assert not await storage.is_partial_state_room(room.room_id)
