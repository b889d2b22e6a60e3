"""A local user's newest membership: the room's current state, unless an
out-of-band membership (an outlier marked so when written) is newer; other
outlier memberships never count, and a membership taken into the DAG later
wins."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest
from _memberships import BOB, ROOM, base_state, bob_member

from ranvier.errors import BadJsonError
from ranvier.storage.connections import open_writer
from ranvier.storage.forgotten_rooms import _forget_room, is_forgotten
from ranvier.storage.local_memberships import (
    dag_membership,
    newest_membership,
    newest_memberships,
)
from ranvier.storage.schema import migrate
from ranvier.storage.sync_reads import current_membership, sync_snapshot
from ranvier.storage.writes import persist_events

AWAY = "!away:elsewhere.example"


def _ordering(conn: sqlite3.Connection, event_id: str) -> int:
    (ordering,) = conn.execute(
        "SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,)
    ).fetchone()
    return int(ordering)


def _newest(conn: sqlite3.Connection, room_id: str = ROOM) -> tuple[str, str] | None:
    found = newest_membership(conn, BOB, room_id)
    return None if found is None else (found[1], found[3])


def test_an_invite_after_the_room_was_left_is_the_membership(conn: sqlite3.Connection) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$join", "join", before=base)])
    persist_events(conn, [bob_member("$leave", "leave", before=base, depth=3)])
    assert _newest(conn) == ("leave", "$leave")
    persist_events(conn, [bob_member("$invite", "invite", out_of_band=True, depth=4)])
    assert _newest(conn) == ("invite", "$invite")
    # The room's state here is unchanged: the invite is not in it.
    dag = dag_membership(conn, BOB, ROOM)
    assert dag is not None
    assert dag[1] == "leave"
    assert newest_memberships(conn, BOB) == [
        (ROOM, "invite", _ordering(conn, "$invite"), "$invite")
    ]
    events_position = sync_snapshot(conn, BOB, 0)[0]
    assert sync_snapshot(conn, BOB, 0)[2] == [(ROOM, "invite", events_position, "$invite")]
    # A join in the DAG (through another server's send_join) is newer.
    persist_events(conn, [bob_member("$back", "join", before=base, depth=5)])
    assert _newest(conn) == ("join", "$back")
    assert sync_snapshot(conn, BOB, 0)[2] == [(ROOM, "join", _ordering(conn, "$back"), "$back")]
    assert newest_memberships(conn, "@carol:example.org") == []


def test_a_declined_invite_is_the_membership_and_reads_end_at_the_dag_leave(
    conn: sqlite3.Connection,
) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$leave", "leave", before=base)])
    persist_events(conn, [bob_member("$invite", "invite", out_of_band=True, depth=3)])
    persist_events(conn, [bob_member("$declined", "leave", out_of_band=True, depth=4)])
    assert _newest(conn) == ("leave", "$declined")
    # /messages reads the room up to the leave in its DAG, not the outlier.
    assert current_membership(conn, ROOM, BOB) == ("leave", _ordering(conn, "$leave"))
    # The invite in between kept the room from being forgotten; the
    # declined one lets it be.
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    assert is_forgotten(conn, user_id=BOB, room_id=ROOM)


def test_an_invite_while_left_clears_a_forgotten_room(conn: sqlite3.Connection) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$leave", "leave", before=base)])
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    assert is_forgotten(conn, user_id=BOB, room_id=ROOM)
    persist_events(conn, [bob_member("$invite", "invite", out_of_band=True, depth=3)])
    assert not is_forgotten(conn, user_id=BOB, room_id=ROOM)
    assert current_membership(conn, ROOM, BOB) == ("invite", _ordering(conn, "$invite"))


def test_outliers_fetched_for_the_dag_never_count(conn: sqlite3.Connection) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$join", "join", before=base, depth=5)])
    # Bob's old leave and invite fetched as auth events after the join:
    # newer by stream ordering, older in the room, and not marked.
    persist_events(
        conn,
        [bob_member("$old_leave", "leave", depth=3), bob_member("$old_invite", "invite", depth=4)],
    )
    assert _ordering(conn, "$old_invite") > _ordering(conn, "$join")
    assert _newest(conn) == ("join", "$join")
    assert newest_memberships(conn, BOB) == [(ROOM, "join", _ordering(conn, "$join"), "$join")]


def test_an_older_out_of_band_membership_loses_to_the_state(conn: sqlite3.Connection) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$invite", "invite", out_of_band=True)])
    # The invite reaches the room's timeline later (another user of ours
    # is in the room), followed by Bob's join.
    persist_events(conn, [bob_member("$invite", "invite", before=base)])
    assert _newest(conn) == ("invite", "$invite")
    persist_events(conn, [bob_member("$join", "join", before=base, depth=3)])
    assert _newest(conn) == ("join", "$join")


def test_rooms_known_only_through_out_of_band_memberships(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (AWAY,))
    assert _newest(conn, AWAY) is None
    persist_events(conn, [bob_member("$invite", "invite", room_id=AWAY, out_of_band=True)])
    persist_events(conn, [bob_member("$knock", "knock", room_id=ROOM, out_of_band=True)])
    assert sorted(newest_memberships(conn, BOB)) == [
        (AWAY, "invite", _ordering(conn, "$invite"), "$invite"),
        (ROOM, "knock", _ordering(conn, "$knock"), "$knock"),
    ]
    persist_events(conn, [bob_member("$withdrawn", "leave", room_id=AWAY, out_of_band=True)])
    assert _newest(conn, AWAY) == ("leave", "$withdrawn")
    assert dag_membership(conn, BOB, AWAY) is None


def test_only_an_outlier_is_out_of_band() -> None:
    event = bob_member("$e", "invite", before=1)
    with pytest.raises(BadJsonError, match="only an outlier"):
        msgspec.structs.replace(event, out_of_band=True)


def test_the_migration_marks_the_outliers_of_rooms_not_joined(tmp_path: Path) -> None:
    raw = open_writer(tmp_path / "old.db")
    try:
        migrate(raw, target=32)
        for room_id in (ROOM, AWAY):
            raw.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (room_id,))
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO current_state_groups VALUES (?, ?)", (ROOM, base_state(raw)))
        for event_id, room_id, membership in [
            ("$auth", ROOM, "invite"),
            ("$invite", AWAY, "invite"),
            ("$declined", AWAY, "leave"),
        ]:
            event = bob_member(event_id, membership, room_id=room_id)
            raw.execute(
                "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
                " origin_server_ts, json, outlier, soft_failed, rejected_reason)"
                " VALUES (?, ?, 'm.room.member', ?, ?, 1, 5, ?, 1, 0, NULL)",
                (event_id, room_id, BOB, BOB, event.json),
            )
        raw.execute("COMMIT")
        migrate(raw)
        marked = raw.execute(
            "SELECT event_id, room_id, user_id FROM out_of_band_memberships ORDER BY event_id"
        ).fetchall()
        # An outlier of a room with state here is no membership of Bob's.
        assert marked == [("$declined", AWAY, BOB), ("$invite", AWAY, BOB)]
        assert _newest(raw, AWAY) == ("leave", "$declined")
        assert _newest(raw) is None
    finally:
        raw.close()
