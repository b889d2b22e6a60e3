"""The replication listener over TLS, for a worker on another machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _replication import SECRET

from ranvier.errors import StorageUnavailableError
from ranvier.replication.client import RemoteWriter, ReplicationClient
from ranvier.replication.server import ReplicationApp
from ranvier.storage import Storage
from ranvier.testing.network import Pki, serve


async def test_a_worker_writes_over_tls_and_checks_the_certificate(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    db = tmp_path / "db.sqlite"
    main = Storage(db, synchronous="OFF")
    await nursery.start(main.run)
    pki = Pki.create(tmp_path)
    port = await serve(nursery, ReplicationApp(main, shared_secret=SECRET), pki.server_context())

    client = ReplicationClient(
        f"https://127.0.0.1:{port}", shared_secret=SECRET, verify=pki.client_context()
    )
    worker = Storage(db, writer=RemoteWriter(client))
    await nursery.start(worker.run)
    await worker.store_room("!tls:x", "10")
    assert await main.get_room_version("!tls:x") == "10"

    # A worker that does not trust the certificate sends nothing.
    untrusting = ReplicationClient(
        f"https://127.0.0.1:{port}", shared_secret=SECRET, retry_for_seconds=0.2
    )
    stranger = Storage(db, writer=RemoteWriter(untrusting))
    await nursery.start(stranger.run)
    with pytest.raises(StorageUnavailableError, match="did not take a write"):
        await stranger.store_room("!untrusted:x", "10")
    assert await main.get_room_version("!untrusted:x") is None
