"""A federation server on real HTTPS over loopback, and a remote server's keys.

The remote server is a key pair and a dict-backed key lookup: it stands in
for another homeserver whose keys we have fetched.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.routes import add_key_server_route, add_version_route
from ranvier.federation.transport.server import FederationApp
from ranvier.federation.transport.tls import (
    client_ssl_context,
    ensure_certificate,
    server_ssl_context,
)
from ranvier.protocol.signing import SigningKey, VerifyKeyLike, generate_signing_key, key_id

SERVER_NAME = "localhost:8448"
REMOTE = "remote.example"
NOW_MS = 1_700_000_000_000
VALIDITY_MS = 3_600_000


class DictKeyLookup:
    """Verify keys of other servers, from a dict."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], VerifyKeyLike] = {}
        self.asked: list[tuple[str, str]] = []
        #: Raised by every lookup when set, as a remote that cannot be reached.
        self.error: MatrixError | None = None

    def add(self, server_name: str, key: SigningKey) -> None:
        self.keys[(server_name, key_id(key))] = key.verify_key

    async def get_verify_key(self, server_name: str, key_id: str) -> VerifyKeyLike | None:
        self.asked.append((server_name, key_id))
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        return self.keys.get((server_name, key_id))


@dataclass
class Served:
    app: FederationApp
    lookup: DictKeyLookup
    listener: HttpListener
    client: httpx.AsyncClient
    port: int
    certificate: Path
    our_key: SigningKey
    remote_key: SigningKey


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    certificate, private_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    ensure_certificate(certificate, private_key, SERVER_NAME)
    return certificate, private_key


@pytest.fixture
async def served(tls_files: tuple[Path, Path], nursery: trio.Nursery) -> AsyncIterator[Served]:
    certificate, private_key = tls_files
    our_key = generate_signing_key("ours")
    remote_key = generate_signing_key("remote1")
    lookup = DictKeyLookup()
    lookup.add(REMOTE, remote_key)
    app = FederationApp(server_name=SERVER_NAME, key_lookup=lookup, max_body_bytes=64 * 1024)
    add_version_route(app.router)
    add_key_server_route(
        app.router,
        server_name=SERVER_NAME,
        signing_keys=[our_key],
        validity_ms=VALIDITY_MS,
        clock=lambda: NOW_MS,
    )
    listener = HttpListener(
        app,
        host="127.0.0.1",
        port=0,
        ssl_context=server_ssl_context(certificate, private_key),
    )
    port = await nursery.start(listener.run)
    async with httpx.AsyncClient(
        base_url=f"https://localhost:{port}",
        verify=client_ssl_context(ca_file=certificate),
    ) as client:
        yield Served(app, lookup, listener, client, port, certificate, our_key, remote_key)
