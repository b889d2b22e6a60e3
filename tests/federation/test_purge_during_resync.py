"""A room purged on a whole server while its un-partial-state task is
fetching the room's state, end to end.

B's user joins A's room through A with partial state; A holds every read
B's resync makes, so B's task is provably fetching. B purges the room, its
user still in it (a forced purge of the room admin API: after a leave, A
would refuse B the room's state and there would be no race), then A
answers. B's task ends without bringing a row of the room back, B goes on
serving, and neither ``ranvier status`` nor B started again on the same
data has anything of the room to show or resume. The finer cases (each
phase of the task, ingestion, clients, joins) are in
tests/core/test_purge_races.py.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import trio

from ranvier.config import Config
from ranvier.server import HomeServer
from ranvier.testing import Pki, RoomBuilder, ingest_all
from ranvier.testing.held_routes import HeldRoutes
from ranvier.testing.homeserver import RestartableHomeserver, federating_config

#: Real seconds a wait may take; only a failure reaches it.
_GIVE_UP_SECONDS = 30


async def _eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait until ``check`` holds, looking every 10 ms."""
    with trio.move_on_after(_GIVE_UP_SECONDS):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def _rows_naming(database: Path, room_id: str) -> dict[str, int]:
    """Rows naming the room in the tables where a resync writes."""
    uri = database.absolute().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        counts = {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE room_id = ?", (room_id,)
            ).fetchone()[0]
            for table in (
                "rooms",
                "events",
                "state_groups",
                "current_state",
                "partial_state_rooms",
                "resync_progress",
            )
        }
    return {table: count for table, count in counts.items() if count}


async def _ranvier_status(tmp_path: Path, config: Config) -> str:
    toml = tmp_path / "status.toml"
    toml.write_text(
        f'server_name = "{config.server_name}"\ndata_dir = "{config.data_dir}"\n',
        encoding="utf-8",
    )
    done = await trio.run_process(
        [sys.executable, "-m", "ranvier.cli", "status", "--config", str(toml)],
        capture_stdout=True,
    )
    return done.stdout.decode()


async def _room_on(a: HomeServer) -> str:
    """A public room on A with a few of A's users in it."""
    alice = f"@alice:{a.server_name}"
    room = RoomBuilder("12", alice, keys={a.server_name: a.signing_key})
    room.public_room()
    for n in range(5):
        room.member(f"@member{n}:{a.server_name}", "join")
    await ingest_all(a.storage, room.order)
    return room.room_id


async def test_a_room_purged_while_its_resync_fetches_stays_gone(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    server_a = RestartableHomeserver(nursery, federating_config(tmp_path, pki, "a"))
    server_b = RestartableHomeserver(nursery, federating_config(tmp_path, pki, "b"))
    a, b = await server_a.start(), await server_b.start()
    held_on_a = HeldRoutes(a.federation_app.router)
    a.federation_app.router = held_on_a
    bob = f"@bob:{b.server_name}"
    room_id = await _room_on(a)

    await b.join_room(bob, room_id, [a.server_name])
    assert await b.storage.is_partial_state_room(room_id)
    with trio.fail_after(_GIVE_UP_SECONDS):
        await held_on_a.first_held.wait()
    assert b.resync_status()[room_id].phase == "fetching"

    # The purge, forced (as ``force_purge`` does, Bob still in the room:
    # A goes on answering for B), while the task waits for A's answer.
    purged = await b.storage.room_purge.purge_room(room_id)
    assert purged is not None
    database = server_b.config.paths.database
    assert _rows_naming(database, room_id) == {}
    held_on_a.released.set()

    await _eventually(lambda: room_id not in b.resync_status(), "B's resync to end")
    assert b.unpartial_stater.completed_resyncs == 0
    assert _rows_naming(database, room_id) == {}
    # B goes on serving: a room of its own, and an event in it.
    own = await b.create_room(bob)
    assert await b.send_event(bob, own, "m.room.message", {"body": "still here"})

    await server_b.stop()
    assert _rows_naming(database, room_id) == {}
    assert room_id not in await _ranvier_status(tmp_path, server_b.config)
    b = await server_b.start()
    assert b.resync_status() == {}
    assert await b.storage.get_partial_state_rooms() == {}
    await server_b.stop()
    await server_a.stop()
