"""Housekeeping's pruning of superseded device-list changes, seen over
HTTP: ``/sync`` and ``/keys/changes`` from old tokens answer as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from _client import SharedRoom, open_shared_room

from ranvier.storage.housekeeping import Prune
from ranvier.testing.homeserver import TestUser


def _change_count(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM device_list_changes").fetchone()
        return int(count)
    finally:
        conn.close()


async def _rename(room: SharedRoom, user: TestUser, name: str) -> None:
    await room.client.ok(user, "PUT", f"/devices/{user.device_id}", {"display_name": name})


async def test_answers_from_old_tokens_are_the_same_after_pruning(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, SharedRoom) as room:
        alice, bob, carol = room.alice, room.bob, room.carol
        first = (await room.sync(alice))["next_batch"]
        # Bob changes three times around a token of Alice's; Carol, who
        # shares no room with Alice, and Alice herself change too.
        await _rename(room, bob, "one")
        await _rename(room, carol, "one")
        middle = (await room.sync(alice))["next_batch"]
        await _rename(room, bob, "two")
        await _rename(room, alice, "one")
        await _rename(room, bob, "three")
        await _rename(room, carol, "two")
        now = (await room.sync(alice))["next_batch"]

        async def answers() -> list[Any]:
            found: list[Any] = []
            for since in (first, middle):
                synced = await room.sync(alice, since=since)
                found.append(synced["device_lists"])
                found.append(
                    await room.client.ok(
                        alice, "GET", "/keys/changes", params={"from": since, "to": now}
                    )
                )
            return found

        before = await answers()
        assert before[0] == {"changed": sorted([alice.user_id, bob.user_id]), "left": []}
        assert before[2] == {"changed": sorted([alice.user_id, bob.user_id]), "left": []}
        db_path = room.hs.server.config.data_dir / "homeserver.db"
        rows = _change_count(db_path)
        housekeeping = room.hs.server.housekeeping
        # The first pass sets the position the next one prunes up to.
        await housekeeping.run_pass()
        done = await housekeeping.run_pass()
        # Bob's first two and Carol's first go; each user's newest stays.
        assert done[Prune.SUPERSEDED_DEVICE_LIST_CHANGES] == 3
        assert _change_count(db_path) == rows - 3
        assert await answers() == before
