"""Housekeeping runs in the main process alone: a worker, which writes
through the main process, starts no housekeeping task of its own."""

from __future__ import annotations

from pathlib import Path

import msgspec
from _worker_configs import main_and_worker_configs

from ranvier.config import HousekeepingConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import open_test_homeserver


async def test_the_main_process_runs_housekeeping_and_a_worker_does_not(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    # Test homeservers run without it; this one runs it as a server would.
    main_config = msgspec.structs.replace(main_config, housekeeping=HousekeepingConfig())
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        await main.server.housekeeping.wait_for_pass(1)
        main_parts = [component.name for component in main.server._components()]
        async with open_worker(worker_config, "client_reader") as worker:
            worker_parts = [component.name for component in worker._components()]

    assert "housekeeping" in main_parts
    assert "housekeeping" not in worker_parts
    assert "storage" in worker_parts


async def test_turned_off_the_main_process_starts_no_task(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        parts = [component.name for component in hs.server._components()]
        passes = hs.server.housekeeping.passes

    assert not hs.server.config.housekeeping.enabled
    assert "housekeeping" not in parts
    assert "media retention" in parts
    assert passes == 0
