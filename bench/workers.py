"""Incoming federation through a federation_reader worker, against one process.

The same set-up as :mod:`bench.federation` (stand-in remotes that join a
room through make_join and send_join, then push signed transactions of 50
messages back to back over one kept-alive TLS connection, prepared before
the clock starts), run twice in the same run, on the same machine:

* ``single_process``: ``ranvier serve`` serving federation itself;
* ``federation_reader``: ``ranvier serve`` as the main process (client and
  replication listeners) and ``ranvier worker --role federation_reader``
  serving federation, every write crossing to the main process over the
  replication listener.

Both servers are real processes, so neither shares the benchmark's event
loop, where the remotes run. Both run throughout and take turns, round
by round, so that the machine's other work weighs on both alike.
``federation_reader_vs_single_process`` is the ratio of the best rounds'
rates: above 1 the worker's second process buys more than the process
boundary costs; below, the boundary costs more.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme

from bench.federation import PDUS_PER_TRANSACTION, _Pki, _Remote, _send_from_another_process
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.testing.network import free_port

STEADY_TRANSACTIONS = 30
STEADY_ROUNDS = 4
SECRET = "bench secret"
SCRIPT = shutil.which("ranvier", path=str(Path(sys.executable).parent))


@dataclass(frozen=True)
class _Target:
    """What the remotes need to know of the server under test."""

    server_name: str
    database: Path


def _ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _common(directory: Path, pki: _Pki, server_name: str) -> str:
    certificate, key = pki.certificate("hs")
    main = directory / "main"
    return f"""
