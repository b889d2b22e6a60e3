"""A room's purge in real storage: two rooms with every kind of row a room
has, one purged; no row of any table names the purged room or one of its
events afterwards (but its block), and every row of the other room, and
every other row, is as it was.

The schema is read from ``sqlite_master``, not listed here: a table added
later that holds a room's ID or an event's ID fails
:func:`test_every_table_with_a_room_or_event_column_is_purged_or_kept`
until the purge deletes from it or says why it keeps it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.storage import Storage
from ranvier.storage.connections import open_writer
from ranvier.storage.room_purge import PURGED_TABLES
from ranvier.testing import RoomBuilder, ingest, ingest_all
from ranvier.testing.room_rows import RoomRows, Row, read_tables, search_index_internals

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DAVE = "@dave:other.example"

#: Tables that may hold a room's or an event's ID and keep it on purpose.
KEPT: dict[str, str] = {
    "blocked_rooms": "a blocked room stays blocked",
    "user_redactions": "an admin's redaction job names rooms and events, not their content",
    "pdu_outbox": "our users' leaves still owed to other servers, until delivered",
}


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "purge.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


async def _room(storage: Storage, *, number: int) -> tuple[RoomBuilder, list[Pdu]]:
    """A room with state, messages, a redaction, a relation, an outlier and
    an event with partial state, written through core; returns it and its
    events (the outlier included)."""
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE)
    message = room.message(BOB, f"searchable words number {number}")
    room.send_fields(
        {
            "type": "m.reaction",
            "sender": ALICE,
            "content": {
                "m.relates_to": {
                    "rel_type": "m.annotation",
                    "event_id": message.event_id,
                    "key": "+1",
                }
            },
        }
    )
    doomed = room.message(BOB, "a mistake")
    room.send_fields(
        {"type": "m.room.redaction", "sender": BOB, "content": {}, "redacts": doomed.event_id}
    )
    room.topic(ALICE, f"topic {number}")
    await ingest_all(storage, room.order)
    # An outlier: an event known only by itself, not placed in the DAG.
    outlier = room.message(DAVE, "known out of band", apply=False)
    await ingest(storage, outlier, outlier=True)
    # A partial-state join's rows, and an event written with partial state.
    await storage.store_partial_join(
        room.room_id, "10", room.last, "other.example", {"other.example"}
    )
    partial = room.message(DAVE, "with partial state")
    await ingest(storage, partial, partial_state=True)
    await storage.store_resync_progress(
        room.room_id,
        phase="fetching",
        server="other.example",
        events_resynced=0,
        events_total=1,
        attempts=1,
        last_error=None,
        updated_ts=5,
    )
    return room, list({event.event_id: event for event in [*room.order, outlier]}.values())


async def _room_rows(storage: Storage, room: RoomBuilder, number: int) -> None:
    """The rows a room has beyond its events, written as their storage writes them."""
    room_id, event_id = room.room_id, room.last
    user = f"@user{number}:example.org"

    def write(conn: sqlite3.Connection) -> None:
        run = conn.execute
        run(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts)"
            " VALUES (?, 'm.read', ?, '', ?, 5)",
            (room_id, BOB, event_id),
        )
        run(
            "INSERT INTO account_data (user_id, room_id, type, content) VALUES (?, ?, 'm.tag', ?)",
            (BOB, room_id, b'{"tags": {"u.work": {}}}'),
        )
        run(
            "INSERT INTO client_transactions VALUES (?, 'DEV', x'', ?, ?, ?, 5)",
            (BOB, f"txn{number}", room_id, event_id),
        )
        run(
            "INSERT INTO room_aliases VALUES (?, ?, ?, 5, 'w')",
            (f"#r{number}:example.org", room_id, BOB),
        )
        run("INSERT INTO room_list VALUES (?, 5)", (room_id,))
        run("INSERT INTO appservice_room_list VALUES ('bridge', 'net', ?, 5)", (room_id,))
        run("INSERT INTO forgotten_rooms VALUES (?, ?)", (user, room_id))
        run(
            "INSERT INTO out_of_band_memberships VALUES (?, ?, ?, ?)",
            (f"$invite{number}", room_id, user, "elsewhere.test"),
        )
        run("INSERT INTO server_notice_rooms VALUES (?, ?, 5)", (user, room_id))
        run("INSERT INTO room_upgrade_claims VALUES (?, 'c', ?, '12', 5)", (room_id, BOB))
        run(
            "INSERT INTO sliding_sync_connections (conn_key, user_id, device_id, conn_id)"
            " VALUES (?, ?, 'DEV', 'c')",
            (number, user),
        )
        run("INSERT INTO sliding_sync_rooms VALUES (?, ?, 1, 1, '{}')", (number, room_id))
        run(
            "INSERT INTO room_key_backup_versions VALUES (?, 1, 'alg', x'7b7d', 3, 0, 'c')",
            (user,),
        )
        run(
            "INSERT INTO room_key_backup_keys VALUES (?, 1, ?, 'session', 0, 0, 0, x'7b7d')",
            (user, room_id),
        )
        run(
            "INSERT INTO destination_rooms VALUES ('other.example', ?, 10, 9)",
            (room_id,),
        )
        run(
            "INSERT INTO event_reports (request_id, room_id, event_id, user_id, received_ts)"
            " VALUES (?, ?, ?, ?, 5)",
            (f"req{number}", room_id, event_id, BOB),
        )
        run(
            "INSERT INTO un_partial_stated_rooms (room_id, stream_ordering) VALUES (?, 1)",
            (room_id,),
        )
        run(
            "INSERT INTO partial_state_device_updates"
            " (room_id, user_id, position, point, sent_to, edus)"
            " VALUES (?, ?, 3, ?, '[]', x'5b5d')",
            (room_id, BOB, f'["{event_id}"]'),
        )
        run("INSERT INTO blocked_rooms VALUES (?, ?, 5)", (room_id, ALICE))

    await storage.writer.submit(write)


async def _two_rooms(storage: Storage) -> tuple[RoomBuilder, list[Pdu], RoomBuilder, list[Pdu]]:
    purged, purged_events = await _room(storage, number=1)
    kept, kept_events = await _room(storage, number=2)
    await _room_rows(storage, purged, 1)
    await _room_rows(storage, kept, 2)
    return purged, purged_events, kept, kept_events


def _read(storage: Storage) -> dict[str, list[Row]]:
    conn = open_writer(storage.path)
    try:
        return read_tables(conn)
    finally:
        conn.close()


def _rows_of(storage: Storage, room_id: str, events: list[Pdu]) -> RoomRows:
    conn = open_writer(storage.path)
    try:
        return RoomRows(conn, room_id, [event.event_id for event in events])
    finally:
        conn.close()


async def test_a_purge_leaves_no_row_of_the_room_and_every_other_row(storage: Storage) -> None:
    purged, purged_events, kept, kept_events = await _two_rooms(storage)
    before = _read(storage)
    gone = _rows_of(storage, purged.room_id, purged_events)
    stays = _rows_of(storage, kept.room_id, kept_events)
    # The fixture gives every table the purge deletes from rows of both
    # rooms, so each statement of the purge is exercised.
    for table in sorted(PURGED_TABLES):
        assert any(gone.holds(table, row) for row in before[table]), f"no row of {table} to purge"
        assert any(stays.holds(table, row) for row in before[table]), f"no row of {table} to keep"

    result = await storage.room_purge.purge_room(purged.room_id)

    assert result is not None
    assert result.events == len(purged_events)
    after = _read(storage)
    for table, rows in after.items():
        left = [row for row in rows if gone.holds(table, row)]
        if table == "blocked_rooms":
            assert [row[0] for row in left] == [purged.room_id]
        else:
            assert left == [], f"{table} still holds {left}"
    # Every other row is as it was, but the purged room's backup etag,
    # moved because its keys changed, the counters' floors, and the
    # full-text index's own structures (its content is compared, and
    # searched below).
    changed = {"room_key_backup_versions", "id_floors", *search_index_internals(after)}
    for table in sorted(set(before) - changed):
        expected = [row for row in before[table] if not gone.holds(table, row)]
        if table == "blocked_rooms":
            expected = before[table]
        assert sorted(after[table], key=repr) == sorted(expected, key=repr), table
    found = await storage.readers.read(
        lambda conn: conn.execute(
            "SELECT event_id FROM event_search WHERE event_search MATCH 'searchable'"
        ).fetchall()
    )
    searchable = [event.event_id for event in kept_events if b"searchable" in event.raw]
    assert len(searchable) == 1
    assert [event_id for (event_id,) in found] == searchable
    versions = {row[0]: row[4] for row in after["room_key_backup_versions"]}
    assert versions == {"@user1:example.org": 4, "@user2:example.org": 3}
    # The kept room still reads whole.
    assert await storage.get_room_version(kept.room_id) == "10"
    assert await storage.get_room_version(purged.room_id) is None
    assert await storage.get_current_state_ids(purged.room_id) == {}
    assert await storage.get_events([e.event_id for e in purged_events]) == {}
    assert len(await storage.get_current_state_ids(kept.room_id)) == len(kept.state)


async def test_the_counters_do_not_go_back(storage: Storage) -> None:
    """The purged room holds the newest event and state group: the next
    ones are numbered above them, not given their numbers again."""
    kept = RoomBuilder("10", ALICE)
    kept.public_room(BOB)
    await ingest_all(storage, kept.order)
    purged = RoomBuilder("10", ALICE)
    purged.public_room(BOB)
    await ingest_all(storage, purged.order)

    def tops(conn: sqlite3.Connection) -> tuple[int, int]:
        (events,) = conn.execute("SELECT MAX(stream_ordering) FROM events").fetchone()
        (groups,) = conn.execute("SELECT MAX(id) FROM state_groups").fetchone()
        return int(events), int(groups)

    top_event, top_group = await storage.readers.read(tops)
    position = (await storage.sync.positions())[0]
    assert position == top_event
    await storage.room_purge.purge_room(purged.room_id)
    # The stream stays where it was: a sync token at it is not ahead of it.
    assert (await storage.sync.positions())[0] == position
    topic = kept.topic(ALICE, "after the purge")
    await ingest(storage, topic)
    stored = await storage.get_event(topic.event_id)
    assert stored is not None
    assert stored.stream_ordering == top_event + 1
    groups = await storage.get_event_state_groups(topic.event_id)
    assert groups is not None
    assert groups.after == top_group + 1


async def test_a_purge_refused_for_members_left_deletes_nothing(storage: Storage) -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE)
    await ingest_all(storage, room.order)
    before = _read(storage)

    with pytest.raises(MatrixError) as refused:
        await storage.room_purge.purge_room(room.room_id, refuse_if_members_of="example.org")

    assert refused.value.http_status == 400
    assert ALICE in refused.value.message
    assert BOB in refused.value.message
    assert _read(storage) == before
    # Only users of the server named count: other.example's Dave does not.
    room.member(ALICE, "leave")
    room.member(BOB, "leave")
    await ingest_all(storage, room.order[-2:])
    result = await storage.room_purge.purge_room(room.room_id, refuse_if_members_of="example.org")
    assert result is not None
    assert await storage.get_room_version(room.room_id) is None


async def test_a_room_not_stored_is_not_purged(storage: Storage) -> None:
    assert await storage.room_purge.purge_room("!unknown:example.org") is None


def test_every_table_with_a_room_or_event_column_is_purged_or_kept(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "schema.db")
    try:
        from ranvier.storage.schema import migrate

        migrate(conn)
        unaccounted = []
        for table in read_tables(conn):
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
            about_rooms = [c for c in columns if "room" in c or "event" in c or c in {"redacts"}]
            if about_rooms and table not in PURGED_TABLES and table not in KEPT:
                unaccounted.append((table, about_rooms))
        assert unaccounted == []
        assert not PURGED_TABLES & set(KEPT)
        assert set(read_tables(conn)) >= PURGED_TABLES
    finally:
        conn.close()
