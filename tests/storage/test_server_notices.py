"""Notice rooms kept per user: read back, replaced by a newer room, and a
write of the same room run twice leaving the row as the first left it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from ranvier.storage import Storage


async def test_a_users_notice_room_is_kept_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "notices.db"
    storage = Storage(path, synchronous="OFF")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        rooms = storage.server_notices
        assert await rooms.get_server_notice_room("@a:x") is None

        await rooms.set_server_notice_room("@a:x", "!first:x", 5)
        await rooms.set_server_notice_room("@a:x", "!first:x", 9)
        assert await rooms.get_server_notice_room("@a:x") == "!first:x"
        assert await rooms.get_server_notice_room("@b:x") is None
        with sqlite3.connect(path) as conn:
            created = conn.execute("SELECT created_ts FROM server_notice_rooms").fetchall()
        assert created == [(5,)]

        await rooms.set_server_notice_room("@a:x", "!second:x", 12)
        assert await rooms.get_server_notice_room("@a:x") == "!second:x"
        nursery.cancel_scope.cancel()

    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT user_id, room_id, created_ts FROM server_notice_rooms"
        ).fetchall()
    assert rows == [("@a:x", "!second:x", 12)]
