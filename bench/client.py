"""The client-server API: messages sent into one room, and an initial /sync,
ranvier beside Synapse.

Each server runs as a program of its own on loopback, its client API over
plain HTTP (as behind a reverse proxy), with its default database settings
(SQLite, ``synchronous = FULL``): ``ranvier serve`` with registration on,
and a fresh Synapse started by the interop tests' launcher, its users made
through shared-secret registration; each with its rate limits out of the
way. A subprocess rather than a server in this process, so that ranvier,
like Synapse, has a process and an event loop of its own and the client's
work does not count against it. The same client makes the same requests
of both: the timed sends go over raw HTTP/1.1 on Trio sockets, one
kept-alive connection per user, each request rendered as bytes and its
answer read by Content-Length and decoded with msgspec (``_Wire``), so
that the client, which shares the machine's two cores with the server,
costs far less than either server per send; setup, registration and the
syncs use httpx.

Sends: on each server 20 users join a public room; one of them sends ``PUT
/rooms/{roomId}/send/m.room.message/{txnId}`` back to back, each request
waiting for the previous answer (``sequential``), then all 20 send at once,
each waiting only for its own previous answer (``concurrent_20``). A few
sends first warm both servers. Both servers run throughout and take turns,
``SEND_ROUNDS`` rounds each, and each phase's best round is kept: on a
shared machine the slower rounds measure the rest of the machine, and
turns spread its ups and downs over both. ``sends_per_s`` counts answered
sends over the phase's wall time, ``p50_ms`` is the median time to an
answer. ``sends_speedup_vs_synapse`` is ranvier's rate with 20 clients
over Synapse's; the aim is ten.

Initial sync: ``RANVIER_BENCH_CLIENT_SYNC=ROOMSxMEMBERS`` (100x100 unless
set) rooms, each created by one user and joined by every other of
``MEMBERS`` users through the client API, 20 requests at a time
(``build_joins_per_s``). Then three of the members each make a first ``GET
/sync`` (no ``since``, no filter); ``initial_sync_s`` is the median time to
the whole answer, its size in ``sync_bytes``. An answer that does not hold
every room with every member joined fails the benchmark, as does a send
answered without an event ID.

``server_cpu_ms_per_send`` is the server process's CPU time (user and
system, from /proc) per send: on a machine of two cores the client shares
them, so the rate alone can understate a cheap server.
``client_cpu_ms_per_send`` is this process's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import trio

from bench._synapse_server import SynapseServer, start_synapse, synapse_python
from ranvier.config import Config
from ranvier.testing import Pki, free_port

SIZE_VARIABLE: Final = "RANVIER_BENCH_CLIENT_SYNC"
SYNC_ROOMS: Final = 100
SYNC_MEMBERS: Final = 100
CLIENTS: Final = 20
SEQUENTIAL_SENDS: Final = 200
SENDS_PER_CLIENT: Final = 20
WARM_UP_SENDS: Final = 20
#: Turns each server takes at the sends, the best kept.
SEND_ROUNDS: Final = 3
#: Requests in flight while the sync rooms are built.
BUILD_CONCURRENCY: Final = 20
SYNCING_USERS: Final = 3
AIM_SPEEDUP: Final = 10.0
_START_SECONDS: Final = 60.0
_STOP_SECONDS: Final = 10.0
_REQUEST_SECONDS: Final = 600.0
_CLIENT_API: Final = "/_matrix/client/v3"


def _sync_size() -> tuple[int, int]:
    text = os.environ.get(SIZE_VARIABLE, "").strip()
    if not text:
        return SYNC_ROOMS, SYNC_MEMBERS
    rooms, _, members = text.lower().partition("x")
    if not (rooms.isdigit() and members.isdigit()) or int(rooms) < 1 or int(members) < 2:
        raise ValueError(
            f"{SIZE_VARIABLE}={text!r}: expected ROOMSxMEMBERS, e.g. 100x100, with at least"
            " one room and two members"
        )
    return int(rooms), int(members)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RequestError(RuntimeError):
    """A server refused a request the benchmark needs."""


_txn_ids = itertools.count()


class _Wire:
    """One kept-alive HTTP/1.1 connection that sends a request and reads its
    answer with nothing in between.

    The sends are timed through this rather than httpx: on a machine of two
    cores the measuring client shares them with the server, and httpx spends
    more CPU on a request than ranvier does answering it. Requests are
    rendered as bytes, an answer read by its status line and Content-Length
    (both servers send one with a JSON answer) and its body decoded with
    msgspec. Setup, registration and syncs stay on httpx.
    """

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{base_url}: expected http://host:port")
        self._host, self._port = parts.hostname, parts.port
        self._host_header = f"{parts.hostname}:{parts.port}".encode("ascii")
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    async def request(
        self, method: str, target: str, headers: bytes, body: bytes
    ) -> tuple[int, bytes]:
        """The status and body of the answer to one request.

        A kept-alive connection the server closed while it was idle (both
        servers close idle ones after a few seconds) is opened afresh and
        the request sent again: it had not been read, and every request
        sent this way is idempotent (a PUT with a transaction ID).
        """
        request = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode("ascii"),
            target.encode("ascii"),
            self._host_header,
            headers,
            len(body),
            body,
        )
        reused = self._stream is not None
        try:
            end = await self._exchange(request)
        except (RequestError, trio.BrokenResourceError):
            if not reused or self._buffer:
                raise
            await self.aclose()
            end = await self._exchange(request)
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        status_line, _, header_text = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length: int | None = None
        chunked = closing = False
        for line in header_text.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
            elif name == b"connection" and value.strip().lower() == b"close":
                closing = True
        if chunked:
            answer = await self._read_chunked()
        elif length is not None:
            answer = await self._read(length)
        else:
            raise RequestError(f"{method} {target}: an answer of no known length: {head!r}")
        if closing:
            await self.aclose()
        return status, answer

    async def _exchange(self, request: bytes) -> int:
        """Send ``request``; the end of its answer's head in the buffer."""
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
        await self._stream.send_all(request)
        return await self._fill_until(b"\r\n\r\n")

    async def _read(self, length: int) -> bytes:
        while len(self._buffer) < length:
            await self._receive()
        data = bytes(self._buffer[:length])
        del self._buffer[:length]
        return data

    async def _read_chunked(self) -> bytes:
        """A body sent in chunks (Synapse's way), trailers skipped."""
        chunks: list[bytes] = []
        while True:
            end = await self._fill_until(b"\r\n")
            size = int(bytes(self._buffer[:end]).partition(b";")[0], 16)
            del self._buffer[: end + 2]
            if size == 0:
                break
            chunks.append(await self._read(size))
            await self._read(2)
        while (end := await self._fill_until(b"\r\n")) > 0:
            del self._buffer[: end + 2]
        del self._buffer[:2]
        return b"".join(chunks)

    async def _fill_until(self, marker: bytes) -> int:
        searched = 0
        while (end := self._buffer.find(marker, searched)) < 0:
            searched = max(0, len(self._buffer) - len(marker) + 1)
            await self._receive()
        return end

    async def _receive(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise RequestError("the server closed the connection in the middle of an answer")
        self._buffer += chunk

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._buffer.clear()
            await stream.aclose()


_encode_json: Final = msgspec.json.Encoder().encode
_decode_json: Final = msgspec.json.Decoder().decode


@dataclass
class _User:
    user_id: str
    access_token: str
    base_url: str
    http: httpx.AsyncClient = field(repr=False)
    _wire: _Wire | None = field(default=None, repr=False)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        answer = await self.http.request(
            method,
            self.base_url + _CLIENT_API + path,
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {self.access_token}"},
        )
        if not answer.is_success:
            raise RequestError(
                f"{method} {path} as {self.user_id}: {answer.status_code} {answer.text[:500]}"
            )
        return answer.json()

    async def send(self, room_id: str, text: str) -> str:
        """Send a message over this user's own connection (see :class:`_Wire`)."""
        if self._wire is None:
            self._wire = _Wire(self.base_url)
        target = f"{_CLIENT_API}/rooms/{_quote(room_id)}/send/m.room.message/b{next(_txn_ids)}"
        headers = b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n" % (
            self.access_token.encode("ascii")
        )
        status, raw = await self._wire.request(
            "PUT", target, headers, _encode_json({"msgtype": "m.text", "body": text})
        )
        if not 200 <= status < 300:
            raise RequestError(f"PUT {target} as {self.user_id}: {status} {raw[:500]!r}")
        answer = _decode_json(raw)
        event_id = answer.get("event_id") if isinstance(answer, dict) else None
        if not isinstance(event_id, str) or not event_id.startswith("$"):
            raise RequestError(f"a send was answered without an event ID: {answer}")
        return event_id

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()

    async def create_room(self, name: str) -> str:
        answer = await self.request(
            "POST", "/createRoom", body={"preset": "public_chat", "name": name}
        )
        room_id: str = answer["room_id"]
        return room_id

    async def join(self, room_id: str) -> None:
        await self.request("POST", f"/join/{_quote(room_id)}", body={})


