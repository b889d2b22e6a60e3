"""Forgotten rooms in storage: the forget refused while the user is in the
room, kept otherwise, cleared by an invite, knock or join that becomes the
user's membership and by nothing else, and the write run twice changing
nothing the second time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from _memberships import BOB, ROOM, VERSION, base_state, bob_member
from _twice import run_twice, write_call

from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.forgotten_rooms import _forget_room, forgotten_rooms, is_forgotten
from ranvier.storage.writes import persist_events

OTHER_ROOM = "!other:example.org"


def _refused(conn: sqlite3.Connection, room_id: str = ROOM) -> None:
    with pytest.raises(MatrixError) as refused:
        _forget_room(conn, user_id=BOB, room_id=room_id)
    assert (refused.value.http_status, refused.value.errcode) == (400, "M_UNKNOWN")
    assert not is_forgotten(conn, user_id=BOB, room_id=room_id)


def test_a_room_is_forgotten_only_once_left(conn: sqlite3.Connection) -> None:
    base = base_state(conn)
    # Never in it: accepted, and nothing kept.
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    assert forgotten_rooms(conn, user_id=BOB) == frozenset()
    persist_events(conn, [bob_member("$join", "join", before=base)])
    _refused(conn)
    persist_events(conn, [bob_member("$leave", "leave", before=base, depth=3)])
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    assert is_forgotten(conn, user_id=BOB, room_id=ROOM)
    assert forgotten_rooms(conn, user_id=BOB) == {ROOM}
    assert forgotten_rooms(conn, user_id="@alice:example.org") == frozenset()


@pytest.mark.parametrize("membership", ["invite", "knock", "join"])
def test_being_in_the_room_again_clears_the_forgetting(
    conn: sqlite3.Connection, membership: str
) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$leave", "leave", before=base)])
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    # Neither a rejected nor a soft-failed membership puts Bob back.
    persist_events(
        conn,
        [
            bob_member("$rejected", membership, before=base, rejected="not allowed", depth=3),
            bob_member("$soft", membership, before=base, soft_failed=True, depth=4),
        ],
    )
    assert is_forgotten(conn, user_id=BOB, room_id=ROOM)
    persist_events(conn, [bob_member("$back", membership, before=base, depth=5)])
    assert not is_forgotten(conn, user_id=BOB, room_id=ROOM)
    _refused(conn)


def test_an_old_join_written_now_clears_nothing(conn: sqlite3.Connection) -> None:
    base = base_state(conn)
    persist_events(conn, [bob_member("$leave", "leave", before=base, depth=5)])
    (left,) = conn.execute(
        "SELECT state_group FROM current_state_groups WHERE room_id = ?", (ROOM,)
    ).fetchone()
    _forget_room(conn, user_id=BOB, room_id=ROOM)
    # A join from before the leave, backfilled: current state stays the leave's.
    persist_events(
        conn,
        [bob_member("$old_join", "join", before=base, depth=1)],
        current_state_groups={ROOM: left},
    )
    assert is_forgotten(conn, user_id=BOB, room_id=ROOM)


def test_an_outlier_invite_to_a_room_not_joined_here_clears_it(
    conn: sqlite3.Connection,
) -> None:
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, ?)", (OTHER_ROOM, VERSION))
    persist_events(conn, [bob_member("$invite", "invite", room_id=OTHER_ROOM, out_of_band=True)])
    _refused(conn, OTHER_ROOM)
    persist_events(
        conn, [bob_member("$reject", "leave", room_id=OTHER_ROOM, out_of_band=True, depth=3)]
    )
    _forget_room(conn, user_id=BOB, room_id=OTHER_ROOM)
    # An outlier join is an auth event fetched on its own: no membership.
    persist_events(conn, [bob_member("$auth_join", "join", room_id=OTHER_ROOM, depth=4)])
    assert is_forgotten(conn, user_id=BOB, room_id=OTHER_ROOM)
    persist_events(conn, [bob_member("$again", "invite", room_id=OTHER_ROOM, depth=5)])
    assert not is_forgotten(conn, user_id=BOB, room_id=OTHER_ROOM)


async def test_the_forget_run_twice_changes_nothing_more(storage: Storage, db_path: Path) -> None:
    def left(conn: sqlite3.Connection) -> None:
        persist_events(conn, [bob_member("$leave", "leave", before=base_state(conn))])

    await storage.actor.submit(left)
    operation = write_call(_forget_room, user_id=BOB, room_id=ROOM)
    assert await run_twice(storage, db_path, operation, ["forgotten_rooms"]) is None
    assert await storage.forgotten_rooms.has_forgotten(BOB, ROOM)
    assert await storage.forgotten_rooms.forgotten_rooms(BOB) == {ROOM}
    assert not await storage.forgotten_rooms.has_forgotten(BOB, OTHER_ROOM)
