"""A resident server for join tests: real storage and the membership
routes (make_join, send_join, ...) over HTTPS on loopback, with an event
creator for its own users."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ranvier.core.creation import EventCreator
from ranvier.federation.membership import add_membership_routes
from ranvier.federation.transport.server import FederationApp
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import NOW_MS, KnownKeys, Pki, serve, ticking_clock
from ranvier.web import Router


@dataclass
class Resident:
    """The resident: its name (``127.0.0.1:<port>``), key, storage, app and creator."""

    name: str
    key: SigningKey
    storage: Storage
    app: FederationApp
    creator: EventCreator


async def start_resident(
    nursery: trio.Nursery,
    tmp_path: Path,
    pki: Pki,
    keys: KnownKeys,
    *,
    routes: Callable[[Router], Any] = lambda router: router,
) -> Resident:
    """Start a resident serving on loopback with a certificate from ``pki``;
    its key is added to ``keys``, which it trusts for others' requests.
    ``routes`` wraps the router the membership routes are added to (a test
    that alters the resident's answers passes its own)."""
    key = generate_signing_key("a1")
    storage = Storage(tmp_path / "resident.db", synchronous="NORMAL")
    await nursery.start(storage.run)
    app = FederationApp(server_name="127.0.0.1", key_lookup=keys)
    port = await serve(nursery, app, pki.server_context())
    name = app.server_name = f"127.0.0.1:{port}"
    keys.add(name, key)
    clock = ticking_clock(NOW_MS)
    add_membership_routes(
        routes(app.router),
        server_name=name,
        signing_key=key,
        store=storage,
        persister=storage,
        keys=keys,
        clock=clock,
    )
    creator = EventCreator(
        server_name=name, signing_key=key, store=storage, persister=storage, clock=clock
    )
    return Resident(name, key, storage, app, creator)
