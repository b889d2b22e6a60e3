"""A real Synapse on loopback, for benchmarks that measure it beside ranvier.

Synapse runs as a program, never imported, from a Python that has
``matrix-synapse`` installed: ``RANVIER_SYNAPSE_PYTHON`` if set, else the
benchmark's own interpreter (``nox -s bench`` installs Synapse there).

Its configuration is written from Synapse's documented options with what a
loopback federation needs (see ../shared/interop/SYNAPSE.md): a server
name with an explicit port, one TLS listener for the client and federation
APIs, no notary, loopback reachable and nothing else, and rate limits out
of the way. Unlike the interop tests' Synapse (tests/interop/_synapse.py),
its caches keep their default size: as a baseline it runs as an operator
would run it.

Each :func:`start_synapse` gets a fresh database, so a measurement of its
memory is that of one job.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from ranvier.testing.network import Pki, free_port

__all__ = ["SynapseError", "SynapseServer", "start_synapse", "synapse_python"]

_PYTHON_VARIABLE: Final = "RANVIER_SYNAPSE_PYTHON"
# All of IPv4 but 127.0.0.0/8, and all of IPv6: for a peer named by an IP
# literal Synapse reads only this list, so it is what keeps it on loopback.
_BLOCKED: Final = (
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
_UNLIMITED: Final = {"per_second": 100_000, "burst_count": 100_000}
_START_SECONDS: Final = 90.0


class SynapseError(RuntimeError):
    """Synapse did not start, or refused a request; the message says why."""


def synapse_python() -> Path:
    """The interpreter to run Synapse with; raise if there is none."""
    named = os.environ.get(_PYTHON_VARIABLE)
    if named:
        if not Path(named).is_file():
            raise SynapseError(f"{_PYTHON_VARIABLE}={named}: no such file")
        return Path(named)
    if importlib.util.find_spec("synapse") is None:
        raise SynapseError(
            "this benchmark runs Synapse as its baseline, and matrix-synapse is not installed:"
            f" run `nox -s bench`, `pip install matrix-synapse`, or set {_PYTHON_VARIABLE}"
        )
    return Path(sys.executable)


def _config(directory: Path, port: int, certificate: Path, private_key: Path) -> dict[str, Any]:
    return {
        "server_name": f"127.0.0.1:{port}",
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
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
        "presence": {"enabled": False},
        "bcrypt_rounds": 4,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # The other servers' certificates come from a CA Synapse does not know.
        "federation_verify_certificates": False,
        "ip_range_blacklist": list(_BLOCKED),
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
        "rc_joins_per_room": _UNLIMITED,
        "rc_registration": _UNLIMITED,
        "rc_message": _UNLIMITED,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100_000,
            "sleep_delay": 1,
            "reject_limit": 100_000,
            "concurrent": 1000,
        },
    }


@dataclass
class SynapseServer:
    """A Synapse started by :func:`start_synapse`; stop it with :meth:`stop`."""

    server_name: str
    base_url: str
    log_path: Path
    process: trio.Process
    shared_secret: str
    http: httpx.AsyncClient

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def register(self, localpart: str) -> str:
        """A new user through the shared-secret admin API; returns its access token."""
        path = "/_synapse/admin/v1/register"
        nonce = (await self._request("GET", path))["nonce"]
        password = secrets.token_hex(8)
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join(s.encode() for s in (nonce, localpart, password, "notadmin")))
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": False,
            "mac": mac.hexdigest(),
        }
        token: str = (await self._request("POST", path, json=body))["access_token"]
        return token

    async def join(self, token: str, room_id: str, via: str) -> None:
        """``POST /join/{roomId}`` through ``via``; returns when Synapse answers."""
        await self._request(
            "POST",
            f"/_matrix/client/v3/join/{urllib.parse.quote(room_id, safe='')}",
            token=token,
            json={},
            params={"server_name": via},
        )

    async def joined_members(self, token: str, room_id: str) -> set[str]:
        """The room's joined members. In a room joined with partial state,
        Synapse answers only once the room's full state is in.
        """
        answer = await self._request(
            "GET",
            f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id, safe='')}/joined_members",
            token=token,
        )
        return set(answer["joined"])

    async def leave(self, token: str, room_id: str) -> None:
        await self._request(
            "POST",
            f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id, safe='')}/leave",
            token=token,
            json={},
        )

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within ten seconds."""
        if self.process.returncode is not None:
            return
        self.process.terminate()
        with trio.move_on_after(10):
            await self.process.wait()
            return
        self.process.kill()
        await self.process.wait()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        answer = await self.http.request(
            method, self.base_url + path, json=json, params=params, headers=headers
        )
        if not answer.is_success:
            raise SynapseError(
                f"Synapse answered {method} {path} with {answer.status_code}: {answer.text}"
            )
        return answer.json()


def _prepare(directory: Path, pki: Pki) -> tuple[dict[str, Any], list[str], Path]:
    """Write the configuration, certificate and signing key of a new Synapse;
    return its configuration, the command that starts it and its log's path.
    """
    python = synapse_python()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    certificate, private_key = directory / "tls.crt", directory / "tls.key"
    issued = pki.ca.issue_cert("127.0.0.1", "localhost")
    certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(private_key))
    config = _config(directory, port, certificate, private_key)
    config_path = directory / "homeserver.yaml"
    # YAML reads JSON.
    config_path.write_text(json.dumps(config, indent=2))
    log_path = directory / "synapse.log"
    command = [str(python), "-m", "synapse.app.homeserver", "--config-path", str(config_path)]
    with log_path.open("ab") as log:
        generated = subprocess.run(
            [*command, "--generate-keys"], stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if generated.returncode != 0:
        raise SynapseError(f"generating Synapse's keys failed:\n{log_path.read_text()}")
    return config, command, log_path


async def start_synapse(
    nursery: trio.Nursery, directory: Path, pki: Pki, http: httpx.AsyncClient
) -> SynapseServer:
    """Configure a Synapse with a fresh database in ``directory`` and start it
    in ``nursery``; return once it answers ``/health``.

    ``http`` must trust ``pki``'s CA: Synapse's certificate comes from it.
    """
    config, command, log_path = await trio.to_thread.run_sync(_prepare, directory, pki)
    log = await trio.to_thread.run_sync(functools.partial(log_path.open, "ab"))
    try:
        run = functools.partial(
            trio.run_process,
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            check=False,
        )
        process: trio.Process = await nursery.start(run)
    finally:
        # Synapse has a descriptor of its own.
        log.close()
    synapse = SynapseServer(
        server_name=config["server_name"],
        base_url=f"https://{config['server_name']}",
        log_path=log_path,
        process=process,
        shared_secret=config["registration_shared_secret"],
        http=http,
    )
    try:
        with trio.fail_after(_START_SECONDS):
            while True:
                if process.returncode is not None:
                    raise SynapseError(f"Synapse exited while starting:\n{synapse.log_tail()}")
                try:
                    if (await http.get(synapse.base_url + "/health")).status_code == 200:
                        return synapse
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
    except BaseException:
        await synapse.stop()
        raise
