"""Auth chains followed in SQL, and events' JSON read alone.

The chain the recursive query finds must be the one walking the events
finds (:meth:`ranvier.core.loading.EventLoader.auth_chain`, which reads
each event and decodes its ``auth_events``), over a real room: forks,
rejected events, an outlier, an auth event never stored, and v12, where no
event cites the create event.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import msgspec
import pytest
import trio

from ranvier.core.loading import EventLoader
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
MALLORY = "@mallory:elsewhere.example"


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "chains.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


async def _walked(storage: Storage, room: RoomBuilder, event_ids: Collection[str]) -> set[str]:
    return await EventLoader(storage, room.room_version).auth_chain(event_ids)


class _Room:
    """A v12 room holding each kind of event a chain can pass through."""

    def __init__(self) -> None:
        room = RoomBuilder("12", ALICE)
        room.public_room(BOB)
        fork_point = room.last
        # Two branches from one event, joined again by a message.
        self.carol = room.member(CAROL, "join", prev=[fork_point])
        self.topic = room.topic(ALICE, "on the other branch", prev=[fork_point])
        room.message(ALICE, "merged", prev=[self.carol.event_id, self.topic.event_id])
        # Bob has no power to set the name: rejected, and then cited.
        self.rejected = room.state_event(BOB, "m.room.name", {"name": "mine"})
        self.citing_rejected = room.message(
            BOB,
            "citing it",
            auth=[*room.events[room.last].auth_event_ids, self.rejected.event_id],
        )
        # An event this server never stores, cited by an outlier.
        self.never_stored = room.draft_member(MALLORY, "join")
        self.outlier = room.draft(
            "m.room.message",
            MALLORY,
            {"body": "from afar"},
            auth=[self.never_stored.event_id, self.carol.event_id],
        )
        self.room = room

    async def store(self, storage: Storage) -> None:
        skipped = {self.rejected.event_id, self.citing_rejected.event_id}
        accepted = [event for event in self.room.order if event.event_id not in skipped]
        await ingest_all(storage, accepted)
        assert (await ingest(storage, self.rejected)).failure is not None
        await ingest(storage, self.citing_rejected)
        await ingest(storage, self.outlier, outlier=True)

    def ids(self) -> list[str]:
        return [*self.room.events]


async def test_the_query_finds_the_chain_the_walk_finds(storage: Storage) -> None:
    built = _Room()
    await built.store(storage)
    stored = await storage.get_events(built.ids())
    assert stored[built.rejected.event_id].rejected_reason is not None
    assert stored[built.outlier.event_id].outlier
    assert built.never_stored.event_id not in stored
    room = built.room
    starts: list[list[str]] = [
        built.ids(),
        [built.citing_rejected.event_id],
        [built.outlier.event_id],
        [built.carol.event_id, built.topic.event_id],
        [room.create.event_id],
        [built.never_stored.event_id, "$unknown"],
        [],
    ]
    for event_ids in starts:
        found = await storage.auth_chains.get_auth_chain_ids(event_ids)
        assert found == await _walked(storage, room, event_ids), event_ids
    # The chains go through what they must: a rejected event, an event not
    # stored (without going past it), and not the create event, which no
    # v12 event cites.
    assert built.rejected.event_id in await storage.auth_chains.get_auth_chain_ids(
        [built.citing_rejected.event_id]
    )
    from_outlier = await storage.auth_chains.get_auth_chain_ids([built.outlier.event_id])
    assert built.never_stored.event_id in from_outlier
    assert built.carol.event_id in from_outlier
    assert room.create.event_id not in from_outlier
    assert not await storage.auth_chains.get_auth_chain_ids([room.create.event_id])


async def test_events_reached_from_each_other_are_in_the_chain_once(storage: Storage) -> None:
    built = _Room()
    await built.store(storage)
    join = built.carol
    chain = await storage.auth_chains.get_auth_chain_ids([join.event_id, built.outlier.event_id])
    # Carol's join starts the walk and is also cited by the outlier.
    assert join.event_id in chain
    assert set(join.auth_event_ids) <= chain


def _redaction(room: RoomBuilder, sender: str, target: str) -> Pdu:
    return room.send_fields(
        {"type": "m.room.redaction", "sender": sender, "content": {"redacts": target}}
    )


async def test_event_jsons_as_stored_and_as_served(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room(BOB)
    kept = room.message(BOB, "kept")
    redacted = room.message(BOB, "oops")
    _redaction(room, BOB, redacted.event_id)
    await ingest_all(storage, room.order)
    ids = [kept.event_id, redacted.event_id, "$not-stored"]

    stored = await storage.auth_chains.get_event_jsons(ids, as_served=False)
    assert stored == {kept.event_id: kept.raw, redacted.event_id: redacted.raw}
    shown = await storage.auth_chains.get_event_jsons(ids, as_served=True)
    assert shown.keys() == stored.keys()
    assert shown[kept.event_id] == kept.raw
    assert msgspec.json.decode(shown[redacted.event_id]) == redact(redacted.json, "12")
    served = await storage.redactions.get_served_events(ids)
    assert shown == {event_id: event.json for event_id, event in served.items()}
    assert await storage.auth_chains.get_event_jsons([], as_served=True) == {}
