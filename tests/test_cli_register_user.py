"""``ranvier register-user`` run as a subprocess on a data directory, and the
account then used through a started server, or made while one runs.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from ranvier.config import load_config
from ranvier.server import open_homeserver

V3 = "/_matrix/client/v3"


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "ranvier.toml"
    path.write_text(
        f"""
server_name = "hs.test"
data_dir = "{tmp_path / "data"}"

[[listeners]]
type = "client"
host = "127.0.0.1"
port = 0

[database]
synchronous = "OFF"

[ratelimit]
enabled = false
""",
        encoding="utf-8",
    )
    return path


def _command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ranvier.cli", "register-user", "--config", str(config), *args]


def _run(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(config, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _login(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        },
    )


def _users(database: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT user_id, admin FROM users ORDER BY user_id").fetchall()
    finally:
        conn.close()


async def test_a_registered_user_logs_in_through_the_started_server(tmp_path: Path) -> None:
    config_path = _write_config(tmp_path)
    made = _run(config_path, "--user", "Alice", "--password", "pw of alice", "--admin")
    assert made.returncode == 0, made.stderr
    assert made.stdout == "@alice:hs.test\n"
    from_stdin = _run(config_path, "--user", "@bob:hs.test", "--password", "-", stdin="pw\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == "@bob:hs.test\n"

    config = load_config(config_path)
    assert _users(config.paths.database) == [("@alice:hs.test", 1), ("@bob:hs.test", 0)]
    async with open_homeserver(config) as server:
        (listener,) = server.listeners
        async with httpx.AsyncClient(base_url=listener.url, timeout=30) as client:
            alice = await _login(client, "alice", "pw of alice")
            bob = await _login(client, "bob", "pw")
            wrong = await _login(client, "bob", "pw\n")
            assert alice.status_code == 200
            whoami = await client.get(
                f"{V3}/account/whoami",
                headers={"Authorization": f"Bearer {alice.json()['access_token']}"},
            )
        requester = await server.accounts.get_requester(alice.json()["access_token"])
    assert whoami.json()["user_id"] == "@alice:hs.test"
    assert requester is not None
    assert requester.is_admin
    assert bob.json()["user_id"] == "@bob:hs.test"
    assert wrong.status_code == 403


async def test_an_account_made_beside_a_running_server_is_usable_at_once(
    tmp_path: Path,
) -> None:
    config_path = _write_config(tmp_path)
    config = load_config(config_path)
    async with open_homeserver(config) as server:
        (listener,) = server.listeners
        made = await trio.run_process(
            _command(config_path, "--user", "carol", "--password", "pw"),
            capture_stdout=True,
            capture_stderr=True,
        )
        async with httpx.AsyncClient(base_url=listener.url, timeout=30) as client:
            login = await _login(client, "carol", "pw")
    assert made.stdout == b"@carol:hs.test\n"
    assert login.status_code == 200
    assert login.json()["user_id"] == "@carol:hs.test"


def test_refusals_exit_1_with_a_message_and_change_nothing(tmp_path: Path) -> None:
    config_path = _write_config(tmp_path)
    assert _run(config_path, "--user", "alice", "--password", "first").returncode == 0
    database = load_config(config_path).paths.database
    before = _users(database)
    cases = [
        (("--user", "alice", "--password", "second", "--admin"), None, "already taken"),
        (("--user", "ALICE", "--password", "second"), None, "already taken"),
        (("--user", "a b", "--password", "pw"), None, "may hold only"),
        (("--user", "@dave:elsewhere.org", "--password", "pw"), None, "not a user ID of this"),
        (("--user", "dave", "--password", "-"), "", "no password on stdin"),
        (("--user", "dave", "--password", ""), None, "password is empty"),
    ]
    for args, stdin, message in cases:
        result = _run(config_path, *args, stdin=stdin)
        assert result.returncode == 1, args
        assert result.stdout == ""
        assert result.stderr.startswith("ranvier register-user: "), result.stderr
        assert message in result.stderr, result.stderr
    assert _users(database) == before
    missing = _run(config_path, "--password", "pw")
    assert missing.returncode == 2
    assert "--user" in missing.stderr
