"""Pki, ZoneDns, serve and free_port: HTTPS on loopback under made-up names."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from ranvier.federation.transport.resolve import ServerNameResolutionError, SrvRecord
from ranvier.federation.transport.routes import add_version_route
from ranvier.federation.transport.server import FederationApp
from ranvier.testing import KnownKeys, Pki, ZoneDns, free_port, serve
from ranvier.testing.network import _ephemeral_ports

VERSION = "/_matrix/federation/v1/version"


async def _serve_version(nursery: trio.Nursery, pki: Pki, *names: str) -> int:
    app = FederationApp(server_name="test", key_lookup=KnownKeys())
    add_version_route(app.router)
    return await serve(nursery, app, pki.server_context(*names))


async def test_a_server_is_trusted_for_its_names_by_clients_of_the_ca(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    assert pki.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    port = await _serve_version(nursery, pki)
    async with httpx.AsyncClient(verify=pki.client_context()) as http:
        answer = await http.get(f"https://127.0.0.1:{port}{VERSION}")
        assert answer.json()["server"]["name"] == "ranvier"
        elsewhere = await _serve_version(nursery, pki, "remote.test")
        with pytest.raises(httpx.ConnectError):
            await http.get(f"https://127.0.0.1:{elsewhere}{VERSION}")
    (tmp_path / "other").mkdir()
    other_ca = Pki.create(tmp_path / "other", names=("127.0.0.1",))
    async with httpx.AsyncClient(verify=other_ca.client_context()) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"https://127.0.0.1:{port}{VERSION}")


async def test_zone_answers_from_its_records_and_notes_each_lookup() -> None:
    zone = ZoneDns.loopback("a.test")
    zone.srv["_matrix-fed._tcp.b.test"] = [SrvRecord(10, 5, 8448, "a.test")]
    zone.failing.add("broken.test")
    assert await zone.lookup_addresses("a.test") == ["127.0.0.1"]
    assert await zone.lookup_addresses("nowhere.test") == []
    assert await zone.lookup_srv("_matrix-fed._tcp.b.test") == [SrvRecord(10, 5, 8448, "a.test")]
    with pytest.raises(ServerNameResolutionError, match="SERVFAIL"):
        await zone.lookup_srv("broken.test")
    assert zone.lookups == [
        ("ADDR", "a.test"),
        ("ADDR", "nowhere.test"),
        ("SRV", "_matrix-fed._tcp.b.test"),
        ("SRV", "broken.test"),
    ]


async def test_nothing_listens_on_a_free_port() -> None:
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", free_port())


def test_free_ports_are_never_handed_out_twice_nor_given_by_the_system() -> None:
    # Drawn by the system alone, 3,000 ports out of its some 14,000 would
    # hold hundreds of repeats.
    ports = [free_port() for _ in range(3_000)]
    assert len(set(ports)) == len(ports)
    # Below the ports the system gives servers on port 0 and outgoing
    # connections (where there is room below them, as Linux's default has).
    low, _ = _ephemeral_ports()
    assert low > 20_000
    assert max(ports) < low
