"""``ranvier server-notice USER MESSAGE`` against a running server: the
notice sent through its admin API with an admin's token from the
environment, and the refusals that say why."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from ranvier.cli import main
from ranvier.config import load_config
from ranvier.server import open_homeserver

V3 = "/_matrix/client/v3"


def _write_config(tmp_path: Path, *, notices: bool = True) -> Path:
    path = tmp_path / "ranvier.toml"
    section = '[server_notices]\nsystem_mxid_localpart = "notices"\n' if notices else ""
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

[registration]
password_hash_time_cost = 1
password_hash_memory_kib = 8
password_hash_parallelism = 1

{section}""",
        encoding="utf-8",
    )
    return path


async def _run(*argv: str) -> int:
    status: int = await trio.to_thread.run_sync(main, ["server-notice", *argv])
    return status


async def test_a_notice_reaches_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _write_config(tmp_path)
    async with open_homeserver(load_config(config_path)) as server:
        admin = await server.accounts.register("admin", "pw", admin=True)
        alice = await server.accounts.register("alice", "pw")
        url = server.listeners[0].url
        monkeypatch.setenv("RANVIER_ADMIN_TOKEN", str(admin.access_token))
        status = await _run(
            "--config", str(config_path), "--url", url, "--notice-type", "m.x", "alice", "hi"
        )
        captured = capsys.readouterr()
        assert status == 0, captured.err
        event_id = captured.out.strip()
        assert event_id.startswith("$")

        headers = {"Authorization": f"Bearer {alice.access_token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as http:
            (room_id,) = (await http.get(f"{V3}/sync")).json()["rooms"]["invite"]
            assert (await http.post(f"{V3}/rooms/{room_id}/join", json={})).status_code == 200
            event = (await http.get(f"{V3}/rooms/{room_id}/event/{event_id}")).json()
        assert event["sender"] == "@notices:hs.test"
        assert event["content"] == {
            "msgtype": "m.server_notice",
            "body": "hi",
            "server_notice_type": "m.x",
        }


async def test_refusals_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _write_config(tmp_path, notices=False)
    async with open_homeserver(load_config(config_path)) as server:
        admin = await server.accounts.register("admin", "pw", admin=True)
        alice = await server.accounts.register("alice", "pw")
        url = server.listeners[0].url
        common = ("--config", str(config_path), "--url", url)

        monkeypatch.delenv("RANVIER_ADMIN_TOKEN", raising=False)
        assert await _run(*common, "alice", "hi") == 1
        assert "RANVIER_ADMIN_TOKEN" in capsys.readouterr().err

        monkeypatch.setenv("RANVIER_ADMIN_TOKEN", str(alice.access_token))
        assert await _run(*common, "alice", "hi") == 1
        assert "403: You are not a server admin" in capsys.readouterr().err

        monkeypatch.setenv("RANVIER_ADMIN_TOKEN", str(admin.access_token))
        assert await _run(*common, "alice", "hi") == 1
        assert "not enabled" in capsys.readouterr().err
        assert await _run(*common, "@alice:elsewhere.test", "hi") == 1
        assert "not a user ID of this server" in capsys.readouterr().err
        # Port 0 in the configuration: the server's port cannot be known.
        assert await _run("--config", str(config_path), "alice", "hi") == 1
        assert "give --url" in capsys.readouterr().err
