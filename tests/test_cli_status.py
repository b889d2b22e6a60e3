"""``ranvier status``: the partial-state rooms of a data directory, as a
subprocess reads them, beside a running storage actor and after it.

The data directory holds what a partial join leaves: a room of remote.test
whose state (without its members) and auth chain are outliers, the room
marked partial with the server joined through and the servers in it, and
the join and two messages after it written on partial state, all through
core into a real SQLite file.
"""

from __future__ import annotations

import subprocess
import sys
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
