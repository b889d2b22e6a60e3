from __future__ import annotations

import collections
import itertools
from collections.abc import Collection, Set
from pathlib import Path
from typing import Any

import trio

from ranvier.core.creation import EventCreator
from ranvier.core.creation_reads import CreationReads
from ranvier.core.ingest import RoomLocks
from ranvier.core.policy_servers import PolicyServers
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.storage.records import EventStateGroups, StoredEvent

SERVER = "example.org"
KEY = generate_signing_key("1")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


class CountingStorage(Storage):
    """Storage that counts the reads made of it, by name."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.reads: collections.Counter[str] = collections.Counter()

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        self.reads["get_events"] += 1
        return await super().get_events(event_ids)

    async def get_events_for_auth(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        self.reads["get_events_for_auth"] += 1
        return await super().get_events_for_auth(event_ids)

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        self.reads["get_event_state_groups"] += 1
        return await super().get_event_state_groups(event_id)

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> dict[StateKey, str]:
        self.reads["get_state_ids_for_keys"] += 1
        return await super().get_state_ids_for_keys(state_group, keys)

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> dict[StateKey, str]:
        self.reads["get_current_state_ids_for_keys"] += 1
        return await super().get_current_state_ids_for_keys(room_id, keys)

    async def get_forward_extremities(self, room_id: str) -> frozenset[str]:
        self.reads["get_forward_extremities"] += 1
        return await super().get_forward_extremities(room_id)

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> frozenset[str]:
        self.reads["get_partial_state_event_ids"] += 1
        return await super().get_partial_state_event_ids(event_ids)

    async def is_partial_state_room(self, room_id: str) -> bool:
        self.reads["is_partial_state_room"] += 1
        return await super().is_partial_state_room(room_id)

    async def get_room_head(self, room_id: str) -> tuple[frozenset[str], bool]:
        self.reads["get_room_head"] += 1
        return await super().get_room_head(room_id)

    async def get_room_version(self, room_id: str) -> str | None:
        self.reads["get_room_version"] += 1
        return await super().get_room_version(room_id)


class Heard:
    def __init__(self) -> None:
        self.events: list[Pdu] = []

    async def on_new_event(self, event: Pdu, stream_ordering: int) -> None:
        self.events.append(event)


async def _storage(tmp_path: Path, nursery: trio.Nursery) -> CountingStorage:
    storage = CountingStorage(tmp_path / "ranvier.db")
    await nursery.start(storage.run)
    return storage


def _creator(storage: Storage, heard: Heard, locks: RoomLocks | None = None) -> EventCreator:
    clock = itertools.count(1_700_000_000_000)
    return EventCreator(
        server_name=SERVER,
        signing_key=KEY,
        store=storage,
        persister=storage,
        notifier=heard,
        room_locks=locks,
        clock=lambda: next(clock),
    )


async def test_a_message_after_a_message_reads_only_what_can_change(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = await _storage(tmp_path, nursery)
    creator = _creator(storage, Heard())
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "one"})
    storage.reads.clear()
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "two"})
    # Once, though the builder, the checks and the write each ask for them;
    # with the "no" to partial state that the checks ask for, in one read.
    assert storage.reads["get_room_head"] == 1
    assert storage.reads["get_forward_extremities"] == 0
    assert storage.reads["is_partial_state_room"] == 0
    # The auth events as the checks read them, once: a redaction may have
    # come meanwhile.
    assert storage.reads["get_events_for_auth"] == 1
    # The prev event, its groups, its state and the auth events were all
    # written here with full state, and the room's version never changes.
    for name in (
        "get_events",
        "get_event_state_groups",
        "get_state_ids_for_keys",
        "get_partial_state_event_ids",
        "get_room_version",
    ):
        assert storage.reads[name] == 0, name


async def test_events_written_by_others_are_followed(tmp_path: Path, nursery: trio.Nursery) -> None:
    storage = await _storage(tmp_path, nursery)
    heard = Heard()
    locks = RoomLocks()
    first, second = _creator(storage, heard, locks), _creator(storage, heard, locks)
    room_id = await first.create_room(ALICE, preset="public_chat")
    await second.join(BOB, room_id)
    for n in range(6):
        sender, creator = (ALICE, first) if n % 2 else (BOB, second)
        await creator.send_event(sender, room_id, "m.room.message", {"body": str(n)})
    events = heard.events
    for before, after in itertools.pairwise(events):
        assert after.prev_event_ids == (before.event_id,)
        assert after.depth == before.depth + 1
    assert await storage.get_forward_extremities(room_id) == {events[-1].event_id}


async def test_kept_rows_and_groups_are_storage_s(tmp_path: Path, nursery: trio.Nursery) -> None:
    storage = await _storage(tmp_path, nursery)
    heard = Heard()
    creator = _creator(storage, heard)
    room_id = await creator.create_room(ALICE, preset="public_chat", name="Pub")
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "hi"})
    await creator.send_event(ALICE, room_id, "m.room.topic", {"topic": "t"}, state_key="")
    reads: CreationReads = creator._reads
    ids = [event.event_id for event in heard.events]
    assert await reads.get_events(ids) == await storage.get_events(ids)
    for event_id in ids:
        assert await reads.get_event_state_groups(event_id) == (
            await storage.get_event_state_groups(event_id)
        )


async def test_state_keys_are_kept_per_group_found_or_not(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = await _storage(tmp_path, nursery)
    creator = _creator(storage, Heard())
    room_id = await creator.create_room(ALICE, preset="public_chat")
    (event_id,) = await storage.get_forward_extremities(room_id)
    groups = await storage.get_event_state_groups(event_id)
    assert groups is not None
    reads = CreationReads(storage)
    create: StateKey = ("m.room.create", "")
    absent: StateKey = ("m.room.name", "")
    wanted = {create, absent, ("m.room.member", ALICE)}
    expected = await storage.get_state_ids_for_keys(groups.after, wanted)
    assert set(expected) == {create, ("m.room.member", ALICE)}
    storage.reads.clear()
    assert await reads.get_state_ids_for_keys(groups.after, [create, absent]) == {
        create: expected[create]
    }
    assert await reads.get_state_ids_for_keys(groups.after, wanted) == expected
    assert await reads.get_state_ids_for_keys(groups.after, wanted) == expected
    # The first read both keys, the second only the key not asked before.
    assert storage.reads["get_state_ids_for_keys"] == 2


class _Extremities:
    """A reader whose forward extremities can be changed under it."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.extremities: Set[str] = frozenset({"$a"})

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        return self.extremities

    async def get_room_head(self, room_id: str) -> tuple[frozenset[str], bool]:
        return frozenset(self.extremities), await self.storage.is_partial_state_room(room_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


async def test_extremities_are_kept_from_begin_to_the_write(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = await _storage(tmp_path, nursery)
    source = _Extremities(storage)
    reads = CreationReads(source)
    reads.begin("!r:example.org")
    assert await reads.get_forward_extremities("!r:example.org") == {"$a"}
    source.extremities = frozenset({"$b"})
    assert await reads.get_forward_extremities("!r:example.org") == {"$a"}
    reads.begin("!r:example.org")
    assert await reads.get_forward_extremities("!r:example.org") == {"$b"}


async def test_current_state_after_a_sole_extremity_written_here(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = await _storage(tmp_path, nursery)
    heard = Heard()
    creator = _creator(storage, heard)
    room_id = await creator.create_room(ALICE, preset="public_chat", name="Pub")
    await creator.send_event(ALICE, room_id, "m.room.name", {"name": "Bar"}, state_key="")
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "hi"})
    reads: CreationReads = creator._reads
    keys: list[StateKey] = [("m.room.name", ""), ("m.room.create", ""), ("m.room.topic", "")]
    reads.begin(room_id)
    expected = await storage.get_current_state_ids_for_keys(room_id, keys)
    assert set(expected) == {("m.room.name", ""), ("m.room.create", "")}
    assert await reads.get_forward_extremities(room_id) == {heard.events[-1].event_id}
    storage.reads.clear()
    assert await reads.get_current_state_ids_for_keys(room_id, keys) == expected
    # Answered from the state group after the room's one extremity, whose
    # entries for these keys were kept from the message's checks.
    assert storage.reads["get_current_state_ids_for_keys"] == 0


async def test_a_room_read_to_have_full_state_is_not_asked_again_until_begin(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = await _storage(tmp_path, nursery)
    room_id = await _creator(storage, Heard()).create_room(ALICE)
    other = "!partial:example.org"
    await storage.store_room(other, "10")
    await storage.store_partial_join(other, "10", "$join", "example.org", {"example.org"})
    reads = CreationReads(storage)
    reads.begin(room_id)
    storage.reads.clear()
    assert not await reads.is_partial_state_room(room_id)
    assert not await reads.is_partial_state_room(room_id)
    # A room with partial state is asked each time: it may be cleared.
    assert await reads.is_partial_state_room(other)
    assert await reads.is_partial_state_room(other)
    assert storage.reads["is_partial_state_room"] == 3
    reads.begin(room_id)
    assert not await reads.is_partial_state_room(room_id)
    assert storage.reads["is_partial_state_room"] == 4


async def test_a_room_without_a_policy_server_costs_no_read_to_tell(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = await _storage(tmp_path, nursery)
    creator = _creator(storage, Heard())
    creator.policy_servers = PolicyServers(storage)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.send_event(ALICE, room_id, "m.room.topic", {"topic": "new"}, state_key="")
    storage.reads.clear()
    # The first event on a new state group: the group's entries the auth
    # rules need are read once, and the policy server's entry with them.
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "one"})
    assert storage.reads["get_state_ids_for_keys"] == 1
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "two"})
    assert storage.reads["get_state_ids_for_keys"] == 1
    for name in ("get_current_state_ids_for_keys", "get_events"):
        assert storage.reads[name] == 0, name
