"""A federation_reader worker holds other servers to the same per-origin
limits as the main process: it builds the same FederationApp."""

from __future__ import annotations

from pathlib import Path

import msgspec
from _worker_configs import main_and_worker_configs

from ranvier.config import FederationRateConfig, RateLimitConfig
from ranvier.replication.worker import open_worker
from ranvier.testing import Pki
from ranvier.testing.homeserver import open_test_homeserver


async def test_a_federation_reader_counts_each_origins_requests(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    main_config, worker_config = main_and_worker_configs(tmp_path, pki=pki)
    federation = next(item for item in main_config.listeners if item.type == "federation")
    main_config = msgspec.structs.replace(
        main_config,
        listeners=tuple(item for item in main_config.listeners if item is not federation),
    )
    # A window of an hour keeps the remote's state for the assertion below;
    # a high sleep limit keeps its requests undelayed.
    limits = RateLimitConfig(
        federation=FederationRateConfig(window_size=3_600_000, sleep_limit=10_000)
    )
    worker_config = msgspec.structs.replace(
        worker_config, listeners=(federation,), ratelimit=limits
    )
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(worker_config, "federation_reader") as worker,
    ):
        assert main.server.federation_app.rate_limiter is None  # the tests' settings
        limiter = worker.federation_app.rate_limiter
        assert limiter is not None
        alice = await main.register_user("alice")
        carol = await remote.register_user("carol")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        # make_join and send_join reach the worker, signed by the remote.
        await remote.server.join_room(carol.user_id, room_id, [main.server_name])
        assert limiter._origins.keys() == {remote.server_name}
        assert limiter._origins[remote.server_name].in_flight == 0
        assert (limiter.delayed, limiter.rejected) == (0, 0)
