"""A resident server on real HTTPS, for the tests of the routes other
servers call: the federation app with whatever routes a test adds, its own
storage and key. The servers calling it are
:class:`ranvier.testing.RemoteHomeserver` clients (:func:`open_peer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from ranvier.federation.transport.server import FederationApp
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import KnownKeys, Pki, RemoteHomeserver, ZoneDns, serve


@dataclass
class Resident:
    """A federation server on HTTPS: its name (``a.test:<port>``), app, storage and key."""

    server_name: str
    app: FederationApp
    storage: Storage
    signing_key: SigningKey
    keys: KnownKeys


async def start_resident(
    nursery: trio.Nursery, tmp_path: Path, pki: Pki, keys: KnownKeys, host: str = "a.test"
) -> Resident:
    """A server on loopback whose name is ``host:<port>``; add routes to its app."""
    storage = Storage(tmp_path / f"{host}.db", synchronous="NORMAL")
    await nursery.start(storage.run)
    app = FederationApp(server_name=host, key_lookup=keys)
    port = await serve(nursery, app, pki.server_context(host))
    server_name = f"{host}:{port}"
    app.server_name = server_name
    signing_key = generate_signing_key("a1")
    keys.add(server_name, signing_key)
    return Resident(server_name, app, storage, signing_key, keys)


async def open_peer(
    nursery: trio.Nursery, pki: Pki, zone: ZoneDns, keys: KnownKeys, server_name: str
) -> RemoteHomeserver:
    """A server that only sends requests; its key is known to ``keys``."""
    peer = RemoteHomeserver(server_name, signing_key=generate_signing_key("p1"))
    keys.add(server_name, peer.signing_key)
    await peer.open_client(nursery, pki.client_context(), zone)
    return peer