Register = Callable[[httpx.AsyncClient, str], Awaitable[_User]]


@dataclass
class _Target:
    """A server under measurement, as the client sees it."""

    name: str
    pid: int
    register: Register


# --- The servers ----------------------------------------------------------------------


def _ranvier_config(directory: Path, client_port: int) -> str:
    federation_port = free_port()
    lines = [
        f'server_name = "127.0.0.1:{federation_port}"',
        f"data_dir = {json.dumps(str(directory))}",
        "",
        "[[listeners]]",
        'type = "federation"',
        'host = "127.0.0.1"',
        f"port = {federation_port}",
        "",
        "[[listeners]]",
        'type = "client"',
        'host = "127.0.0.1"',
        f"port = {client_port}",
        "",
        "[registration]",
        "enabled = true",
        "",
        # Synapse's are raised out of the way too.
        "[ratelimit]",
        "enabled = false",
    ]
    text = "\n".join(lines) + "\n"
    Config.from_toml(text)  # A setting this version lacks fails here, not in the server.
    return text


async def _register_on_ranvier(base_url: str, http: httpx.AsyncClient, localpart: str) -> _User:
    """A new account through ``POST /register``, with the dummy stage of
    user-interactive authentication if the server asks for one.
    """
    body: dict[str, Any] = {"username": localpart, "password": f"pw-{localpart}-1234"}
    url = base_url + _CLIENT_API + "/register"
    answer = await http.post(url, json=body)
    if answer.status_code == 401 and "session" in answer.json():
        body["auth"] = {"type": "m.login.dummy", "session": answer.json()["session"]}
        answer = await http.post(url, json=body)
    if not answer.is_success:
        raise RequestError(f"registering {localpart}: {answer.status_code} {answer.text[:500]}")
    registered = answer.json()
    return _User(registered["user_id"], registered["access_token"], base_url, http)


