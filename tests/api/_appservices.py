"""A server with an application service registered, for the API tests of
application services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client

from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki

AS_TOKEN = "as-token-bridge"
HS_TOKEN = "hs-token-bridge"


def registration_yaml(
    url: str | None, *, rate_limited: bool = True, service_id: str = "bridge"
) -> str:
    """A bridge owning ``@_br_*`` and ``#_br_*`` exclusively, and rooms ``!bridged*``."""
    return f"""\
id: {service_id}
url: {"null" if url is None else f'"{url}"'}
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: _br_bot
rate_limited: {"true" if rate_limited else "false"}
namespaces:
  users:
    - exclusive: true
      regex: "@_br_.*"
  aliases:
    - exclusive: true
      regex: "#_br_.*"
  rooms:
    - exclusive: false
      regex: "!bridged.*"
"""


@dataclass
class WithService:
    hs: TestHomeserver
    client: Client
    alice: TestUser

    @property
    def sender(self) -> str:
        return f"@_br_bot:{self.hs.server_name}"

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.hs.server_name}"

    async def as_call(
        self, method: str, path: str, body: Any = None, *, user_id: str | None = None
    ) -> tuple[int, Any]:
        """A request with the service's token, as ``user_id`` if given."""
        params = None if user_id is None else {"user_id": user_id}
        return await self.client.call(None, method, path, body, token=AS_TOKEN, params=params)

    async def as_ok(
        self, method: str, path: str, body: Any = None, *, user_id: str | None = None
    ) -> Any:
        status, answer = await self.as_call(method, path, body, user_id=user_id)
        assert status == 200, (method, path, status, answer)
        return answer

    async def register(self, localpart: str) -> str:
        answer = await self.as_ok(
            "POST",
            "/register",
            {"type": "m.login.application_service", "username": localpart, "inhibit_login": True},
        )
        user_id: str = answer["user_id"]
        return user_id


@asynccontextmanager
async def open_with_service(
    tmp_path: Path,
    *,
    url: str | None = None,
    rate_limited: bool = True,
    rate_limits: bool = False,
    registration_open: bool = True,
    **replace: Any,
) -> AsyncIterator[WithService]:
    """A server under ``tmp_path`` with the bridge registered (calling ``url``)."""
    registration = tmp_path / "bridge.yaml"
    await trio.Path(tmp_path).mkdir(parents=True, exist_ok=True)
    await trio.Path(registration).write_text(
        registration_yaml(url, rate_limited=rate_limited), encoding="utf-8"
    )
    config = config_for_tests(tmp_path / "hs", rate_limits=rate_limits)
    config = msgspec.structs.replace(
        config,
        app_service_config_files=(registration,),
        registration=msgspec.structs.replace(config.registration, enabled=registration_open),
        **replace,
    )
    async with (
        open_test_homeserver(tmp_path / "hs", config=config) as hs,
        hs.client(timeout=30) as http,
    ):
        yield WithService(hs, Client(hs, http), await hs.register_user("alice"))


@asynccontextmanager
async def open_with_service_and_peer(
    tmp_path: Path, *, url: str | None = None
) -> AsyncIterator[tuple[WithService, TestHomeserver, Client]]:
    """Server A with the bridge registered (calling ``url``) and Alice, and
    server B with a client, the two federating over loopback TLS."""
    pki = Pki.create(tmp_path)
    registration = tmp_path / "bridge.yaml"
    await trio.Path(registration).write_text(registration_yaml(url), encoding="utf-8")
    config = msgspec.structs.replace(
        config_for_tests(tmp_path / "a", federation=pki),
        app_service_config_files=(registration,),
    )
    async with (
        open_test_homeserver(tmp_path / "a", config=config) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        a.client() as http_a,
        b.client() as http_b,
    ):
        env = WithService(a, Client(a, http_a), await a.register_user("alice"))
        yield env, b, Client(b, http_b)


def config_with_registration(tmp_path: Path, url: str, extra: str = "") -> Any:
    """A test server's configuration with the bridge registered (calling
    ``url``), ``extra`` added to its registration's YAML."""
    registration = tmp_path / "bridge.yaml"
    registration.write_text(registration_yaml(url) + extra, encoding="utf-8")
    return msgspec.structs.replace(
        config_for_tests(tmp_path / "hs"), app_service_config_files=(registration,)
    )


@asynccontextmanager
async def serving(
    tmp_path: Path, config: Any, alice: TestUser | None = None
) -> AsyncIterator[WithService]:
    """A server of ``config`` under ``tmp_path``; ``alice`` is registered
    unless given (as she was before a restart)."""
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        user = alice if alice is not None else await hs.register_user("alice")
        yield WithService(hs, Client(hs, http), user)
