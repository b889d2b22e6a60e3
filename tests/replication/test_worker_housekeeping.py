"""Housekeeping runs in the main process alone: a worker, which writes
through the main process, starts no housekeeping task of its own."""

from __future__ import annotations

from pathlib import Path

from _worker_configs import main_and_worker_configs

from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import open_test_homeserver


async def test_the_main_process_runs_housekeeping_and_a_worker_does_not(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        await main.server.housekeeping.wait_for_pass(1)
        main_parts = [component.name for component in main.server._components()]
        async with open_worker(worker_config, "client_reader") as worker:
            worker_parts = [component.name for component in worker._components()]

    assert "housekeeping" in main_parts
    assert "housekeeping" not in worker_parts
    assert "storage" in worker_parts
