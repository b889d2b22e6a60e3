"""A HomeServer with a replication listener takes a worker's writes."""

from __future__ import annotations

from pathlib import Path

import msgspec
import trio
from _replication import SECRET, worker_client

from ranvier.config import ListenerConfig, ReplicationConfig
from ranvier.replication.client import RemoteWriter
from ranvier.storage import Storage
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver


async def test_the_main_homeserver_runs_a_workers_writes(tmp_path: Path) -> None:
    config = config_for_tests(tmp_path / "main")
    config = msgspec.structs.replace(
        config,
        listeners=(*config.listeners, ListenerConfig(type="replication", port=0)),
        replication=ReplicationConfig(shared_secret=SECRET),
    )
    async with open_test_homeserver(tmp_path / "main", config=config) as hs:
        (bound,) = [b for b in hs.server.listeners if b.config.type == "replication"]
        assert bound.url.startswith("http://127.0.0.1:")
        client = worker_client(bound.url)
        worker = Storage(config.paths.database, writer=RemoteWriter(client))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await worker.store_room("!r:localhost", "10")
            assert await worker.aliases.create_alias("#a:localhost", "!r:localhost", "@u:x", 1)
            nursery.cancel_scope.cancel()
        assert await hs.server.storage.get_room_version("!r:localhost") == "10"
        assert await hs.server.storage.aliases.get_alias("#a:localhost") == (
            "!r:localhost",
            "@u:x",
        )
