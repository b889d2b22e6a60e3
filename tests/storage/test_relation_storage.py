"""Relations in storage: the rows persist_events writes whatever path an
event takes, the row following its event's stream ordering, and the
redaction rule applied in SQL agreeing with the one events are served by.

Rooms come from :class:`ranvier.testing.RoomBuilder` (real event IDs) and
go through core into real storage (:func:`ranvier.testing.ingest`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from ranvier.protocol.events import Pdu
from ranvier.storage import Storage
from ranvier.storage.reads import get_events
from ranvier.storage.redactions import RedactedEvent, served
from ranvier.storage.relations import related_events, relation_of
from ranvier.testing import RoomBuilder, ingest, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DAVE = "@dave:other.example"


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "relations.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


def _room() -> RoomBuilder:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE)
    return room


def _related(room: RoomBuilder, sender: str, parent: str, rel_type: str = "m.thread") -> Pdu:
    return room.send(
        "m.room.message",
        sender,
        {"body": "r", "m.relates_to": {"rel_type": rel_type, "event_id": parent}},
    )


async def _rows(storage: Storage) -> list[tuple[Any, ...]]:
    def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT r.event_id, r.relates_to_id, r.rel_type, r.stream_ordering = e.stream_ordering"
            " FROM event_relations AS r JOIN events AS e ON e.event_id = r.event_id"
            " ORDER BY r.stream_ordering"
        ).fetchall()

    return await storage.readers.read(read)


async def _related_ids(storage: Storage, room: RoomBuilder, parent: str) -> list[str]:
    def read(conn: sqlite3.Connection) -> list[str]:
        events, _ = related_events(
            conn,
            room.room_id,
            parent,
            rel_type=None,
            event_type=None,
            after=-(2**62),
            upto=2**62,
            limit=100,
            backwards=False,
            depth=1,
        )
        return [event.event_id for event in events]

    return await storage.readers.read(read)


def test_relation_of_reads_the_relation_and_nothing_else() -> None:
    def event(content: str) -> bytes:
        return f'{{"content": {content}, "type": "m.room.message"}}'.encode()

    assert relation_of(event('{"m.relates_to": {"rel_type": "m.x", "event_id": "$p"}}')) == (
        "$p",
        "m.x",
    )
    assert relation_of(event('{"m.relates_to": {"m.in_reply_to": {"event_id": "$p"}}}')) is None
    assert relation_of(event('{"m.relates_to": ["m.thread", "$p"]}')) is None
    assert relation_of(event('{"m.relates_to": {"rel_type": "m.x", "event_id": 1}}')) is None
    assert relation_of(event('{"body": "no relation"}')) is None
    assert relation_of(b'{"content": "\\"m.relates_to\\""}') is None


async def test_persisting_writes_a_row_per_relating_event(storage: Storage) -> None:
    room = _room()
    root = room.message(ALICE, "root")
    reply = _related(room, BOB, root.event_id)
    reaction = _related(room, DAVE, root.event_id, "m.annotation")
    room.message(BOB, "plain")
    await ingest_all(storage, room.order)

    assert await _rows(storage) == [
        (reply.event_id, root.event_id, "m.thread", 1),
        (reaction.event_id, root.event_id, "m.annotation", 1),
    ]
    assert await _related_ids(storage, room, root.event_id) == [
        reply.event_id,
        reaction.event_id,
    ]


async def test_an_outlier_joining_the_dag_takes_its_row_along(storage: Storage) -> None:
    room = _room()
    root = room.message(ALICE, "root")
    reply = _related(room, BOB, root.event_id)
    await ingest_all(storage, room.order[:-1])
    await ingest(storage, reply, outlier=True)
    # An outlier is no timeline event: it relates to nothing yet.
    assert await _related_ids(storage, room, root.event_id) == []

    await ingest(storage, reply)

    assert await _rows(storage) == [(reply.event_id, root.event_id, "m.thread", 1)]
    assert await _related_ids(storage, room, root.event_id) == [reply.event_id]


async def test_the_sql_redaction_rule_agrees_with_serving(storage: Storage) -> None:
    room = _room()
    root = room.message(ALICE, "root")
    own = _related(room, BOB, root.event_id)
    by_power = _related(room, BOB, root.event_id)
    by_other_server = _related(room, BOB, root.event_id)
    untouched = _related(room, DAVE, root.event_id)
    redactions = [
        (BOB, own),
        (ALICE, by_power),  # the creator has the redact level
        (DAVE, by_other_server),  # neither power nor Bob's server
    ]
    for sender, target in redactions:
        room.send_fields(
            {
                "type": "m.room.redaction",
                "sender": sender,
                "content": {},
                "redacts": target.event_id,
            }
        )
    await ingest_all(storage, room.order)

    relating = [own, by_power, by_other_server, untouched]

    def redacted_when_served(conn: sqlite3.Connection) -> set[str]:
        found = get_events(conn, [event.event_id for event in relating])
        assert len(found) == len(relating)
        return {
            event.event_id
            for event in served(conn, list(found.values()))
            if isinstance(event, RedactedEvent)
        }

    redacted = await storage.readers.read(redacted_when_served)
    related = await _related_ids(storage, room, root.event_id)

    assert redacted == {own.event_id, by_power.event_id}
    assert related == [by_other_server.event_id, untouched.event_id]
