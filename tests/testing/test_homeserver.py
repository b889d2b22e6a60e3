"""The in-process test homeserver, its pytest fixture, and docs/testing.md's examples."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ranvier.federation.transport.client import FederationConnectionError
from ranvier.server import open_homeserver
from ranvier.testing import (
    Pki,
    TestHomeserver,
    config_for_tests,
    open_test_homeserver,
)

pytest_plugins = ["ranvier.testing.pytest_plugin"]

_DOC = (Path(__file__).parents[2] / "docs" / "testing.md").read_text("utf-8")
#: The doc's code blocks that name their file on their first line.
_FILES = dict(re.findall(r"```(?:python|ini)\n# ([\w.]+)\n(.*?)```", _DOC, flags=re.DOTALL))
#: The doc's first Python block, which names no file.
_FIRST_EXAMPLE = _DOC.split("```python\n", 1)[1].split("```", 1)[0]


async def test_it_starts_and_serves_the_client_api(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        async with hs.client() as client:
            versions = await client.get("/_matrix/client/versions")
        assert versions.status_code == 200
        assert hs.client_url.startswith("http://127.0.0.1:")
        assert [bound.config.type for bound in hs.server.listeners] == ["client"]
        assert hs.server.config.database.synchronous == "OFF"
        assert hs.server_name == "localhost"
        with pytest.raises(RuntimeError, match="no federation listener"):
            _ = hs.federation_url
        url = hs.client_url
    # Gone once the block is left.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(url + "/_matrix/client/versions")


async def test_a_registered_user_is_who_its_token_says(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        alice = await hs.register_user("alice")
        admin = await hs.register_user("root", admin=True)
        async with hs.client(alice) as client:
            whoami = await client.get("/_matrix/client/v3/account/whoami")
        async with hs.client() as anonymous:
            refused = await anonymous.get("/_matrix/client/v3/account/whoami")
        requester = await hs.server.accounts.get_requester(admin.access_token)
    assert alice.user_id == "@alice:localhost"
    assert whoami.json()["user_id"] == alice.user_id
    assert whoami.json()["device_id"] == alice.device_id
    assert refused.status_code == 401
    assert requester is not None
    assert requester.is_admin


async def test_clients_wait_a_minute_for_an_answer_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    # httpx's own 5 s is short for a loaded machine.
    async with open_test_homeserver(tmp_path / "hs") as hs:
        async with hs.client() as patient:
            assert patient.timeout == httpx.Timeout(60.0)
        async with hs.client(timeout=2.5) as hasty:
            assert hasty.timeout == httpx.Timeout(2.5)


async def test_a_password_lets_the_user_log_in(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        await hs.register_user("bob", "s3cret-enough")
        async with hs.client() as client:
            login = await client.post(
                "/_matrix/client/v3/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": "s3cret-enough",
                },
            )
    assert login.status_code == 200, login.text
    assert login.json()["user_id"] == "@bob:localhost"


async def test_passwords_are_hashed_at_the_lowest_cost(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        for number in range(5):
            await hs.register_user(f"user{number}", "s3cret-enough")
    conn = sqlite3.connect(tmp_path / "hs" / "homeserver.db")
    with contextlib.closing(conn):
        hashes = [row[0] for row in conn.execute("SELECT password_hash FROM users")]
    assert len(hashes) == 5
    assert all(h.startswith("$argon2id$v=19$m=8,t=1,p=1$") for h in hashes), hashes


async def test_rate_limits_are_off_unless_asked_for(tmp_path: Path) -> None:
    login = {"type": "m.login.password", "user": "nobody", "password": "x"}
    async with open_test_homeserver(tmp_path / "off") as hs, hs.client() as client:
        off = {
            (await client.post("/_matrix/client/v3/login", json=login)).status_code
            for _ in range(8)
        }
    async with (
        open_test_homeserver(tmp_path / "on", rate_limits=True) as hs,
        hs.client() as client,
    ):
        on = [
            (await client.post("/_matrix/client/v3/login", json=login)).status_code
            for _ in range(6)
        ]
    assert off == {403}
    # The default allows a burst of 5 logins an address.
    assert on == [403] * 5 + [429]


async def test_servers_given_a_pki_federate_and_others_trust_nobody(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        open_test_homeserver(tmp_path / "c") as c,
    ):
        assert a.server_name == f"127.0.0.1:{a.server.federation_port}"
        assert a.federation_url == f"https://{a.server_name}"
        # A reads B's keys over TLS, trusting the test CA.
        keys = await a.server.federation_client.get_json(b.server_name, "/_matrix/key/v2/server")
        assert keys["server_name"] == b.server_name
        # C trusts no CA: the same read fails at the TLS handshake.
        with pytest.raises(FederationConnectionError, match=r"(?i)certificate"):
            await c.server.federation_client.get_json(b.server_name, "/_matrix/key/v2/server")


async def test_a_whole_configuration_can_be_given(tmp_path: Path) -> None:
    config = config_for_tests(tmp_path / "hs", server_name="example.test")
    async with open_test_homeserver(tmp_path / "ignored", config=config) as hs:
        assert hs.server_name == "example.test"
        user = await hs.register_user("carol")
    assert user.user_id == "@carol:example.test"
    assert not (tmp_path / "ignored").exists()


async def test_the_fixture_gives_a_running_server(ranvier_homeserver: TestHomeserver) -> None:
    async with ranvier_homeserver.client() as client:
        response = await client.get("/_matrix/client/versions")
    assert response.status_code == 200
    assert ranvier_homeserver.server.listeners


async def test_the_docs_first_example_runs(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(compile(_FIRST_EXAMPLE, "docs/testing.md", "exec"), namespace)
    test = namespace["test_whoami"]
    assert callable(test)
    await test(tmp_path)


def test_the_docs_pytest_example_passes_as_written(tmp_path: Path) -> None:
    """The three files, in a project of their own, under pytest with every
    warning an error (so a helper that pytest mistook for a test would fail).
    """
    assert set(_FILES) == {"pytest.ini", "conftest.py", "test_lobby.py"}
    for name, text in _FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def _schema(database: Path) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        return [tuple(row) for row in rows] + [conn.execute("PRAGMA user_version").fetchone()]


async def test_the_copied_database_is_the_one_the_server_would_make(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "copied") as hs:
        alice = await hs.register_user("alice")
        copied = hs.server.config.paths.database
    # The server migrating a new database itself, as `ranvier serve` does.
    async with open_homeserver(config_for_tests(tmp_path / "migrated")):
        pass
    assert _schema(copied) == _schema(tmp_path / "migrated" / "homeserver.db")
    # A second start on the same directory keeps what the first wrote.
    async with open_test_homeserver(tmp_path / "copied") as hs:
        requester = await hs.server.accounts.get_requester(alice.access_token)
    assert requester is not None
    assert requester.user_id == alice.user_id
