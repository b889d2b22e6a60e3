"""A server with three application services on loopback, for the tests of
third-party lookups and of the networks' room lists: ``a`` bridges irc,
``b`` irc and gitter, ``c`` nothing; a fourth, ``silent``, has no URL and
declares irc and xmpp."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client

from ranvier.testing.appservice import FakeAppService
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)

Answer = Callable[[str, list[tuple[str, str]]], Awaitable[tuple[int, Any]]]


def answers(table: dict[str, tuple[int, Any]]) -> Answer:
    """A service answering each path of ``table``, 404 for others."""

    async def answer(path: str, query: list[tuple[str, str]]) -> tuple[int, Any]:
        return table.get(path, (404, {"errcode": "M_NOT_FOUND", "error": "none"}))

    return answer


def registration(service_id: str, url: str | None, protocols: list[str]) -> str:
    """A registration whose tokens are ``as-<id>`` and ``hs-<id>``, owning
    the users ``@_<id>_*`` exclusively."""
    # JSON is YAML.
    return msgspec.json.encode(
        {
            "id": service_id,
            "url": url,
            "as_token": f"as-{service_id}",
            "hs_token": f"hs-{service_id}",
            "sender_localpart": f"_{service_id}_bot",
            "namespaces": {"users": [{"exclusive": True, "regex": f"@_{service_id}_.*"}]},
            "protocols": protocols,
        }
    ).decode()


@dataclass
class Bridges:
    hs: TestHomeserver
    client: Client
    alice: TestUser
    a: FakeAppService
    b: FakeAppService
    c: FakeAppService


@asynccontextmanager
async def open_bridges(
    tmp_path: Path, a: Answer | None = None, b: Answer | None = None
) -> AsyncIterator[Bridges]:
    """The server under ``tmp_path``, ``a`` and ``b`` answering their
    services' third-party lookups (404 to every one without)."""
    services = {
        "a": FakeAppService(hs_token="hs-a", on_third_party=a or answers({})),
        "b": FakeAppService(hs_token="hs-b", on_third_party=b or answers({})),
        "c": FakeAppService(hs_token="hs-c", on_third_party=answers({})),
    }
    protocols = {"a": ["irc"], "b": ["irc", "gitter"], "c": []}
    await trio.Path(tmp_path).mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        files = []
        for service_id, service in services.items():
            url = await service.start(nursery)
            path = tmp_path / f"{service_id}.yaml"
            path.write_text(registration(service_id, url, protocols[service_id]))
            files.append(path)
        # A service with no URL declares protocols it cannot be asked about.
        silent = tmp_path / "silent.yaml"
        silent.write_text(registration("silent", None, ["irc", "xmpp"]))
        files.append(silent)
        config = msgspec.structs.replace(
            config_for_tests(tmp_path / "hs"), app_service_config_files=tuple(files)
        )
        async with (
            open_test_homeserver(tmp_path / "hs", config=config) as hs,
            hs.client(timeout=30) as http,
        ):
            client = Client(hs, http)
            yield Bridges(hs, client, await hs.register_user("alice"), *services.values())
        nursery.cancel_scope.cancel()
