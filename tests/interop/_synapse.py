"""A real Synapse on loopback, run as a program, and a small client of its
client-server API: the one launcher of both the interop tests and the
benchmarks that measure Synapse beside ranvier (``bench/`` imports it as
``tests.interop._synapse``; ``python -m bench`` runs from the repository's
root, so that name resolves, while pytest puts only ``tests/`` on the path,
so the tests could not import ``bench``).

Synapse is started from a Python interpreter that has it installed (its
own virtual environment, named by ``RANVIER_SYNAPSE_PYTHON``, or the
running one), never imported: it is a peer under test, not a library of
ours. Its configuration is written here from the documented options, as
JSON (which YAML reads), with what a loopback federation needs: a server
name with an explicit port (so no well-known or SRV lookup), one TLS
listener for both APIs with a certificate from the test CA, no notary (each
server's keys come from the server itself), loopback reachable for outgoing
requests and nothing else, and rate limits out of the way. A second
listener serves the client API over plain HTTP, as a homeserver behind a
reverse proxy would, for clients that measure the server and not TLS.

Synapse answers requests before it has finished with what they carry
(``/send`` is acknowledged before its PDUs are stored), so tests poll it.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import itertools
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from ranvier.testing.network import Pki, free_port

__all__ = [
    "SYNAPSE_PYTHON_VARIABLE",
    "SynapseClientError",
    "SynapseProcess",
    "SynapseStartError",
    "SynapseUser",
    "start_synapse",
    "synapse_config",
    "synapse_python",
]

#: The environment variable naming the Python that has Synapse installed.
SYNAPSE_PYTHON_VARIABLE: Final = "RANVIER_SYNAPSE_PYTHON"

# Every IPv4 address outside 127.0.0.0/8, and all of IPv6 but ::1 (which the
# allow list names): Synapse can reach the servers of the test and nothing
# else. For peers named by an IP literal it reads only this list.
_BLOCKED_RANGES: Final = (
    "0.0.0.0/2",
    "64.0.0.0/3",
    "96.0.0.0/4",
    "112.0.0.0/5",
    "120.0.0.0/6",
    "124.0.0.0/7",
    "126.0.0.0/8",
    "128.0.0.0/1",
    "::/0",
)
_ALLOWED_RANGES: Final = ("127.0.0.0/8", "::1/128")

_NO_LIMIT: Final = {"per_second": 100_000, "burst_count": 100_000}
_RATE_LIMITS: Final = (
    "rc_message",
    "rc_registration",
    "rc_room_creation",
    "rc_joins_per_room",
    "rc_third_party_invite",
    "rc_admin_redaction",
)
# Lines a failing test's report leaves out: the tests poll Synapse's client
# API, and each read (and each 404 while an event has not arrived) is
# logged; Synapse's database upkeep says nothing about federation.
_LOG_NOISE: Final = (
    '"GET /_matrix/client/',
    "SynapseError: 404 - Event not found",
    "synapse.storage.background_updates",
)
_START_TIMEOUT_SECONDS: Final = 60.0
_STOP_TIMEOUT_SECONDS: Final = 10.0


class SynapseStartError(RuntimeError):
    """Synapse did not come up; the message ends with its log."""


class SynapseClientError(AssertionError):
    """Synapse refused a client request: the message has its answer.

    An AssertionError, so a refused step reads as the test's failure.
    """

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"Synapse answered {method} {path} with {status}: {body}")


def synapse_python() -> Path:
    """The interpreter to run Synapse with: ``RANVIER_SYNAPSE_PYTHON`` if
    set, else the running one if it has Synapse installed; raise
    :class:`SynapseStartError` saying how to get one otherwise.
    """
    named = os.environ.get(SYNAPSE_PYTHON_VARIABLE)
    if named:
        if not Path(named).is_file():
            raise SynapseStartError(f"{SYNAPSE_PYTHON_VARIABLE}={named}: no such file")
        return Path(named)
    if importlib.util.find_spec("synapse") is None:
        raise SynapseStartError(
            "matrix-synapse is not installed here: run `nox -s interop` or `nox -s bench`,"
            f" `pip install matrix-synapse`, or set {SYNAPSE_PYTHON_VARIABLE} to a Python"
            " interpreter that has it"
        )
    return Path(sys.executable)


def synapse_config(
    directory: Path,
    *,
    port: int,
    client_port: int,
    certificate: Path,
    private_key: Path,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """A Synapse configuration for a server named ``<host>:<port>``, with
    the client API also on ``client_port`` over plain HTTP. It listens on
    127.0.0.1 whatever ``host`` is: another name must resolve there
    (``localhost`` does).
    """
    limits: dict[str, Any] = dict.fromkeys(_RATE_LIMITS, _NO_LIMIT)
    return {
        "server_name": f"{host}:{port}",
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            },
            {
                "port": client_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            },
        ],
        "tls_certificate_path": str(certificate),
        "tls_private_key_path": str(private_key),
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "media_store_path": str(directory / "media"),
        "signing_key_path": str(directory / "signing.key"),
        "registration_shared_secret": secrets.token_hex(16),
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "report_stats": False,
        "enable_metrics": False,
        "url_preview_enabled": False,
        "presence": {"enabled": True},
        "bcrypt_rounds": 4,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # Rooms may be published in its room list (none may, by default),
        # which is served to other servers (ranvier asks for it).
        "room_list_publication_rules": [{"action": "allow"}],
        "allow_public_rooms_over_federation": True,
        # Our servers present certificates from the test CA, which Synapse
        # does not know.
        "federation_verify_certificates": False,
        "ip_range_blacklist": list(_BLOCKED_RANGES),
        "ip_range_whitelist": list(_ALLOWED_RANGES),
        **limits,
        "rc_login": {"address": _NO_LIMIT, "account": _NO_LIMIT, "failed_attempts": _NO_LIMIT},
        "rc_joins": {"local": _NO_LIMIT, "remote": _NO_LIMIT},
        "rc_presence": {"per_user": _NO_LIMIT},
        "rc_invites": {"per_room": _NO_LIMIT, "per_user": _NO_LIMIT, "per_issuer": _NO_LIMIT},
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100_000,
            "sleep_delay": 1,
            "reject_limit": 100_000,
            "concurrent": 1000,
        },
        "federation_rr_transactions_per_room_per_second": 100_000,
    }


@dataclass
class SynapseProcess:
    """A Synapse we started, and where to find it."""

    server_name: str
    #: Both APIs, over TLS.
    base_url: str
    #: The client API over plain HTTP.
    client_url: str
    directory: Path
    log_path: Path
    shared_secret: str
    #: The CA that issued Synapse's certificate (and ours).
    pki: Pki
    process: subprocess.Popen[bytes]
    #: The environment it runs in, for starting it again; None for ours.
    env: Mapping[str, str] | None = field(default=None, repr=False)

    def log_size(self) -> int:
        """Where the log ends now: a mark to show later lines from."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int = 0, *, max_lines: int = 200) -> str:
        """The log from ``offset`` on, without the lines of the tests' own
        polling, its last ``max_lines`` lines at most.
        """
        with self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
        lines = text.splitlines()
        kept = [line for line in lines if not any(noise in line for noise in _LOG_NOISE)]
        notes = []
        if len(kept) < len(lines):
            notes.append(f"[{len(lines) - len(kept)} lines of client reads and upkeep left out]")
        if len(kept) > max_lines:
            notes.append(f"[{len(kept) - max_lines} earlier lines left out]")
            kept = kept[-max_lines:]
        if notes:
            notes.append(f"[the whole log: {self.log_path}]")
        return "\n".join([*notes, *kept])

    def logged_since(self, offset: int, text: str) -> bool:
        """Whether Synapse has logged ``text`` since ``offset``."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return text.encode() in log.read()

    @property
    def pid(self) -> int:
        return self.process.pid

    def client_context(self) -> ssl.SSLContext:
        """What a client checking Synapse's certificate trusts."""
        return self.pki.client_context()

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not gone within a few seconds."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop it if it runs, start it again on the same directory, ports and
        keys, and wait until it is healthy (as :func:`start_synapse` does).
        """
        self.stop()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.process.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=None if self.env is None else dict(self.env),
            )
        try:
            _wait_until_healthy(self)
        except BaseException:
            self.stop()
            raise

    async def register(
        self, http: httpx.AsyncClient, localpart: str, *, plain: bool = False
    ) -> SynapseUser:
        """A new user, through the shared-secret registration API; the user
        acts over plain HTTP if ``plain``, else over TLS.
        """
        base_url = self.client_url if plain else self.base_url
        path = "/_synapse/admin/v1/register"
        nonce_answer = await http.get(base_url + path)
        _check(nonce_answer, "GET", path)
        nonce = nonce_answer.json()["nonce"]
        password = secrets.token_hex(8)
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"])
        )
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": False,
            "mac": mac.hexdigest(),
        }
        answer = await http.post(base_url + path, json=body)
        _check(answer, "POST", path)
        registered = answer.json()
        return SynapseUser(registered["user_id"], registered["access_token"], base_url, http)


def start_synapse(
    python: Path,
    directory: Path,
    pki: Pki,
    *,
    cache_factor: float | None = None,
    extra_config: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
) -> SynapseProcess:
    """Configure a Synapse with a fresh database in ``directory``, start it,
    and wait until it is healthy.

    ``cache_factor`` scales its caches (``SYNAPSE_CACHE_FACTOR``); ``None``
    keeps their default sizes, as an operator would run it.
    ``extra_config`` holds top-level options that replace or add to those
    of :func:`synapse_config`; ``host`` is the host of its server name
    (see there). Raise
    :class:`SynapseStartError` (with the log) if it is not healthy within a
    minute; the process is stopped then.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port, client_port = free_port(), free_port()
    certificate, private_key = directory / "tls.crt", directory / "tls.key"
    issued = pki.ca.issue_cert("127.0.0.1", "localhost")
    certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(private_key))
    config = synapse_config(
        directory,
        port=port,
        client_port=client_port,
        certificate=certificate,
        private_key=private_key,
        host=host,
    )
    config.update(extra_config or {})
    config_path = directory / "homeserver.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = directory / "synapse.log"
    command = [str(python), "-m", "synapse.app.homeserver", "--config-path", str(config_path)]
    with log_path.open("ab") as log:
        generated = subprocess.run(
            [*command, "--generate-keys"], stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if generated.returncode != 0:
        raise SynapseStartError(
            f"generating Synapse's keys failed ({generated.returncode}):\n{log_path.read_text()}"
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cache_factor is not None:
        env["SYNAPSE_CACHE_FACTOR"] = str(cache_factor)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=directory, env=env
        )
    synapse = SynapseProcess(
        server_name=config["server_name"],
        base_url=f"https://127.0.0.1:{port}",
        client_url=f"http://127.0.0.1:{client_port}",
        directory=directory,
        log_path=log_path,
        shared_secret=config["registration_shared_secret"],
        pki=pki,
        process=process,
        env=env,
    )
    try:
        _wait_until_healthy(synapse)
    except BaseException:
        synapse.stop()
        raise
    return synapse


def _wait_until_healthy(synapse: SynapseProcess) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    with httpx.Client(verify=synapse.client_context(), timeout=5) as http:
        while True:
            code = synapse.process.poll()
            if code is not None:
                raise SynapseStartError(
                    f"Synapse exited with {code} while starting:\n{synapse.log_since()}"
                )
            try:
                if http.get(synapse.base_url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SynapseStartError(
                    f"Synapse was not healthy after {_START_TIMEOUT_SECONDS:.0f} s:\n"
                    + synapse.log_since()
                )
            time.sleep(0.1)


def _check(answer: httpx.Response, method: str, path: str) -> None:
    if not answer.is_success:
        raise SynapseClientError(method, path, answer.status_code, answer.text)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


_txn_ids = itertools.count(1)


@dataclass
class SynapseUser:
    """A user of the Synapse under test, acting through its client API."""

    user_id: str
    access_token: str
    base_url: str
    http: httpx.AsyncClient = field(repr=False)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
    ) -> Any:
        """The decoded answer to a client API request; a refusal raises
        :class:`SynapseClientError`.
        """
        answer = await self.http.request(
            method,
            self.base_url + path,
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {self.access_token}"},
        )
        _check(answer, method, path)
        return answer.json()

    async def create_room(self, **body: Any) -> str:
        answer = await self.request("POST", "/_matrix/client/v3/createRoom", body=body)
        room_id: str = answer["room_id"]
        return room_id

    async def join(self, room_id: str, via: str) -> str:
        """Join through the server named ``via`` (a room ID of room
        version 12 names none); return the room ID.
        """
        answer = await self.request(
            "POST",
            f"/_matrix/client/v3/join/{_quote(room_id)}",
            body={},
            params={"server_name": via, "via": via},
        )
        joined: str = answer["room_id"]
        return joined

    async def invite(self, room_id: str, user_id: str) -> None:
        path = f"/_matrix/client/v3/rooms/{_quote(room_id)}/invite"
        await self.request("POST", path, body={"user_id": user_id})

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/_matrix/client/v3/rooms/{_quote(room_id)}/leave", body={})

    async def send_message(self, room_id: str, text: str) -> str:
        path = (
            f"/_matrix/client/v3/rooms/{_quote(room_id)}/send/m.room.message/"
            f"t{next(_txn_ids)}-{time.monotonic_ns()}"
        )
        answer = await self.request("PUT", path, body={"msgtype": "m.text", "body": text})
        event_id: str = answer["event_id"]
        return event_id

    async def send_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> str:
        path = (
            f"/_matrix/client/v3/rooms/{_quote(room_id)}/state/{_quote(event_type)}/"
            f"{_quote(state_key)}"
        )
        answer = await self.request("PUT", path, body=content)
        event_id: str = answer["event_id"]
        return event_id

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any]:
        """The content of one state event of the room's current state."""
        content: dict[str, Any] = await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{_quote(room_id)}/state/{_quote(event_type)}/"
            f"{_quote(state_key)}",
        )
        return content

    async def state_ids(self, room_id: str) -> dict[tuple[str, str], str]:
        """The room's current state as Synapse has it: each key to its event ID."""
        events = await self.request("GET", f"/_matrix/client/v3/rooms/{_quote(room_id)}/state")
        return {(event["type"], event["state_key"]): event["event_id"] for event in events}

    async def event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        """The event as Synapse serves it to clients, or None if it has not got it."""
        try:
            found: dict[str, Any] = await self.request(
                "GET", f"/_matrix/client/v3/rooms/{_quote(room_id)}/event/{_quote(event_id)}"
            )
        except SynapseClientError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def timeline(self, room_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The room's latest events, newest first, as ``/messages`` pages
        back through them (fetching older ones from other servers when it
        reaches a gap).
        """
        answer = await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{_quote(room_id)}/messages",
            params={"dir": "b", "limit": str(limit)},
        )
        chunk: list[dict[str, Any]] = answer["chunk"]
        return chunk

    async def joined_members(self, room_id: str) -> set[str]:
        """The joined members. For a room Synapse joined with partial state
        this waits until its resync is done.
        """
        answer = await self.request(
            "GET", f"/_matrix/client/v3/rooms/{_quote(room_id)}/joined_members"
        )
        return set(answer["joined"])
