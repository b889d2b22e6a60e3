"""The full-text index in storage: the rows persist_events writes (once per
event, none for outliers until they join the timeline), and what a search
finds: timeline events only, none a redaction applies to, in rank or
recency order.

Rooms come from :class:`ranvier.testing.RoomBuilder` and go through core
into real storage (:func:`ranvier.testing.ingest`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import pytest
import trio

from ranvier.storage import Storage
from ranvier.storage.search import SEARCHABLE_KEYS, SearchPage, search_events, searchable_text
from ranvier.testing import RoomBuilder, ingest, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:other.example"


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "search.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


def _room() -> RoomBuilder:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE)
    return room


async def _rows(storage: Storage) -> list[tuple[str, str]]:
    def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        return conn.execute("SELECT event_id, value FROM event_search ORDER BY rowid").fetchall()

    return await storage.readers.read(read)


async def _search(
    storage: Storage,
    room: RoomBuilder,
    query: str,
    *,
    order_by: Literal["rank", "recent"] = "recent",
    below: int | None = None,
    offset: int = 0,
    limit: int = 10,
) -> SearchPage:
    def read(conn: sqlite3.Connection) -> SearchPage:
        return search_events(
            conn,
            query,
            room_ids=[room.room_id],
            keys=SEARCHABLE_KEYS.values(),
            order_by=order_by,
            below=below,
            offset=offset,
            limit=limit,
        )

    return await storage.readers.read(read)


def _ids(page: SearchPage) -> list[str]:
    return [hit.event.event_id for hit in page.hits]


def test_searchable_text_takes_the_key_of_the_event_type() -> None:
    def event(content: str) -> bytes:
        return f'{{"content": {content}}}'.encode()

    assert searchable_text("m.room.message", event('{"body": "hi"}')) == ("content.body", "hi")
    assert searchable_text("m.room.name", event('{"name": "N"}')) == ("content.name", "N")
    assert searchable_text("m.room.topic", event('{"topic": "T"}')) == ("content.topic", "T")
    assert searchable_text("m.room.message", event('{"name": "N"}')) is None
    assert searchable_text("m.room.message", event('{"body": ["x"]}')) is None
    assert searchable_text("m.room.message", event('{"body": ""}')) is None
    assert searchable_text("m.room.message", event('"body"')) is None
    assert searchable_text("m.custom", event('{"body": "hi"}')) is None


async def test_persisting_indexes_each_searchable_event_once(storage: Storage) -> None:
    room = _room()
    message = room.message(BOB, "martians landed")
    name = room.state_event(ALICE, "m.room.name", {"name": "Mars watch"})
    topic = room.topic(ALICE, "sightings")
    room.send("m.custom", BOB, {"body": "not searchable"})
    await ingest_all(storage, room.order)
    # The same event again writes nothing more.
    await ingest(storage, message)

    assert await _rows(storage) == [
        (message.event_id, "martians landed"),
        (name.event_id, "Mars watch"),
        (topic.event_id, "sightings"),
    ]


async def test_an_outlier_is_indexed_when_it_joins_the_timeline(storage: Storage) -> None:
    room = _room()
    message = room.message(BOB, "martians landed")
    await ingest_all(storage, room.order[:-1])
    await ingest(storage, message, outlier=True)
    assert await _rows(storage) == []
    assert _ids(await _search(storage, room, '"martians"')) == []

    await ingest(storage, message)

    assert await _rows(storage) == [(message.event_id, "martians landed")]
    assert _ids(await _search(storage, room, '"martians"')) == [message.event_id]


async def test_rejected_events_are_not_found(storage: Storage) -> None:
    room = _room()
    found = room.message(BOB, "martians here")
    # Carol never joined: her message is rejected.
    rejected = room.message(CAROL, "martians there")
    for event in room.order:
        await ingest(storage, event)

    assert _ids(await _search(storage, room, '"martians"')) == [found.event_id]
    assert rejected.event_id in {event_id for event_id, _ in await _rows(storage)}


async def test_redacted_events_are_not_found(storage: Storage) -> None:
    room = _room()
    own = room.message(BOB, "martians one")
    by_power = room.message(BOB, "martians two")
    by_other_server = room.message(BOB, "martians three")
    untouched = room.message(DAVE, "martians four")
    for sender, target in [(BOB, own), (ALICE, by_power), (DAVE, by_other_server)]:
        room.send_fields(
            {
                "type": "m.room.redaction",
                "sender": sender,
                "content": {},
                "redacts": target.event_id,
            }
        )
    await ingest_all(storage, room.order)

    page = await _search(storage, room, '"martians"')

    # Dave's redaction of Bob's event applies neither by power nor by server.
    assert _ids(page) == [untouched.event_id, by_other_server.event_id]
    assert page.count == 2


async def test_recent_pages_down_the_stream_and_rank_by_closeness(storage: Storage) -> None:
    room = _room()
    once = room.message(BOB, "martians and a long tail of many other words in the message")
    twice = room.message(BOB, "martians martians")
    newest = room.message(BOB, "the martians, again, in a sentence of several words")
    room.message(BOB, "nothing to see")
    await ingest_all(storage, room.order)

    first = await _search(storage, room, '"martians"', limit=2)
    assert _ids(first) == [newest.event_id, twice.event_id]
    assert first.count == 3
    rest = await _search(
        storage, room, '"martians"', limit=2, below=first.hits[-1].event.stream_ordering
    )
    assert _ids(rest) == [once.event_id]

    ranked = await _search(storage, room, '"martians"', order_by="rank")
    assert _ids(ranked)[0] == twice.event_id
    assert ranked.hits[0].rank > ranked.hits[1].rank >= ranked.hits[2].rank
    skipped = await _search(storage, room, '"martians"', order_by="rank", offset=1, limit=1)
    assert _ids(skipped) == [_ids(ranked)[1]]
