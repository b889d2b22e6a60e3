from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _replication import SECRET, Main, Worker, worker_client

from ranvier.federation.transport.listener import HttpListener
from ranvier.replication.client import RemoteWriter
from ranvier.replication.server import ReplicationApp
from ranvier.storage import Storage


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ranvier.db"


@pytest.fixture
async def main(db_path: Path, nursery: trio.Nursery) -> Main:
    storage = Storage(db_path, synchronous="NORMAL")
    await nursery.start(storage.run)
    app = ReplicationApp(storage, shared_secret=SECRET)
    listener = HttpListener(app, host="127.0.0.1", port=0, ssl_context=None)
    port = await nursery.start(listener.run)
    return Main(storage, app, f"http://127.0.0.1:{port}")


@pytest.fixture
async def worker(main: Main, db_path: Path, nursery: trio.Nursery) -> Worker:
    client = worker_client(main.url)
    storage = Storage(db_path, writer=RemoteWriter(client))
    await nursery.start(storage.run)
    return Worker(client, storage)
