"""``ranvier registration-token new|list|delete`` on a data directory, and a
token made while the server runs used at once to register over HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import trio

from ranvier.cli import main
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

[registration]
enabled = true
requires_token = true
password_hash_time_cost = 1
password_hash_memory_kib = 8
password_hash_parallelism = 1
""",
        encoding="utf-8",
    )
    return path


def _run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["registration-token", "--config", str(config), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_tokens_are_made_listed_and_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path)
    assert _run(config, capsys, "new", "--token", "abc", "--uses-allowed", "0") == (
        0,
        "abc\n",
        "",
    )
    status, out, _ = _run(config, capsys, "new", "--length", "5", "--expiry-time", "4102444800000")
    assert status == 0
    random_token = out.strip()
    assert re.fullmatch(r"[A-Za-z0-9._~-]{5}", random_token)

    status, out, _ = _run(config, capsys, "list")
    assert status == 0
    assert sorted(out.splitlines()) == sorted(
        [
            "abc\tuses_allowed=0\tpending=0\tcompleted=0\texpiry_time=none",
            f"{random_token}\tuses_allowed=none\tpending=0\tcompleted=0\texpiry_time=4102444800000",
        ]
    )
    assert _run(config, capsys, "list", "--invalid")[1].split("\t")[0] == "abc"
    assert _run(config, capsys, "list", "--valid")[1].split("\t")[0] == random_token

    assert _run(config, capsys, "delete", "abc") == (0, "deleted abc\n", "")
    assert _run(config, capsys, "list")[1].split("\t")[0] == random_token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("delete", "missing"), "No such registration token: missing"),
        (("new", "--token", "not valid!"), "a registration token is 1 to 64"),
        (("new", "--length", "65"), "length must be from 1 to 64"),
        (("new", "--uses-allowed", "-1"), "uses_allowed must be a non-negative integer"),
    ],
)
def test_refusals_say_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    config = _write_config(tmp_path)
    status, out, err = _run(config, capsys, *args)
    assert (status, out) == (1, "")
    assert err.startswith("ranvier registration-token: ")
    assert message in err


def test_an_action_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    assert main(["registration-token", "--config", str(config)]) == 2
    assert "ACTION" in capsys.readouterr().err


async def test_a_token_made_while_the_server_runs_registers(tmp_path: Path) -> None:
    config_path = _write_config(tmp_path)
    async with open_homeserver(load_config(config_path)) as server:
        status = await trio.to_thread.run_sync(
            main, ["registration-token", "--config", str(config_path), "new", "--token", "now"]
        )
        assert status == 0
        async with httpx.AsyncClient(base_url=server.listeners[0].url) as http:
            first = await http.post(f"{V3}/register", json={"username": "alice", "password": "pw"})
            session = first.json()["session"]
            taken = await http.post(
                f"{V3}/register",
                json={
                    "auth": {
                        "type": "m.login.registration_token",
                        "token": "now",
                        "session": session,
                    }
                },
            )
            assert taken.json()["completed"] == ["m.login.registration_token"]
            done = await http.post(
                f"{V3}/register",
                json={
                    "username": "alice",
                    "password": "pw",
                    "auth": {"type": "m.login.dummy", "session": session},
                },
            )
        assert done.status_code == 200, done.text
        assert done.json()["user_id"] == "@alice:hs.test"
