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
loop, where the remotes run. ``federation_reader_vs_single_process`` is the
ratio of the best rounds' rates: above 1 the worker's second process buys
more than the process boundary costs; below, the boundary costs more.
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

from bench.federation import PDUS_PER_TRANSACTION, _Connection, _Pki, _Remote
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.testing.network import free_port

STEADY_TRANSACTIONS = 30
STEADY_ROUNDS = 3
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


async def _measure(directory: Path, pki: _Pki, *, workers: bool) -> dict[str, Any]:
    assert SCRIPT is not None
    federation_port, client_port, replication_port = _ports(3)
    server_name = f"127.0.0.1:{federation_port}"
    (directory / "main").mkdir(parents=True)
    common = _common(directory, pki, server_name)
    main_listeners = f'[[listeners]]\ntype = "client"\nport = {client_port}\n'
    if workers:
        main_listeners += f'[[listeners]]\ntype = "replication"\nport = {replication_port}\n'
    else:
        main_listeners += f'[[listeners]]\ntype = "federation"\nport = {federation_port}\n'
    (directory / "main.toml").write_text(
        f'data_dir = "{directory / "main"}"\n{common}{main_listeners}'
    )
    processes = [
        _spawn(
            [SCRIPT, "serve", "--config", str(directory / "main.toml"), "--log-level", "WARNING"],
            directory / "main.log",
        )
    ]
    try:
        await _wait_until_answers(
            f"http://127.0.0.1:{client_port}/_matrix/client/versions", pki.ca_file, processes[0]
        )
        if workers:
            (directory / "worker").mkdir()
            (directory / "worker.toml").write_text(
                f'data_dir = "{directory / "worker"}"\n{common}'
                f'[worker]\nmain_replication_url = "http://127.0.0.1:{replication_port}"\n'
                f'[[listeners]]\ntype = "federation"\nport = {federation_port}\n'
            )
            processes.append(
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
            f"https://{server_name}/_matrix/federation/v1/version", pki.ca_file, processes[-1]
        )
        return await _push(directory, pki, server_name, client_port)
    finally:
        _stop(processes)


async def _push(directory: Path, pki: _Pki, server_name: str, client_port: int) -> dict[str, Any]:
    target = _Target(server_name, directory / "main" / "homeserver.db")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{client_port}", timeout=60) as http:
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
        room_id: str = created.json()["room_id"]
    async with trio.open_nursery() as nursery:
        remote = await _Remote.start(nursery, pki, "remote")
        await remote.join(target, room_id)  # type: ignore[arg-type]
        auth = _auth_for(target, room_id, remote.user)
        host, port = server_name.rsplit(":", 1)
        connection = _Connection(host, int(port), client_ssl_context(ca_file=pki.ca_file))
        await connection.reconnect()
        rounds: list[float] = []
        sent = accepted = errors = 0
        for _ in range(STEADY_ROUNDS):
            prev, depth = _start_of_chain(target, room_id)
            events = remote.chain(
                room_id, auth, prev, depth, STEADY_TRANSACTIONS * PDUS_PER_TRANSACTION
            )
            requests = remote.prepare(target, events)  # type: ignore[arg-type]
            started = time.perf_counter()
            errors += await remote.push(connection, requests)
            elapsed = time.perf_counter() - started
            reached = _accepted(target, [event_id for event_id, _ in events])
            sent += len(events)
            accepted += reached
            rounds.append(reached / elapsed)
        await connection.aclose()
        nursery.cancel_scope.cancel()
    return {
        "pdus_sent": sent,
        "pdus_accepted": accepted,
        "pdu_errors": errors,
        "pdus_per_s": max(rounds),
        "pdus_per_s_rounds": rounds,
    }


async def _main(directory: Path) -> dict[str, Any]:
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = _Pki(ca, ca_file, directory)
    single = await _measure(directory / "single", pki, workers=False)
    reader = await _measure(directory / "workers", pki, workers=True)
    figures: dict[str, Any] = {}
    for label, measured in (("single_process", single), ("federation_reader", reader)):
        for key, value in measured.items():
            figures[f"{label}_{key}"] = value
    figures["federation_reader_vs_single_process"] = reader["pdus_per_s"] / single["pdus_per_s"]
    return figures


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ranvier-bench-workers-") as directory:
        return trio.run(_main, Path(directory))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
