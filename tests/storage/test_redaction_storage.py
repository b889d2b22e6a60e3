"""Redactions in storage: the rows persist_events writes, the migration's
fill, and the rule applied when events are read for serving.

Rooms come from :class:`ranvier.testing.RoomBuilder` (real event IDs) and
go through core into real storage (:func:`ranvier.testing.ingest`), so the
auth events a redaction cites are the ones the spec selects.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _redactions import redaction_of

from ranvier.core import compute_event_context, event_to_persist
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.storage import Storage, StoredEvent
from ranvier.storage.connections import open_writer
from ranvier.storage.reads import get_event
from ranvier.storage.redactions import RedactedEvent, fill_redactions, served
from ranvier.storage.schema import MIGRATIONS, migrate
from ranvier.testing import RoomBuilder, ingest, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:other.example"


def _public_room(version: str = "10") -> RoomBuilder:
    room = RoomBuilder(version, ALICE)
    room.public_room(BOB, CAROL, DAVE)
    return room


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "redactions.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


async def _served(storage: Storage, event_id: str) -> StoredEvent:
    found = await storage.redactions.get_served_events([event_id])
    return found[event_id]


def _content(event: StoredEvent) -> Any:
    return msgspec.json.decode(event.json)["content"]


async def test_a_senders_own_redaction_applies_and_the_stored_event_is_kept(
    storage: Storage,
) -> None:
    room = _public_room()
    message = room.message(BOB, "oops")
    redaction = redaction_of(room, BOB, message.event_id)
    await ingest_all(storage, room.order)

    shown = await _served(storage, message.event_id)
    assert isinstance(shown, RedactedEvent)
    assert msgspec.json.decode(shown.json) == redact(message.json, "10")
    assert _content(shown) == {}
    assert shown.redacted_because.event_id == redaction.event_id
    assert (shown.stream_ordering, shown.sender) == (
        (await storage.get_event(message.event_id)).stream_ordering,  # type: ignore[union-attr]
        BOB,
    )
    # What is stored stays as it came: its content hash still checks.
    stored = await storage.get_events([message.event_id])
    assert stored[message.event_id].json == message.raw
    assert not isinstance(stored[message.event_id], RedactedEvent)
    # The redaction itself, and events nothing redacts, are served whole.
    others = await storage.redactions.get_served_events([redaction.event_id, room.create.event_id])
    assert not any(isinstance(event, RedactedEvent) for event in others.values())
    assert others[redaction.event_id].json == redaction.raw


async def test_who_may_redact_whose_events(storage: Storage) -> None:
    room = _public_room()
    by_alice = room.message(ALICE, "from the admin")
    by_carol = room.message(CAROL, "from a neighbour on the same server")
    by_dave = room.message(DAVE, "from another server")
    # Dave, of another server and with no power, redacts Alice's event:
    # stored and accepted, but it does not apply.
    redaction_of(room, DAVE, by_alice.event_id)
    # Bob has no power either, but is of Carol's server.
    redaction_of(room, BOB, by_carol.event_id)
    # Alice has the power to redact anyone's.
    by_admin = redaction_of(room, ALICE, by_dave.event_id)
    await ingest_all(storage, room.order)

    shown = await storage.redactions.get_served_events(
        [by_alice.event_id, by_carol.event_id, by_dave.event_id]
    )
    assert not isinstance(shown[by_alice.event_id], RedactedEvent)
    assert _content(shown[by_alice.event_id]) == {"body": "from the admin"}
    assert isinstance(shown[by_carol.event_id], RedactedEvent)
    dave = shown[by_dave.event_id]
    assert isinstance(dave, RedactedEvent)
    assert dave.redacted_because.event_id == by_admin.event_id


async def test_the_power_is_the_one_at_the_redaction(storage: Storage) -> None:
    room = _public_room()
    by_alice = room.message(ALICE)
    # Dave gets the redact level, then loses it again; only his redaction
    # while he had it applies, even though he has none now.
    room.power_levels(ALICE, {ALICE: 100, DAVE: 50})
    first = room.message(ALICE, "first")
    redaction_of(room, DAVE, first.event_id)
    room.power_levels(ALICE, {ALICE: 100})
    redaction_of(room, DAVE, by_alice.event_id)
    await ingest_all(storage, room.order)

    shown = await storage.redactions.get_served_events([by_alice.event_id, first.event_id])
    assert isinstance(shown[first.event_id], RedactedEvent)
    assert not isinstance(shown[by_alice.event_id], RedactedEvent)


async def test_a_redaction_of_an_event_of_another_room_does_not_apply(storage: Storage) -> None:
    room = _public_room()
    other = _public_room()
    message = room.message(BOB)
    # Bob, in both rooms, names this room's event in the other room.
    redaction_of(other, BOB, message.event_id)
    await ingest_all(storage, room.order)
    await ingest_all(storage, other.order)

    assert not isinstance(await _served(storage, message.event_id), RedactedEvent)


async def test_a_rejected_redaction_does_not_apply(storage: Storage) -> None:
    room = _public_room()
    message = room.message(BOB)
    await ingest_all(storage, room.order)
    # Mallory, of Bob's server, was never in the room: the auth rules reject it.
    rejected = redaction_of(room, "@mallory:example.org", message.event_id)
    outcome = await ingest(storage, rejected)
    assert outcome.failure is not None
    assert not isinstance(await _served(storage, message.event_id), RedactedEvent)


@pytest.mark.parametrize("soft_failed", [False, True])
async def test_a_soft_failed_redaction_does_not_apply(storage: Storage, soft_failed: bool) -> None:
    room = _public_room()
    message = room.message(BOB)
    redaction = redaction_of(room, BOB, message.event_id)
    await ingest_all(storage, room.order[:-1])
    # Written as the checks against the current state write an event they
    # fail (had Bob been banned meanwhile), or as they write one they pass.
    context = await compute_event_context(redaction, storage, storage)
    written = event_to_persist(redaction, context)
    await storage.persist_events([msgspec.structs.replace(written, soft_failed=soft_failed)])

    shown = await _served(storage, message.event_id)
    assert isinstance(shown, RedactedEvent) == (not soft_failed)


async def test_a_redaction_stored_before_its_target_applies_once_it_arrives(
    storage: Storage,
) -> None:
    room = _public_room()
    parent = room.last
    # Two events on one parent, as two servers send them at once: the
    # redaction is stored first.
    message = room.message(BOB, "late", apply=False)
    redaction = redaction_of(room, BOB, message.event_id, prev=[parent])
    await ingest_all(storage, room.order)
    assert await storage.redactions.get_served_events([message.event_id]) == {}

    outcome = await ingest(storage, message)
    assert outcome.failure is None
    shown = await _served(storage, message.event_id)
    assert isinstance(shown, RedactedEvent)
    assert shown.redacted_because.event_id == redaction.event_id


async def test_the_auth_checks_read_events_as_served_but_create_events_whole(
    storage: Storage,
) -> None:
    room = _public_room()
    levels = room.state[("m.room.power_levels", "")]
    message = room.message(BOB)
    redaction_of(room, ALICE, levels)
    redaction_of(room, ALICE, room.create.event_id)
    # Dave has no power and is of another server than Bob: it does not apply.
    redaction_of(room, DAVE, message.event_id)
    redaction_of(room, ALICE, "$not-here-yet")
    await ingest_all(storage, room.order)

    ids = [levels, room.create.event_id, message.event_id, "$not-here-yet"]
    for_auth = await storage.get_events_for_auth(ids)
    served = await storage.redactions.get_served_events(ids)
    stored = await storage.get_events(ids)
    assert set(for_auth) == set(served) == set(stored) == set(ids[:3])
    assert for_auth[levels] == served[levels]
    assert isinstance(served[levels], RedactedEvent)
    # Synapse applies no redaction to a create event.
    assert isinstance(served[room.create.event_id], RedactedEvent)
    assert for_auth[room.create.event_id] == stored[room.create.event_id]
    assert for_auth[message.event_id] == stored[message.event_id]
    # Named by a redaction, stored or not, whether it applies or not.
    assert await storage.get_redaction_targets([*ids, room.last]) == set(ids)


async def test_a_redacted_state_event_is_served_stripped_in_state(storage: Storage) -> None:
    room = _public_room()
    topic = room.topic(ALICE, "secret plans")
    redaction_of(room, ALICE, topic.event_id)
    await ingest_all(storage, room.order)

    # Still the room's topic, with its content gone.
    current = await storage.get_current_state_ids(room.room_id)
    assert current[("m.room.topic", "")] == topic.event_id
    (shown,) = await storage.sync.current_state_for_keys(room.room_id, [("m.room.topic", "")])
    assert isinstance(shown, RedactedEvent)
    assert _content(shown) == {}


@pytest.mark.parametrize("version", ["11", "12"])
async def test_newer_room_versions(storage: Storage, version: str) -> None:
    """v11 names the target in the content; v12's creator has power above
    every level, though no event cites the create event, and is left out of
    the power levels' users.
    """
    room = _public_room(version)
    by_dave = room.message(DAVE)
    room.power_levels(ALICE, {ALICE: 100}, content={"redact": 100})
    redaction = redaction_of(room, ALICE, by_dave.event_id)
    await ingest_all(storage, room.order)
    assert "redacts" not in redaction.json
    assert (room.create.event_id in redaction.auth_event_ids) == (version == "11")

    shown = await _served(storage, by_dave.event_id)
    assert isinstance(shown, RedactedEvent)
    assert _content(shown) == {}
    # The redaction keeps its content's redacts when it is served.
    assert _content(shown.redacted_because) == {"redacts": by_dave.event_id}


async def test_one_look_up_for_a_batch(tmp_path: Path) -> None:
    """Serving a batch costs one statement for the redactions, however
    many of its events are redacted.
    """
    with contextlib.closing(open_writer(tmp_path / "batch.db")) as conn:
        migrate(conn)
        room = _public_room()
        messages = [room.message(BOB, f"m{n}") for n in range(20)]
        for message in messages[::2]:
            redaction_of(room, BOB, message.event_id)
        _insert(conn, room, room.order)
        fill_redactions(conn)
        events = [_stored_row(conn, message.event_id) for message in messages]
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        shown = served(conn, events)
        conn.set_trace_callback(None)
    assert len(statements) == 1
    assert [isinstance(event, RedactedEvent) for event in shown] == [n % 2 == 0 for n in range(20)]
    assert [event.event_id for event in shown] == [message.event_id for message in messages]


# --- The migration that made the table ----------------------------------------------


def _insert(conn: sqlite3.Connection, room: RoomBuilder, events: list[Pdu]) -> None:
    """Events written as a database of an earlier version holds them."""
    conn.execute(
        "INSERT OR IGNORE INTO rooms (room_id, room_version) VALUES (?, ?)",
        (room.room_id, room.version),
    )
    for event in events:
        conn.execute(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed, rejected_reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, 0, NULL)",
            (
                event.event_id,
                event.room_id,
                event.type,
                event.state_key,
                event.sender,
                event.depth,
                event.origin_server_ts,
                event.raw,
            ),
        )
        conn.executemany(
            "INSERT INTO event_auth (event_id, auth_event_id, room_id) VALUES (?, ?, ?)",
            [(event.event_id, auth, event.room_id) for auth in event.auth_event_ids],
        )


def _stored_row(conn: sqlite3.Connection, event_id: str) -> StoredEvent:
    event = get_event(conn, event_id)
    assert event is not None, event_id
    return event


# The version that adds the redactions table; later ones may follow it.
_REDACTIONS_VERSION = 1 + [migration.__name__ for migration in MIGRATIONS].index("_redactions")


def test_the_migration_fills_the_table_from_the_events_stored(tmp_path: Path) -> None:
    with contextlib.closing(open_writer(tmp_path / "old.db")) as conn:
        migrate(conn, target=_REDACTIONS_VERSION - 1)
        room = _public_room()
        by_alice, by_dave = room.message(ALICE), room.message(DAVE)
        own = redaction_of(room, DAVE, by_dave.event_id)
        powerless = redaction_of(room, DAVE, by_alice.event_id)
        admin = redaction_of(room, ALICE, by_dave.event_id)
        _insert(conn, room, room.order)

        migrate(conn)

        rows = {
            event_id: (redacts, room_id, may_redact)
            for event_id, redacts, room_id, may_redact in conn.execute(
                "SELECT event_id, redacts, room_id, sender_may_redact FROM redactions"
            )
        }
        shown = served(conn, [_stored_row(conn, by_alice.event_id)])
    assert rows == {
        own.event_id: (by_dave.event_id, room.room_id, 0),
        powerless.event_id: (by_alice.event_id, room.room_id, 0),
        admin.event_id: (by_dave.event_id, room.room_id, 1),
    }
    assert not isinstance(shown[0], RedactedEvent)
