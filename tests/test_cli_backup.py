"""``ranvier backup``: a copy of a running server's database, signing key and
TLS files, from which a new server starts with the state the copy was taken
at; and the destinations and databases it refuses.

The servers are real (``open_test_homeserver`` on a temporary directory),
and the copies are restored the way an operator would: the files put in a
new data directory and a server started on it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ranvier.backup import BackupReport, backup_data
from ranvier.cli import main
from ranvier.config import load_config
from ranvier.federation.transport.tls import ensure_certificate
from ranvier.protocol.signing import key_id
from ranvier.testing import TestHomeserver, TestUser, open_test_homeserver

V3 = "/_matrix/client/v3"


class _Sender:
    """Sends numbered messages into a room, one after the other, until
    ``stop_at`` have been started, keeping count of the sends started and
    completed.
    """

    def __init__(self, client: httpx.AsyncClient, room_id: str) -> None:
        self._client = client
        self._room_id = room_id
        self.started = 0
        self.completed = 0
        self.stop_at: int | None = None
        self._changed = trio.Event()

    async def send(self) -> None:
        number = self.started
        self.started += 1
        response = await self._client.put(
            f"{V3}/rooms/{self._room_id}/send/m.room.message/txn{number}",
            json={"msgtype": "m.text", "body": f"message {number}"},
        )
        assert response.status_code == 200, response.text
        self.completed += 1
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        while self.stop_at is None or self.started < self.stop_at:
            await self.send()

    async def wait_completed(self, count: int) -> None:
        while self.completed < count:
            await self._changed.wait()


def _restore(backup: Path, data_dir: Path) -> None:
    """Put a backup's files in a new data directory, modes kept."""
    data_dir.mkdir()
    for path in backup.iterdir():
        shutil.copy2(path, data_dir / path.name)


async def _bodies(hs: TestHomeserver, user: TestUser, room_id: str) -> set[str]:
    async with hs.client(user) as client:
        response = await client.get(
            f"{V3}/rooms/{room_id}/messages", params={"dir": "b", "limit": "1000"}
        )
    assert response.status_code == 200, response.text
    return {
        event["content"]["body"]
        for event in response.json()["chunk"]
        if event["type"] == "m.room.message"
    }


async def _state(hs: TestHomeserver, user: TestUser, room_id: str) -> list[Any]:
    async with hs.client(user) as client:
        response = await client.get(f"{V3}/rooms/{room_id}/state")
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()
    for event in events:
        # How long ago the event was sent is the one field that changes.
        event.get("unsigned", {}).pop("age", None)
    return sorted(events, key=lambda event: (event["type"], event["state_key"]))


