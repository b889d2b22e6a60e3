"""Redacted events' original content, replaced once the redaction is old
(:mod:`ranvier.storage.redacted_content`, through housekeeping's rule).

Rooms come from :class:`ranvier.testing.RoomBuilder` and go through core
into real storage, as in ``test_redaction_storage.py``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _redactions import redaction_of

from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import event_id_from_signed_form
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage import Storage
from ranvier.storage.housekeeping import Prune
from ranvier.storage.redacted_content import auth_content_kept
from ranvier.storage.redactions import RedactedEvent
from ranvier.testing import RoomBuilder, ingest, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DAVE = "@dave:other.example"
#: A word only the redacted message holds.
SECRET = "xylophonesecret"


def _public_room(version: str = "10") -> RoomBuilder:
    room = RoomBuilder(version, ALICE)
    room.public_room(BOB, DAVE)
    return room


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "redacted.db"


@pytest.fixture
async def storage(db_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(db_path, synchronous="OFF")
    await nursery.start(store.run)
    return store


def _later() -> int:
    """A cutoff every redaction stored so far was received before."""
    return time.time_ns() // 1_000_000 + 1


async def _prune(storage: Storage, cutoff_ms: int) -> int:
    return await storage.housekeeping.prune(Prune.REDACTED_CONTENT, cutoff_ms=cutoff_ms, limit=100)


def _stored_json(db_path: Path, event_id: str) -> bytes:
    conn = sqlite3.connect(db_path)
    try:
        (json,) = conn.execute("SELECT json FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return bytes(json)
    finally:
        conn.close()


async def _found(storage: Storage, room_id: str, word: str) -> list[str]:
    page = await storage.search.search_events(
        word,
        room_ids=[room_id],
        keys=["content.body"],
        order_by="recent",
        below=None,
        offset=0,
        limit=10,
    )
    return [hit.event.event_id for hit in page.hits]


async def _search_rows(storage: Storage, event_id: str) -> int:
    def count(conn: sqlite3.Connection) -> int:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM event_search WHERE event_id = ?", (event_id,)
        ).fetchone()
        return int(n)

    return await storage.readers.read(count)


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_an_old_redaction_replaces_the_content_with_what_was_served(
    storage: Storage, db_path: Path, version: str
) -> None:
    room = _public_room(version)
    message = room.message(BOB, f"a {SECRET} said in haste")
    kept = room.message(BOB, f"another {SECRET} nobody redacted")
    redaction = redaction_of(room, BOB, message.event_id)
    await ingest_all(storage, room.order)
    served_before = (await storage.redactions.get_served_events([message.event_id]))[
        message.event_id
    ]
    assert SECRET.encode() in _stored_json(db_path, message.event_id)
    assert await _search_rows(storage, message.event_id) == 1

    assert await _prune(storage, _later()) == 1

    stored = _stored_json(db_path, message.event_id)
    assert SECRET.encode() not in stored
    assert msgspec.json.decode(stored) == redact(message.json, version)
    # Served as before, still with the redaction that did it.
    served_after = (await storage.redactions.get_served_events([message.event_id]))[
        message.event_id
    ]
    assert isinstance(served_after, RedactedEvent)
    assert served_after.json == served_before.json
    assert served_after.redacted_because.event_id == redaction.event_id
    # The event still has the ID, hashes and signatures it came with.
    rv = get_room_version(version)
    reparsed = Pdu.from_json(stored, rv)
    assert reparsed.event_id == message.event_id
    assert event_id_from_signed_form(reparsed.signed_form, rv) == message.event_id
    assert reparsed.signatures == message.signatures
    # Its words are out of the full-text index; the other message's stay.
    assert await _search_rows(storage, message.event_id) == 0
    assert await _found(storage, room.room_id, SECRET) == [kept.event_id]
    assert SECRET.encode() in _stored_json(db_path, kept.event_id)
    # Each redaction is taken once.
    assert await _prune(storage, _later()) == 0


async def test_a_redaction_received_after_the_cutoff_waits(storage: Storage, db_path: Path) -> None:
    room = _public_room()
    before = _later() - 1
    message = room.message(BOB, SECRET)
    redaction_of(room, BOB, message.event_id)
    await ingest_all(storage, room.order)

    assert await _prune(storage, before) == 0
    assert SECRET.encode() in _stored_json(db_path, message.event_id)
    assert await _prune(storage, _later()) == 1
    assert SECRET.encode() not in _stored_json(db_path, message.event_id)


async def test_a_redaction_that_does_not_apply_leaves_the_content(
    storage: Storage, db_path: Path
) -> None:
    room = _public_room()
    by_alice = room.message(ALICE, SECRET)
    # Dave, of another server and with no power: accepted, but not applying.
    redaction_of(room, DAVE, by_alice.event_id)
    await ingest_all(storage, room.order)
    # Mallory was never in the room: rejected.
    rejected = redaction_of(room, "@mallory:example.org", by_alice.event_id)
    assert (await ingest(storage, rejected)).failure is not None

    assert await _prune(storage, _later()) == 2
    assert SECRET.encode() in _stored_json(db_path, by_alice.event_id)
    assert await _found(storage, room.room_id, SECRET) == [by_alice.event_id]
    assert await _prune(storage, _later()) == 0


async def test_a_partial_state_redaction_waits_for_its_verdict(
    storage: Storage, db_path: Path
) -> None:
    room = _public_room()
    message = room.message(BOB, SECRET)
    redaction = redaction_of(room, BOB, message.event_id)
    await ingest_all(storage, room.order)

    def mark_partial(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO partial_state_rooms VALUES (?, ?, 'example.org')",
            (room.room_id, redaction.event_id),
        )
        conn.execute(
            "INSERT INTO partial_state_events VALUES (?, ?)", (redaction.event_id, room.room_id)
        )

    def resynced(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM partial_state_events")
        conn.execute("DELETE FROM partial_state_rooms")

    await storage.actor.submit(mark_partial)
    assert await _prune(storage, _later()) == 0
    assert SECRET.encode() in _stored_json(db_path, message.event_id)

    await storage.actor.submit(resynced)
    assert await _prune(storage, _later()) == 1
    assert SECRET.encode() not in _stored_json(db_path, message.event_id)


async def test_a_target_stored_after_its_redaction_is_pruned_at_a_later_pass(
    storage: Storage, db_path: Path
) -> None:
    room = _public_room()
    parent = room.last
    message = room.message(BOB, SECRET, apply=False)
    redaction_of(room, BOB, message.event_id, prev=[parent])
    await ingest_all(storage, room.order)
    assert await _prune(storage, _later()) == 0

    assert (await ingest(storage, message)).failure is None
    assert await _prune(storage, _later()) == 1
    assert SECRET.encode() not in _stored_json(db_path, message.event_id)


@pytest.mark.parametrize(("version", "replaced"), [("10", False), ("11", True)])
async def test_power_levels_keep_what_the_auth_rules_read(
    storage: Storage, db_path: Path, version: str, replaced: bool
) -> None:
    """Before v11, redacting power levels drops ``invite``, which the auth
    rules read: that event keeps its content (served redacted all the
    same); from v11 the redaction keeps it, and the event is replaced."""
    room = _public_room(version)
    levels = room.power_levels(ALICE, {ALICE: 100, BOB: 50}, content={"invite": 50})
    redaction_of(room, ALICE, levels.event_id)
    await ingest_all(storage, room.order)

    assert await _prune(storage, _later()) == 1
    stored = msgspec.json.decode(_stored_json(db_path, levels.event_id))
    assert stored == (redact(levels.json, version) if replaced else levels.json)
    assert stored["content"]["invite"] == 50
    served = (await storage.redactions.get_served_events([levels.event_id]))[levels.event_id]
    assert msgspec.json.decode(served.json)["content"] == redact(levels.json, version)["content"]
    assert await _prune(storage, _later()) == 0


async def test_a_member_event_loses_its_display_name_and_keeps_its_membership(
    storage: Storage, db_path: Path
) -> None:
    room = _public_room()
    renamed = room.member(BOB, "join", content={"displayname": SECRET})
    redaction_of(room, BOB, renamed.event_id)
    await ingest_all(storage, room.order)
    assert SECRET.encode() in _stored_json(db_path, renamed.event_id)

    assert await _prune(storage, _later()) == 1
    stored = msgspec.json.decode(_stored_json(db_path, renamed.event_id))
    assert stored["content"] == {"membership": "join"}


@pytest.mark.parametrize(
    ("event", "redacted", "kept"),
    [
        # Not state, or not read by the auth rules: always replaced.
        ({"type": "m.room.message", "content": {"body": "x"}}, {"content": {}}, True),
        (
            {"type": "m.room.topic", "state_key": "", "content": {"topic": "x"}},
            {"content": {}},
            True,
        ),
        # Auth events: all their content counts.
        (
            {"type": "m.room.power_levels", "state_key": "", "content": {"invite": 50}},
            {"content": {}},
            False,
        ),
        (
            {"type": "m.room.create", "state_key": "", "content": {"creator": "@a:x"}},
            {"content": {"creator": "@a:x"}},
            True,
        ),
        # Member events: membership, the authorising user and a third-party invite.
        (
            {"type": "m.room.member", "state_key": "@a:x", "content": {"membership": "join"}},
            {"content": {"membership": "join"}},
            True,
        ),
        (
            {
                "type": "m.room.member",
                "state_key": "@a:x",
                "content": {"membership": "join", "join_authorised_via_users_server": "@b:x"},
            },
            {"content": {"membership": "join"}},
            False,
        ),
        (
            {
                "type": "m.room.member",
                "state_key": "@a:x",
                "content": {"membership": "invite", "third_party_invite": {"signed": {}}},
            },
            {"content": {"membership": "invite"}},
            False,
        ),
    ],
)
def test_auth_content_kept(event: dict[str, Any], redacted: dict[str, Any], kept: bool) -> None:
    assert auth_content_kept(event, redacted) is kept


async def test_a_write_takes_at_most_its_limit(storage: Storage) -> None:
    room = _public_room()
    for n in range(5):
        message = room.message(BOB, f"{SECRET} {n}")
        redaction_of(room, BOB, message.event_id)
    await ingest_all(storage, room.order)
    cutoff = _later()

    counts = [
        await storage.housekeeping.prune(Prune.REDACTED_CONTENT, cutoff_ms=cutoff, limit=2)
        for _ in range(4)
    ]
    assert counts == [2, 2, 1, 0]
    assert await _found(storage, room.room_id, SECRET) == []
