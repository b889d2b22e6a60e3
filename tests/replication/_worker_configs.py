"""A main process's config and an in-process worker's beside it, and both
running, shared by the tests that run both in the test's own process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ranvier.config import Config, ListenerConfig, ReplicationConfig, WorkerConfig
from ranvier.replication.worker import WorkerServer, open_worker
from ranvier.testing import Pki, free_port
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)

SECRET = "a worker's secret"


def main_process_config(
    directory: Path, *, replication_port: int, pki: Pki | None = None, **changes: Any
) -> Config:
    """The tests' defaults with a replication listener on
    ``replication_port``, then ``changes``."""
    config = config_for_tests(directory, federation=pki)
    return msgspec.structs.replace(
        config,
        listeners=(*config.listeners, ListenerConfig(type="replication", port=replication_port)),
        replication=ReplicationConfig(shared_secret=SECRET, retry_for_seconds=30),
        **changes,
    )


def worker_process_config(main: Config, directory: Path, *, replication_port: int) -> Config:
    """A client_reader worker of ``main``: its database and signing key,
    a client listener, the main process's replication listener."""
    return msgspec.structs.replace(
        main,
        data_dir=directory,
        signing_key_path=main.paths.signing_key,
        database=msgspec.structs.replace(main.database, path=main.paths.database),
        listeners=(ListenerConfig(type="client", port=0),),
        worker=WorkerConfig(main_replication_url=f"http://127.0.0.1:{replication_port}"),
    )


def main_and_worker_configs(
    tmp_path: Path, *, pki: Pki | None = None, **main_changes: Any
) -> tuple[Config, Config]:
    """:func:`main_process_config` and :func:`worker_process_config` under ``tmp_path``, on
    a free port."""
    port = free_port()
    main = main_process_config(tmp_path / "main", replication_port=port, pki=pki, **main_changes)
    return main, worker_process_config(main, tmp_path / "worker", replication_port=port)


@dataclass
class BothProcesses:
    """A main process and a client_reader worker beside it, with Alice, a
    user of the main process, and her client of each."""

    main: TestHomeserver
    worker: WorkerServer
    alice: TestUser
    on_worker: httpx.AsyncClient
    on_main: httpx.AsyncClient


@asynccontextmanager
async def alice_on_both(tmp_path: Path, **main_changes: Any) -> AsyncIterator[BothProcesses]:
    """Both processes of :func:`main_and_worker_configs` running, and Alice's clients."""
    main_config, worker_config = main_and_worker_configs(tmp_path, **main_changes)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(alice) as on_worker,
            main.client(alice) as on_main,
        ):
            yield BothProcesses(main, worker, alice, on_worker, on_main)