server_name = "{server_name}"
signing_key_path = "{main / "signing.key"}"
[tls]
certificate_path = "{certificate}"
private_key_path = "{key}"
[database]
path = "{main / "homeserver.db"}"
synchronous = "NORMAL"
[federation]
ca_file = "{pki.ca_file}"
[registration]
enabled = true
[ratelimit]
enabled = false
[replication]
shared_secret = "{SECRET}"
"""


async def _wait_until_answers(url: str, ca_file: Path, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(verify=client_ssl_context(ca_file=ca_file)) as http:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"a server process exited with {process.returncode}")
            try:
                await http.get(url, timeout=1)
            except httpx.TransportError:
                await trio.sleep(0.05)
                continue
            return
    raise RuntimeError(f"{url} did not answer in 30 s")


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out)


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _read(database: Path, query: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return conn.execute(query, parameters).fetchall()


def _auth_for(target: _Target, room_id: str, user: str) -> list[str]:
    rows = {
        (kind, key): event_id
        for kind, key, event_id in _read(
            target.database,
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
            (room_id,),
        )
    }
    return [
        rows[("m.room.create", "")],
        rows[("m.room.power_levels", "")],
        rows[("m.room.member", user)],
    ]


def _start_of_chain(target: _Target, room_id: str) -> tuple[list[str], int]:
    prev = [
        event_id
        for (event_id,) in _read(
            target.database,
            "SELECT event_id FROM forward_extremities WHERE room_id = ?",
            (room_id,),
        )
    ]
    marks = ",".join("?" * len(prev))
    (depth,) = _read(
        target.database, f"SELECT MAX(depth) FROM events WHERE event_id IN ({marks})", prev
    )[0]
    return sorted(prev), 1 + int(depth)


def _accepted(target: _Target, event_ids: Sequence[str]) -> int:
    found = 0
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        ((count,),) = _read(
            target.database,
            f"SELECT COUNT(*) FROM events WHERE event_id IN ({marks}) AND outlier = 0"
            " AND rejected_reason IS NULL AND soft_failed = 0",
            chunk,
        )
        found += int(count)
    return found


class _Deployment:
    """One server under test, as real processes, with its remote and room."""

    def __init__(self, directory: Path, pki: _Pki, *, workers: bool) -> None:
        self.directory = directory
        self.pki = pki
        self.workers = workers
        self.federation_port, self.client_port, self.replication_port = _ports(3)
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.target = _Target(self.server_name, directory / "main" / "homeserver.db")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.rounds: list[float] = []
        self.sent = self.accepted = self.errors = 0

    async def start(self) -> None:
        assert SCRIPT is not None
        directory, pki = self.directory, self.pki
        (directory / "main").mkdir(parents=True)
        common = _common(directory, pki, self.server_name)
        listeners = f'[[listeners]]\ntype = "client"\nport = {self.client_port}\n'
        if self.workers:
            listeners += f'[[listeners]]\ntype = "replication"\nport = {self.replication_port}\n'
        else:
            listeners += f'[[listeners]]\ntype = "federation"\nport = {self.federation_port}\n'
        (directory / "main.toml").write_text(
            f'data_dir = "{directory / "main"}"\n{common}{listeners}'
        )
        self.processes.append(
            _spawn(
                [
                    SCRIPT,
                    "serve",
                    "--config",
                    str(directory / "main.toml"),
                    "--log-level",
                    "WARNING",
                ],
                directory / "main.log",
            )
        )
        await _wait_until_answers(
            f"http://127.0.0.1:{self.client_port}/_matrix/client/versions",
            pki.ca_file,
            self.processes[0],
        )
        if self.workers:
            (directory / "worker").mkdir()
            (directory / "worker.toml").write_text(
                f'data_dir = "{directory / "worker"}"\n{common}'
                f'[worker]\nmain_replication_url = "http://127.0.0.1:{self.replication_port}"\n'
                f'[[listeners]]\ntype = "federation"\nport = {self.federation_port}\n'
            )
            self.processes.append(
                _spawn(
                    [
                        SCRIPT,
                        "worker",
                        "--config",
                        str(directory / "worker.toml"),
                        "--role",
                        "federation_reader",
                        "--log-level",
                        "WARNING",
                    ],
                    directory / "worker.log",
                )
            )
        await _wait_until_answers(
            f"https://{self.server_name}/_matrix/federation/v1/version",
            pki.ca_file,
            self.processes[-1],
        )

    async def join(self, nursery: trio.Nursery) -> None:
        """A room on the server, and a remote joined to it over federation."""
        url = f"http://127.0.0.1:{self.client_port}"
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            registered = await http.post(
                "/_matrix/client/v3/register",
                json={
                    "username": "alice",
                    "password": "bench password",
                    "auth": {"type": "m.login.dummy"},
                },
            )
            token = registered.json()["access_token"]
            created = await http.post(
                "/_matrix/client/v3/createRoom",
                json={"preset": "public_chat", "room_version": "10"},
                headers={"Authorization": f"Bearer {token}"},
            )
            self.room_id: str = created.json()["room_id"]
        self.remote = await _Remote.start(nursery, self.pki, f"remote{self.federation_port}")
        await self.remote.join(self.target, self.room_id)  # type: ignore[arg-type]
        self.auth = _auth_for(self.target, self.room_id, self.remote.user)

    async def round(self) -> None:
        """One round of transactions back to back, its events made first."""
        target, room_id = self.target, self.room_id
        prev, depth = _start_of_chain(target, room_id)
        events = self.remote.chain(
            room_id, self.auth, prev, depth, STEADY_TRANSACTIONS * PDUS_PER_TRANSACTION
        )
        requests = self.remote.prepare(target, events)  # type: ignore[arg-type]
        # As in bench.federation: from a process of its own, each
        # transaction sent once the previous one is answered.
        errors, started = await _send_from_another_process(
            self.server_name, self.directory, self.pki.ca_file, [requests]
        )
        elapsed = time.perf_counter() - started
        self.errors += errors
        reached = _accepted(target, [event_id for event_id, _ in events])
        self.sent += len(events)
        self.accepted += reached
        self.rounds.append(reached / elapsed)

    def figures(self) -> dict[str, Any]:
        return {
            "pdus_sent": self.sent,
            "pdus_accepted": self.accepted,
            "pdu_errors": self.errors,
            "pdus_per_s": max(self.rounds),
            "pdus_per_s_rounds": self.rounds,
        }


async def _main(directory: Path) -> dict[str, Any]:
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = _Pki(ca, ca_file, directory)
    single = _Deployment(directory / "single", pki, workers=False)
    reader = _Deployment(directory / "workers", pki, workers=True)
    try:
        async with trio.open_nursery() as nursery:
            for deployment in (single, reader):
                await deployment.start()
                await deployment.join(nursery)
            # Both run throughout and take turns, so that what else the
            # machine does weighs on both alike; the best round counts.
            for _ in range(STEADY_ROUNDS):
                await single.round()
                await reader.round()
            nursery.cancel_scope.cancel()
    finally:
        _stop(single.processes)
        _stop(reader.processes)
    figures: dict[str, Any] = {}
    for label, deployment in (("single_process", single), ("federation_reader", reader)):
        for key, value in deployment.figures().items():
            figures[f"{label}_{key}"] = value
    figures["federation_reader_vs_single_process"] = max(reader.rounds) / max(single.rounds)
    return figures


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ranvier-bench-workers-") as directory:
        return trio.run(_main, Path(directory))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