def _integrity(database: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(database)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_backup_beside_a_busy_server_restores_the_moment_it_started(
    tmp_path: Path,
) -> None:
    backup = tmp_path / "backup"
    async with open_test_homeserver(tmp_path / "original") as hs:
        alice = await hs.register_user("alice")
        original_key = hs.server.signing_key
        async with hs.client(alice) as client, trio.open_nursery() as nursery:
            created = await client.post(f"{V3}/createRoom", json={"name": "Lobby"})
            room_id = created.json()["room_id"]
            sender = _Sender(client, room_id)
            for _ in range(5):
                await sender.send()
            nursery.start_soon(sender.run)
            await sender.wait_completed(8)
            sent_before = sender.completed
            # Sends started after the copy's first step: committed while the
            # backup runs, after the moment it copies.
            sent_during: list[int] = []

            async def while_copying() -> None:
                sent_during.extend(range(sender.started, sender.started + 3))
                await sender.wait_completed(sent_during[-1] + 1)
                # A few more while the copy goes on, and then no more, so
                # that a copy that started over at every write would end.
                sender.stop_at = sender.started + 3

            def after_step(copied: int, total: int) -> None:
                if not sent_during:
                    trio.from_thread.run(while_copying)

            report = await trio.to_thread.run_sync(
                lambda: backup_data(
                    hs.server.config, backup, pages_per_step=16, progress=after_step
                )
            )
        database_name = hs.server.config.paths.database.name

    # Copied in steps, the server writing between them.
    assert report.steps > 1
    assert sent_during
    assert sorted(os.listdir(backup)) == sorted([database_name, "signing.key"])
    assert _integrity(backup / database_name) == [("ok",)]
    assert _mode(backup / "signing.key") == 0o600

    _restore(backup, tmp_path / "restored")
    async with open_test_homeserver(tmp_path / "restored") as restored:
        restored_key = restored.server.signing_key
        assert key_id(restored_key) == key_id(original_key)
        assert restored_key.verify_key.encode() == original_key.verify_key.encode()
        bodies = await _bodies(restored, alice, room_id)
        assert {f"message {n}" for n in range(sent_before)} <= bodies
        assert not {f"message {n}" for n in sent_during} & bodies
        state = await _state(restored, alice, room_id)
        names = [event["content"]["name"] for event in state if event["type"] == "m.room.name"]
        assert names == ["Lobby"]
        # The restored server goes on from where the copy left off.
        async with restored.client(alice) as client:
            after = await client.put(
                f"{V3}/rooms/{room_id}/send/m.room.message/restored",
                json={"msgtype": "m.text", "body": "after the restore"},
            )
        assert after.status_code == 200, after.text
        assert "after the restore" in await _bodies(restored, alice, room_id)


def _config_file(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "ranvier.toml"
    path.write_text(
        f'server_name = "localhost"\ndata_dir = "{data_dir}"\n[database]\nsynchronous = "OFF"\n',
        encoding="utf-8",
    )
    return path


async def test_a_server_at_rest_is_restored_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "original"
    async with open_test_homeserver(data_dir) as hs:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        async with hs.client(alice) as client:
            created = await client.post(
                f"{V3}/createRoom",
                json={"name": "Lobby", "topic": "all things", "invite": [bob.user_id]},
            )
            room_id = created.json()["room_id"]
            for n in range(3):
                await client.put(
                    f"{V3}/rooms/{room_id}/send/m.room.message/t{n}",
                    json={"msgtype": "m.text", "body": f"message {n}"},
                )
        async with hs.client(bob) as client:
            joined = await client.post(f"{V3}/rooms/{room_id}/join", json={})
            assert joined.status_code == 200, joined.text
        state = await _state(hs, alice, room_id)
        bodies = await _bodies(hs, alice, room_id)
    # TLS files as the server generates them for a TLS listener.
    assert ensure_certificate(data_dir / "tls.crt", data_dir / "tls.key", "localhost")
    config = _config_file(tmp_path, data_dir)
    backup = tmp_path / "backup"

    assert main(["backup", "--config", str(config), str(backup)]) == 0

    out = capsys.readouterr().out
    assert f"copied the database {data_dir / 'homeserver.db'} to {backup / 'homeserver.db'}" in out
    assert f"copied {data_dir / 'signing.key'} to {backup / 'signing.key'}" in out
    assert f"media store {data_dir / 'media'}" in out
    assert "rsync" in out
    names = ["homeserver.db", "signing.key", "tls.crt", "tls.key"]
    assert sorted(os.listdir(backup)) == names
    for name in names[1:]:
        assert (backup / name).read_bytes() == (data_dir / name).read_bytes()
        assert _mode(backup / name) == _mode(data_dir / name)
    assert _mode(backup / "signing.key") == 0o600
    assert _mode(backup / "tls.key") == 0o600
    with (
        closing(sqlite3.connect(data_dir / "homeserver.db")) as original,
        closing(sqlite3.connect(backup / "homeserver.db")) as copy,
    ):
        assert list(copy.iterdump()) == list(original.iterdump())

    _restore(backup, tmp_path / "restored")
    async with open_test_homeserver(tmp_path / "restored") as restored:
        assert await _state(restored, alice, room_id) == state
        assert await _bodies(restored, bob, room_id) == bodies
    assert {"message 0", "message 1", "message 2"} <= bodies
    assert [event["content"]["membership"] for event in state if event["type"] == "m.room.member"]


async def _stopped_server(data_dir: Path) -> None:
    async with open_test_homeserver(data_dir) as hs:
        await hs.register_user("alice")


async def test_a_destination_that_is_not_empty_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    await _stopped_server(data_dir)
    config = _config_file(tmp_path, data_dir)
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "homeserver.db").write_bytes(b"last week's backup")

    assert main(["backup", "--config", str(config), str(backup)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("ranvier backup: ")
    assert f"{backup} is not empty" in err
    assert os.listdir(backup) == ["homeserver.db"]
    assert (backup / "homeserver.db").read_bytes() == b"last week's backup"

    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory", encoding="utf-8")
    assert main(["backup", "--config", str(config), str(a_file)]) == 1
    assert f"{a_file} exists and is not a directory" in capsys.readouterr().err
    assert a_file.read_text(encoding="utf-8") == "not a directory"


async def test_an_empty_destination_is_used(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await _stopped_server(data_dir)
    backup = tmp_path / "backup"
    backup.mkdir()
    config = _config_file(tmp_path, data_dir)

    assert main(["backup", "--config", str(config), str(backup)]) == 0

    assert sorted(os.listdir(backup)) == ["homeserver.db", "signing.key"]


def test_a_missing_database_is_an_error_with_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["backup", "backup"]) == 1

    err = capsys.readouterr().err
    assert err == f"ranvier backup: no database at {Path('ranvier-data') / 'homeserver.db'}\n"
    assert os.listdir(tmp_path) == []


def test_a_file_that_is_no_ranvier_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with closing(sqlite3.connect(data_dir / "homeserver.db")) as conn:
        conn.execute("CREATE TABLE other (x)")
    config = _config_file(tmp_path, data_dir)
    backup = tmp_path / "backup"

    assert main(["backup", "--config", str(config), str(backup)]) == 1

    assert "is not a ranvier database" in capsys.readouterr().err
    # The destination it had made is gone again.
    assert not backup.exists()


async def test_a_damaged_database_fails_the_integrity_check_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    await _stopped_server(data_dir)
    database = data_dir / "homeserver.db"
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()
    # A page of a table overwritten, as a failing disk might: a table's and
    # not the schema's, which SQLite reads before any copy can begin. Pages
    # are numbered from 1.
    with database.open("r+b") as file:
        file.seek(page_size * (root - 1))
        file.write(b"\xa5" * page_size)
    config = _config_file(tmp_path, data_dir)
    backup = tmp_path / "backup"
    backup.mkdir()

    assert main(["backup", "--config", str(config), str(backup)]) == 1

    err = capsys.readouterr().err
    assert f"the copy of {database} failed SQLite's integrity check" in err
    # The directory was given empty and is left empty.
    assert os.listdir(backup) == []


def test_the_report_names_every_copy(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    trio.run(_stopped_server, data_dir)
    config = load_config(_config_file(tmp_path, data_dir))
    pages: list[tuple[int, int]] = []

    report = backup_data(
        config, tmp_path / "backup", pages_per_step=32, progress=lambda *step: pages.append(step)
    )

    assert isinstance(report, BackupReport)
    assert report.database.copy == tmp_path / "backup" / "homeserver.db"
    assert [copied.copy for copied in report.files] == [tmp_path / "backup" / "signing.key"]
    assert report.media_store == data_dir / "media"
    # Every step reported, the last with every page copied.
    assert len(pages) == report.steps > 1
    assert pages[-1] == (report.database_pages, report.database_pages)
    assert [copied for copied, _ in pages] == sorted(copied for copied, _ in pages)
