"""A main process and its workers as real processes on loopback.

:class:`Deployment` writes one TOML file per process into a tmp dir: the
main process (``ranvier serve``: a client listener and the replication
listener) and a worker per role (``ranvier worker``): a federation_reader
that serves the server's federation name, and a client_reader. All share
the main process's database and signing key; TLS certificates come from
the test's :class:`~ranvier.testing.Pki`, which every process trusts alone.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from ranvier.testing import Pki, free_port

SCRIPT = shutil.which("ranvier", path=str(Path(sys.executable).parent))
SECRET = "workers' shared secret"


@dataclass
class Deployment:
    directory: Path
    pki: Pki
    #: Whether a federation_sender worker delivers events to other servers.
    federation_sender: bool = False
    #: Whether the main process serves the federation API itself (then the
    #: federation_reader, whose port it takes, is not to be started).
    main_federation: bool = False
    #: ``federation.destination_retry_seconds`` of every process, if set.
    retry_seconds: float | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Different ports: one freed port may be handed out again.
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        (
            self.federation_port,
            self.main_client_port,
            self.replication_port,
            self.client_port,
            self.sender_metrics_port,
        ) = sorted(ports)

    @property
    def server_name(self) -> str:
        return f"127.0.0.1:{self.federation_port}"

    @property
    def database(self) -> Path:
        return self.directory / "main" / "homeserver.db"

    @property
    def replication_url(self) -> str:
        return f"http://127.0.0.1:{self.replication_port}"

    @property
    def client_url(self) -> str:
        """The client_reader's client API."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def main_client_url(self) -> str:
        return f"http://127.0.0.1:{self.main_client_port}"

    def write_configs(self) -> None:
        main = self.directory / "main"
        main.mkdir(parents=True, exist_ok=True)
        issued = self.pki.ca.issue_cert("127.0.0.1")
        certificate, key = self.directory / "tls.crt", self.directory / "tls.key"
        certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        common = f"""
server_name = "{self.server_name}"
signing_key_path = "{main / "signing.key"}"
[tls]
certificate_path = "{certificate}"
private_key_path = "{key}"
[database]
path = "{self.database}"
synchronous = "NORMAL"
[federation]
ca_file = "{self.pki.ca_file}"
request_timeout_seconds = 10
{"" if self.retry_seconds is None else f"destination_retry_seconds = {self.retry_seconds}"}
[registration]
enabled = true
[ratelimit]
enabled = false
[replication]
shared_secret = "{SECRET}"
"""
        (self.directory / "main.toml").write_text(
            f'data_dir = "{main}"\n{common}'
            + ("[worker]\nfederation_sender = true\n" if self.federation_sender else "")
            + f'[[listeners]]\ntype = "client"\nport = {self.main_client_port}\n'
            f'[[listeners]]\ntype = "replication"\nport = {self.replication_port}\n'
            + (
                f'[[listeners]]\ntype = "federation"\nport = {self.federation_port}\n'
                if self.main_federation
                else ""
            )
        )
        worker = f'[worker]\nmain_replication_url = "{self.replication_url}"\n'
        if self.federation_sender:
            worker += "federation_sender = true\n"
        for role, listener, port in (
            ("federation_reader", "federation", self.federation_port),
            ("client_reader", "client", self.client_port),
            ("federation_sender", "metrics", self.sender_metrics_port),
        ):
            data_dir = self.directory / role
            data_dir.mkdir(exist_ok=True)
            (self.directory / f"{role}.toml").write_text(
                f'data_dir = "{data_dir}"\n{common}{worker}'
                f'[[listeners]]\ntype = "{listener}"\nport = {port}\n'
            )

    async def start(self, name: str) -> None:
        """Start ``main`` or a worker role and wait until it answers."""
        assert SCRIPT is not None
        if name == "main":
            argv = [SCRIPT, "serve", "--config", str(self.directory / "main.toml")]
            url = f"{self.replication_url}/_ranvier/replication/control/stream"
        else:
            argv = [SCRIPT, "worker", "--config", str(self.directory / f"{name}.toml")]
            argv += ["--role", name]
            url = {
                "federation_reader": f"https://{self.server_name}/_matrix/federation/v1/version",
                "client_reader": f"{self.client_url}/_matrix/client/versions",
                "federation_sender": f"http://127.0.0.1:{self.sender_metrics_port}/metrics",
            }[name]
        self.processes[name] = self._spawn(name, argv)
        async with httpx.AsyncClient(verify=self.pki.client_context()) as http:
            with trio.fail_after(30):
                while True:
                    process = self.processes[name]
                    assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
                    try:
                        await http.get(url, timeout=1)
                    except httpx.TransportError:
                        await trio.sleep(0.05)
                        continue
                    return

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("ab") as log:
            return subprocess.Popen(argv, cwd=self.directory, stdout=log, stderr=log)

    @asynccontextmanager
    async def running(self, names: Iterable[str]) -> AsyncIterator[None]:
        """The processes ``names``, started in order and stopped after the
        body; their logs are printed when it fails."""
        names = list(names)
        try:
            for name in names:
                await self.start(name)
            yield
        except BaseException:
            for name in names:
                print(f"--- {name}\n{self.log(name)[-6000:]}")
            raise
        finally:
            self.stop_all()

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def event_rows(self, event_id: str) -> int:
        with closing(sqlite3.connect(self.database)) as conn:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return int(count)

    def room_messages(self, room_id: str) -> list[tuple[str, str]]:
        """``(event_id, body)`` of every m.room.message stored for the room."""
        with closing(sqlite3.connect(self.database)) as conn:
            rows = conn.execute(
                "SELECT event_id, json FROM events WHERE room_id = ? AND type = 'm.room.message'"
                " ORDER BY stream_ordering",
                (room_id,),
            ).fetchall()
        return [(event_id, json.loads(raw)["content"]["body"]) for event_id, raw in rows]