def _launch_ranvier(directory: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ``ranvier serve``; return the process, its client API's URL and its log."""
    directory.mkdir(parents=True, exist_ok=True)
    client_port = free_port()
    config_path = directory / "ranvier.toml"
    config_path.write_text(_ranvier_config(directory / "data", client_port))
    command = [
        sys.executable,
        "-c",
        "import sys; from ranvier.cli import main; sys.exit(main())",
        "serve",
        "--config",
        str(config_path),
    ]
    log_path = directory / "ranvier.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{client_port}", log_path


@contextlib.asynccontextmanager
async def _ranvier(directory: Path) -> AsyncIterator[_Target]:
    """``ranvier serve`` in a process of its own, registration on."""
    process, base_url, log_path = await trio.to_thread.run_sync(_launch_ranvier, directory)
    try:
        await _wait_until_serving(process, base_url, log_path)

        async def register(http: httpx.AsyncClient, localpart: str) -> _User:
            return await _register_on_ranvier(base_url, http, localpart)

        yield _Target("ranvier", process.pid, register)
    except BaseException:
        _progress(f"ranvier's log ends:\n{_tail(log_path)}")
        raise
    finally:
        _stop(process)


async def _wait_until_serving(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        with trio.fail_after(_START_SECONDS):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"ranvier exited while starting:\n{_tail(log)}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(base_url + "/_matrix/client/versions")).is_success:
                        return
                await trio.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.asynccontextmanager
async def _synapse(directory: Path) -> AsyncIterator[tuple[_Target, SynapseServer]]:
    await trio.to_thread.run_sync(functools.partial(directory.mkdir, parents=True))
    pki = await trio.to_thread.run_sync(Pki.create, directory)
    async with (
        httpx.AsyncClient(verify=pki.client_context(), timeout=30) as tls_http,
        trio.open_nursery() as nursery,
    ):
        synapse = await start_synapse(nursery, directory / "synapse", pki, tls_http)
        try:

            async def register(http: httpx.AsyncClient, localpart: str) -> _User:
                user = await synapse.register_user(http, localpart, plain=True)
                return _User(user.user_id, user.access_token, synapse.client_url, http)

            yield _Target("Synapse", synapse.pid, register), synapse
        except BaseException:
            _progress(f"Synapse's log ends:\n{synapse.log_tail()}")
            raise
        finally:
            await synapse.stop()


# --- Measurements ---------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class _Phase:
    sends: int
    seconds: float
    latencies: list[float]
    server_cpu_s: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.sends / self.seconds

    def figures(self) -> dict[str, float]:
        return {
            "sends_per_s": self.rate,
            "p50_ms": statistics.median(self.latencies) * 1000,
            "p90_ms": statistics.quantiles(self.latencies, n=10)[-1] * 1000,
            "server_cpu_ms_per_send": self.server_cpu_s / self.sends * 1000,
            "client_cpu_ms_per_send": self.client_cpu_s / self.sends * 1000,
        }


async def _timed_sends(
    target: _Target, senders: Sequence[_User], room_id: str, per_sender: int
) -> _Phase:
    latencies: list[float] = []
    event_ids: set[str] = set()

    async def send_all(user: _User) -> None:
        for n in range(per_sender):
            started = time.perf_counter()
            event_ids.add(await user.send(room_id, f"message {n} from {user.user_id}"))
            latencies.append(time.perf_counter() - started)

    server_cpu, client_cpu = _cpu_seconds(target.pid), time.process_time()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for user in senders:
            nursery.start_soon(send_all, user)
    seconds = time.perf_counter() - started
    sends = len(senders) * per_sender
    if len(event_ids) != sends:
        raise AssertionError(f"{sends} sends were answered with {len(event_ids)} event IDs")
    return _Phase(
        sends,
        seconds,
        latencies,
        _cpu_seconds(target.pid) - server_cpu,
        time.process_time() - client_cpu,
    )


async def _in_parallel(jobs: Sequence[Callable[[], Awaitable[object]]], width: int) -> None:
    """Run ``jobs``, ``width`` at a time."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    async with trio.open_nursery() as nursery:
        for _ in range(width):
            nursery.start_soon(worker)


async def _register_all(
    target: _Target, http: httpx.AsyncClient, prefix: str, count: int
) -> list[_User]:
    users: list[_User | None] = [None] * count

    def job(index: int) -> Callable[[], Awaitable[None]]:
        async def register() -> None:
            users[index] = await target.register(http, f"{prefix}{index}")

        return register

    await _in_parallel([job(index) for index in range(count)], BUILD_CONCURRENCY)
    return [user for user in users if user is not None]


async def _send_room(target: _Target, http: httpx.AsyncClient) -> tuple[list[_User], str]:
    """``CLIENTS`` users in a new public room, which has seen a few sends."""
    users = await _register_all(target, http, "sender", CLIENTS)
    room_id = await users[0].create_room("sends")
    await _in_parallel([_bound(user.join, room_id) for user in users[1:]], CLIENTS)
    for n in range(WARM_UP_SENDS):
        await users[n % len(users)].send(room_id, "warming up")
    return users, room_id


def _bound(
    function: Callable[[str], Awaitable[object]], argument: str
) -> Callable[[], Awaitable[object]]:
    """A job that calls ``function(argument)``."""

    async def call() -> object:
        return await function(argument)

    return call


async def _build_sync_rooms(
    target: _Target, http: httpx.AsyncClient, rooms: int, members: int
) -> tuple[list[_User], list[str], float]:
    """``rooms`` public rooms that ``members`` users have all joined; the
    seconds the joins took.
    """
    users = await _register_all(target, http, "member", members)
    room_ids: list[str] = [""] * rooms

    def create(index: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            room_ids[index] = await users[0].create_room(f"room {index}")

        return run

    started = time.perf_counter()
    await _in_parallel([create(index) for index in range(rooms)], BUILD_CONCURRENCY)
    # Each round has every room joined by a different user, so that requests
    # in flight together are for different rooms and different users.
    joiners = members - 1
    joins = [
        _bound(users[1 + (room + step) % joiners].join, room_ids[room])
        for step in range(joiners)
        for room in range(rooms)
    ]
    await _in_parallel(joins, BUILD_CONCURRENCY)
    return users, room_ids, time.perf_counter() - started


def _check_sync(answer: Mapping[str, Any], room_ids: Sequence[str], members: int) -> None:
    joined = answer.get("rooms", {}).get("join", {})
    missing = set(room_ids) - set(joined)
    if missing:
        raise AssertionError(f"the initial sync lacks {len(missing)} of the {len(room_ids)} rooms")
    for room_id in room_ids:
        room = joined[room_id]
        events = [*room.get("state", {}).get("events", [])]
        events += room.get("timeline", {}).get("events", [])
        membership: dict[str, str] = {}
        for event in events:
            if event.get("type") == "m.room.member":
                membership[event["state_key"]] = event["content"]["membership"]
        joined_members = sum(1 for value in membership.values() if value == "join")
        if joined_members != members:
            raise AssertionError(
                f"the initial sync shows {joined_members} members joined to {room_id},"
                f" not {members}"
            )


async def _initial_syncs(
    users: Sequence[_User], room_ids: Sequence[str], members: int
) -> tuple[list[float], int]:
    seconds: list[float] = []
    size = 0
    for user in users[-SYNCING_USERS:]:
        started = time.perf_counter()
        answer = await user.http.get(
            user.base_url + _CLIENT_API + "/sync",
            headers={"Authorization": f"Bearer {user.access_token}"},
        )
        seconds.append(time.perf_counter() - started)
        if not answer.is_success:
            raise RequestError(f"GET /sync: {answer.status_code} {answer.text[:500]}")
        size = len(answer.content)
        _check_sync(msgspec.json.decode(answer.content), room_ids, members)
    return seconds, size


async def _sends(
    targets: Sequence[_Target], http: httpx.AsyncClient
) -> dict[str, dict[str, dict[str, float]]]:
    """Each server's best phases of ``SEND_ROUNDS``, the servers taking turns."""
    rooms = {target.name: await _send_room(target, http) for target in targets}
    try:
        best = await _send_rounds(targets, rooms)
    finally:
        for users, _ in rooms.values():
            for user in users:
                await user.aclose()
    return {
        name: {phase_name: phase.figures() for phase_name, phase in phases_kept.items()}
        for name, phases_kept in best.items()
    }


async def _send_rounds(
    targets: Sequence[_Target], rooms: Mapping[str, tuple[list[_User], str]]
) -> dict[str, dict[str, _Phase]]:
    best: dict[str, dict[str, _Phase]] = {target.name: {} for target in targets}
    for round_number in range(SEND_ROUNDS):
        for target in targets:
            users, room_id = rooms[target.name]
            phases = {
                "sequential": await _timed_sends(target, users[:1], room_id, SEQUENTIAL_SENDS),
                f"concurrent_{CLIENTS}": await _timed_sends(
                    target, users, room_id, SENDS_PER_CLIENT
                ),
            }
            for name, phase in phases.items():
                kept = best[target.name].get(name)
                if kept is None or phase.rate > kept.rate:
                    best[target.name][name] = phase
            _progress(
                f"round {round_number + 1}, {target.name}: "
                + ", ".join(f"{name} {phase.rate:.0f} sends/s" for name, phase in phases.items())
            )
    return best


async def _syncs(
    target: _Target, http: httpx.AsyncClient, rooms: int, members: int
) -> dict[str, Any]:
    _progress(f"{target.name}: building {rooms} rooms of {members} members")
    users, room_ids, build_s = await _build_sync_rooms(target, http, rooms, members)
    _progress(f"{target.name}: built in {build_s:.1f} s; initial syncs")
    syncs, sync_bytes = await _initial_syncs(users, room_ids, members)
    _progress(f"{target.name}: initial syncs took {', '.join(f'{s:.3f}' for s in syncs)} s")
    return {
        "build_s": build_s,
        "joins_per_s": rooms * (members - 1) / build_s,
        "initial_sync_s": statistics.median(syncs),
        "initial_syncs_s": syncs,
        "sync_bytes": sync_bytes,
    }


def _pick(sends: Mapping[str, Mapping[str, float]], key: str) -> dict[str, float]:
    return {phase: figures[key] for phase, figures in sends.items()}


async def _main(directory: Path, rooms: int, members: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CLIENTS + 4, max_keepalive_connections=CLIENTS + 4)
    async with (
        _ranvier(directory / "ranvier") as target,
        _synapse(directory / "synapse") as (synapse_target, synapse),
        httpx.AsyncClient(limits=limits, timeout=_REQUEST_SECONDS) as http,
    ):
        version = await synapse.http.get(synapse.base_url + "/_matrix/federation/v1/version")
        synapse_version = version.json()["server"]["version"]
        sends = await _sends([target, synapse_target], http)
        ours = {"sends": sends[target.name], **await _syncs(target, http, rooms, members)}
        theirs = {
            "sends": sends[synapse_target.name],
            **await _syncs(synapse_target, http, rooms, members),
        }
    headline = f"concurrent_{CLIENTS}"
    speedup = ours["sends"][headline]["sends_per_s"] / theirs["sends"][headline]["sends_per_s"]
    return {
        "sends_per_s": _pick(ours["sends"], "sends_per_s"),
        "p50_ms": _pick(ours["sends"], "p50_ms"),
        "synapse_sends_per_s": _pick(theirs["sends"], "sends_per_s"),
        "synapse_p50_ms": _pick(theirs["sends"], "p50_ms"),
        "sends_speedup_vs_synapse": speedup,
        "p90_ms": _pick(ours["sends"], "p90_ms"),
        "synapse_p90_ms": _pick(theirs["sends"], "p90_ms"),
        "server_cpu_ms_per_send": _pick(ours["sends"], "server_cpu_ms_per_send"),
        "synapse_cpu_ms_per_send": _pick(theirs["sends"], "server_cpu_ms_per_send"),
        "client_cpu_ms_per_send": _pick(ours["sends"], "client_cpu_ms_per_send"),
        "initial_sync_s": ours["initial_sync_s"],
        "synapse_initial_sync_s": theirs["initial_sync_s"],
        "initial_sync_speedup_vs_synapse": theirs["initial_sync_s"] / ours["initial_sync_s"],
        "initial_syncs_s": ours["initial_syncs_s"],
        "synapse_initial_syncs_s": theirs["initial_syncs_s"],
        "sync_bytes": ours["sync_bytes"],
        "synapse_sync_bytes": theirs["sync_bytes"],
        "sync_rooms": rooms,
        "sync_members": members,
        "build_joins_per_s": ours["joins_per_s"],
        "synapse_build_joins_per_s": theirs["joins_per_s"],
        "aims_met": {"sends_10x_synapse": speedup >= AIM_SPEEDUP},
        "send_rounds": SEND_ROUNDS,
        "synapse_version": synapse_version,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }


def run() -> dict[str, Any]:
    rooms, members = _sync_size()
    synapse_python()  # Fail now, not after measuring ranvier.
    with tempfile.TemporaryDirectory(prefix="ranvier-bench-client-") as directory:
        return trio.run(_main, Path(directory), rooms, members)
