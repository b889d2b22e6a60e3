"""``ranvier status``: the partial-state rooms of a data directory, as a
subprocess reads them, beside a running storage actor and after it.

The data directory holds what a partial join leaves: a room of remote.test
whose state (without its members) and auth chain are outliers, the room
marked partial with the server joined through and the servers in it, and
the join and two messages after it written on partial state, all through
core into a real SQLite file; and, when a test writes one, the progress a
server's resync task records through storage.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import trio

from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest

OURS = "ours.test"
REMOTE = "remote.test"
THIRD = "third.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"


def _command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ranvier.cli", "status", *map(str, args)]


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def _config_file(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "ranvier.toml"
    path.write_text(f'server_name = "{OURS}"\ndata_dir = "{data_dir}"\n', encoding="utf-8")
    return path


async def _write_partial_room(storage: Storage) -> RoomBuilder:
    """A room of remote.test as a partial join through it leaves it here."""
    room = RoomBuilder("12", BOB)
    room.public_room()
    for n in range(5):
        room.member(f"@member{n}:{THIRD}", "join")
    before_join = list(room.order)
    partial = {key: event_id for key, event_id in room.state.items() if key[0] != "m.room.member"}
    join = room.member(ALICE, "join")
    messages = [room.message(ALICE, "first"), room.message(ALICE, "second")]
    for event in before_join:
        await ingest(storage, event, outlier=True)
    await storage.store_partial_join(room.room_id, "12", join.event_id, REMOTE, {REMOTE, THIRD})
    outcome = await ingest(storage, join, state_ids_before=partial, partial_state=True)
    assert outcome.context.partial_state
    for message in messages:
        assert (await ingest(storage, message)).context.partial_state
    return room


async def test_status_lists_a_partial_room_beside_a_running_server_and_after_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = _config_file(tmp_path, data_dir)
    storage = Storage(data_dir / "homeserver.db", synchronous="OFF")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        room = await _write_partial_room(storage)
        # The writer is running: the status read neither waits for it nor
        # disturbs it.
        beside = await trio.run_process(_command("--config", config), capture_stdout=True)
        await storage.store_room("!another:ours.test", "12")
        nursery.cancel_scope.cancel()

    expected = [
        f"1 room with partial state in {data_dir / 'homeserver.db'}",
        room.room_id,
        "  partial-state events: 3",
        f"  joined via: {REMOTE}",
        f"  servers known: {REMOTE}, {THIRD}",
        "  resync: no progress recorded",
    ]
    assert beside.returncode == 0
    assert beside.stdout.decode().splitlines() == expected
    after = _run("--config", config)
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines() == expected


async def test_status_of_a_database_without_partial_rooms(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    storage = Storage(data_dir / "homeserver.db", synchronous="OFF")
    data_dir.mkdir()
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        await storage.store_room("!quiet:ours.test", "12")
        nursery.cancel_scope.cancel()
    result = _run("--config", _config_file(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"no room has partial state in {data_dir / 'homeserver.db'}\n"


def test_status_without_a_database_says_so_and_creates_none(tmp_path: Path) -> None:
    # Without --config, the default data directory under the working directory.
    result = _run(cwd=tmp_path)
    assert result.returncode == 1
    assert "no database at ranvier-data/homeserver.db" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_refuses_a_file_that_is_not_a_ranvier_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "homeserver.db").write_bytes(b"")
    result = _run("--config", _config_file(tmp_path, data_dir))
    assert result.returncode == 1
    assert "is not a ranvier database" in result.stderr
    assert (data_dir / "homeserver.db").read_bytes() == b""


def test_status_with_a_bad_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "ranvier.toml"
    config.write_text("server_name = 5\n", encoding="utf-8")
    result = _run("--config", config)
    assert result.returncode == 1
    assert "server_name" in result.stderr


async def test_status_shows_the_recorded_progress_of_a_resync(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = _config_file(tmp_path, data_dir)
    storage = Storage(data_dir / "homeserver.db", synchronous="OFF")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        room = await _write_partial_room(storage)
        now_ms = int(time.time() * 1000)
        written = await storage.store_resync_progress(
            room.room_id,
            phase="walking",
            server=f"{REMOTE}:8448",
            events_resynced=1_204,
            events_total=2_000,
            attempts=2,
            last_error=None,
            updated_ts=now_ms - 3_000,
        )
        assert written
        walking = await trio.run_process(_command("--config", config), capture_stdout=True)
        # Three hours and ten minutes ago, so the age reads the same however
        # long the command takes.
        await storage.store_resync_progress(
            room.room_id,
            phase="waiting",
            server=THIRD,
            events_resynced=0,
            events_total=3,
            attempts=7,
            last_error=f"{THIRD}: connection refused\n(all servers failed)",
            updated_ts=now_ms - (3 * 3_600 + 600) * 1_000,
        )
        nursery.cancel_scope.cancel()

    lines = walking.stdout.decode().splitlines()
    assert lines[:5] == [
        f"1 room with partial state in {data_dir / 'homeserver.db'}",
        room.room_id,
        "  partial-state events: 3",
        f"  joined via: {REMOTE}",
        f"  servers known: {REMOTE}, {THIRD}",
    ]
    assert len(lines) == 6
    shown = re.fullmatch(
        rf"  resync: walking, 1,204 of 2,000 events, via {REMOTE}:8448, attempt 2,"
        r" updated (\d+) s ago",
        lines[5],
    )
    assert shown is not None, lines[5]
    assert 3 <= int(shown[1]) < 60

    waiting = _run("--config", config)
    assert waiting.returncode == 0, waiting.stderr
    assert waiting.stdout.splitlines()[5:] == [
        f"  resync: waiting, 0 of 3 events, via {THIRD}, attempt 7, updated 3 h ago",
        f"  last error: {THIRD}: connection refused (all servers failed)",
    ]


async def test_status_of_a_database_from_before_progress_was_recorded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "homeserver.db"
    storage = Storage(database, synchronous="OFF")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        room = await _write_partial_room(storage)
        nursery.cancel_scope.cancel()
    # As an older ranvier left it: no table of progress, an older version.
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("DROP TABLE resync_progress")
        conn.execute("PRAGMA user_version = 5")
    result = _run("--config", _config_file(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        room.room_id,
        "  partial-state events: 3",
        f"  joined via: {REMOTE}",
        f"  servers known: {REMOTE}, {THIRD}",
        "  resync: no progress recorded",
    ]
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (5,)
