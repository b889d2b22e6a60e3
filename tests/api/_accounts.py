"""Accounts over a real database, called through the client API's ASGI app
in process, and a started homeserver with only a client listener: the set-ups
the account, admin and access token tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import argon2
import httpx
import trio

from ranvier.api.app import ClientApp
from ranvier.config import (
    Config,
    DatabaseConfig,
    ListenerConfig,
    RateLimitConfig,
    RegistrationConfig,
)
from ranvier.core.accounts import Accounts
from ranvier.storage import Storage
from ranvier.web import Router

#: Password hashing cheap enough for tests that register many users.
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


async def start_accounts(db_path: Path, nursery: trio.Nursery) -> Accounts:
    """Accounts of ``example.org`` over storage at ``db_path``, run in ``nursery``."""
    storage = Storage(db_path, synchronous="OFF")
    await nursery.start(storage.run)
    return Accounts(server_name="example.org", store=storage.accounts, password_hasher=CHEAP)


def app_client(router: Router) -> httpx.AsyncClient:
    """An HTTP client of a :class:`ClientApp` serving ``router``, in process."""
    app = ClientApp(router=router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hs")


def client_only_config(data_dir: Path, **registration: Any) -> Config:
    """``hs.test`` with a client listener on a free port, no rate limits, and
    ``registration`` as its :class:`RegistrationConfig`."""
    return Config(
        server_name="hs.test",
        data_dir=data_dir,
        listeners=(ListenerConfig(type="client", host="127.0.0.1", port=0),),
        database=DatabaseConfig(synchronous="OFF"),
        ratelimit=RateLimitConfig(enabled=False),
        registration=RegistrationConfig(**registration),
    )
