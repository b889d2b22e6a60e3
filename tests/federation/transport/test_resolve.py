"""Server-name resolution, step by step as the spec orders it, against a real
HTTPS ``.well-known`` server on loopback and a DNS stand-in (plus a real
UDP DNS responder for the dnspython-backed resolver)."""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ranvier.federation.transport.resolve import (
    Endpoint,
    ServerNameResolutionError,
    ServerNameResolver,
    SrvRecord,
    SystemDnsResolver,
    parse_server_name,
)
from ranvier.testing import Canned, Pki, ZoneDns, serve
from ranvier.testing.hostile import deeply_nested

from .._servers import TEST_NAMES, DnsResponder, WellKnownApp

LOCAL = "127.0.0.1"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path, names=TEST_NAMES)


@pytest.fixture
async def well_known(nursery: trio.Nursery, pki: Pki) -> tuple[WellKnownApp, int]:
    app = WellKnownApp()
    port = await serve(nursery, app, pki.server_context())
    return app, port


@pytest.fixture
def zone() -> ZoneDns:
    dns = ZoneDns()
    for name in ("remote.test", "delegated.test", "srv-target.test", "old-srv-target.test"):
        dns.addresses[name] = [LOCAL]
    dns.addresses["loop-a.test"] = [LOCAL]
    dns.addresses["loop-b.test"] = [LOCAL]
    return dns


@pytest.fixture
async def resolver(
    zone: ZoneDns, pki: Pki, well_known: tuple[WellKnownApp, int]
) -> AsyncIterator[ServerNameResolver]:
    _, port = well_known
    async with ServerNameResolver(
        zone, ssl_context=pki.client_context(), well_known_port=port
    ) as resolver:
        yield resolver


def _srv_lookups(zone: ZoneDns) -> list[str]:
    return [name for kind, name in zone.lookups if kind == "SRV"]


# Parsing


@pytest.mark.parametrize(
    ("name", "host", "port"),
    [
        ("example.org", "example.org", None),
        ("example.org:8448", "example.org", 8448),
        ("1.2.3.4", "1.2.3.4", None),
        ("1.2.3.4:1", "1.2.3.4", 1),
        ("[::1]", "::1", None),
        ("[2001:db8::1]:65535", "2001:db8::1", 65535),
    ],
)
def test_parse_server_name(name: str, host: str, port: int | None) -> None:
    assert parse_server_name(name) == (host, port)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("exa mple.org", "characters not allowed"),
        ("example.org:", "not 1 to 5 digits"),
        ("example.org:0", "outside 1-65535"),
        ("example.org:70000", "outside 1-65535"),
        ("[::1", "never closes"),
        ("[nonsense]", "invalid IPv6"),
        ("[::1]x", "after its IPv6 address"),
    ],
)
def test_parse_server_name_refuses(name: str, problem: str) -> None:
    with pytest.raises(ServerNameResolutionError, match=problem):
        parse_server_name(name)


# Step 1: IP literals


@pytest.mark.parametrize(
    ("name", "endpoint", "host_header", "tls_name"),
    [
        ("127.0.0.1", Endpoint(LOCAL, 8448), "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:8443", Endpoint(LOCAL, 8443), "127.0.0.1:8443", "127.0.0.1"),
        ("[::1]", Endpoint("::1", 8448), "[::1]", "::1"),
        ("[::1]:9000", Endpoint("::1", 9000), "[::1]:9000", "::1"),
    ],
)
async def test_ip_literal_is_used_as_it_is(
    resolver: ServerNameResolver,
    zone: ZoneDns,
    well_known: tuple[WellKnownApp, int],
    name: str,
    endpoint: Endpoint,
    host_header: str,
    tls_name: str,
) -> None:
    resolved = await resolver.resolve(name)
    assert resolved.endpoints == (endpoint,)
    assert resolved.host_header == host_header
    assert resolved.tls_server_name == tls_name
    assert zone.lookups == []
    assert well_known[0].hits == []


# Step 2: explicit port


async def test_hostname_with_port_skips_delegation(
    resolver: ServerNameResolver, zone: ZoneDns, well_known: tuple[WellKnownApp, int]
) -> None:
    zone.addresses["remote.test"] = ["::1", LOCAL]
    resolved = await resolver.resolve("remote.test:8449")
    assert resolved.endpoints == (Endpoint("::1", 8449), Endpoint(LOCAL, 8449))
    assert resolved.host_header == "remote.test:8449"
    assert resolved.tls_server_name == "remote.test"
    assert zone.lookups == [("ADDR", "remote.test")]
    assert well_known[0].hits == []


# Step 3: .well-known delegation


@pytest.mark.parametrize(
    ("delegated", "srv", "endpoints", "host_header", "tls_name", "srv_lookups"),
    [
        # 3.1: an IP literal, with or without a port.
        ("127.0.0.1", {}, [Endpoint(LOCAL, 8448)], "127.0.0.1", "127.0.0.1", []),
        ("[::1]:9000", {}, [Endpoint("::1", 9000)], "[::1]:9000", "::1", []),
        # 3.2: a hostname with a port.
        (
            "delegated.test:1234",
            {},
            [Endpoint(LOCAL, 1234)],
            "delegated.test:1234",
            "delegated.test",
            [],
        ),
        # 3.3: _matrix-fed SRV of the delegated name.
        (
            "delegated.test",
            {"_matrix-fed._tcp.delegated.test": [SrvRecord(10, 0, 8500, "srv-target.test")]},
            [Endpoint(LOCAL, 8500)],
            "delegated.test",
            "delegated.test",
            ["_matrix-fed._tcp.delegated.test"],
        ),
        # 3.4: the deprecated _matrix SRV when there is no _matrix-fed.
        (
            "delegated.test",
            {"_matrix._tcp.delegated.test": [SrvRecord(10, 0, 8501, "old-srv-target.test")]},
            [Endpoint(LOCAL, 8501)],
            "delegated.test",
            "delegated.test",
            ["_matrix-fed._tcp.delegated.test", "_matrix._tcp.delegated.test"],
        ),
        # 3.5: no SRV at all: port 8448.
        (
            "delegated.test",
            {},
            [Endpoint(LOCAL, 8448)],
            "delegated.test",
            "delegated.test",
            ["_matrix-fed._tcp.delegated.test", "_matrix._tcp.delegated.test"],
        ),
    ],
)
async def test_well_known_delegation(
    resolver: ServerNameResolver,
    zone: ZoneDns,
    well_known: tuple[WellKnownApp, int],
    delegated: str,
    srv: dict[str, list[SrvRecord]],
    endpoints: list[Endpoint],
    host_header: str,
    tls_name: str,
    srv_lookups: list[str],
) -> None:
    app, _ = well_known
    app.answers["remote.test"] = Canned.json({"m.server": delegated})
    zone.srv.update(srv)
    # SRV of the original name must never be consulted once delegated.
    zone.srv["_matrix-fed._tcp.remote.test"] = [SrvRecord(0, 0, 1, "remote.test")]
    resolved = await resolver.resolve("remote.test")
    assert list(resolved.endpoints) == endpoints
    assert resolved.host_header == host_header
    assert resolved.tls_server_name == tls_name
    assert _srv_lookups(zone) == srv_lookups
    assert app.hits == ["remote.test"]


# Steps 4-6: no delegation


@pytest.mark.parametrize(
    ("srv", "endpoints", "srv_lookups"),
    [
        (
            {"_matrix-fed._tcp.remote.test": [SrvRecord(10, 0, 8600, "srv-target.test")]},
            [Endpoint(LOCAL, 8600)],
            ["_matrix-fed._tcp.remote.test"],
        ),
        (
            {"_matrix._tcp.remote.test": [SrvRecord(10, 0, 8601, "old-srv-target.test")]},
            [Endpoint(LOCAL, 8601)],
            ["_matrix-fed._tcp.remote.test", "_matrix._tcp.remote.test"],
        ),
        (
            {},
            [Endpoint(LOCAL, 8448)],
            ["_matrix-fed._tcp.remote.test", "_matrix._tcp.remote.test"],
        ),
    ],
)
async def test_without_well_known_srv_of_the_hostname(
    resolver: ServerNameResolver,
    zone: ZoneDns,
    well_known: tuple[WellKnownApp, int],
    srv: dict[str, list[SrvRecord]],
    endpoints: list[Endpoint],
    srv_lookups: list[str],
) -> None:
    zone.srv.update(srv)
    resolved = await resolver.resolve("remote.test")
    assert list(resolved.endpoints) == endpoints
    # Whatever SRV says, the certificate and Host are the server name's.
    assert resolved.host_header == "remote.test"
    assert resolved.tls_server_name == "remote.test"
    assert _srv_lookups(zone) == srv_lookups
    assert well_known[0].hits == ["remote.test"]


@pytest.mark.parametrize(
    "answer",
    [
        Canned(500, b'{"errcode":"M_UNKNOWN"}'),
        Canned(404, b"{}"),
        Canned(200, b"this is not json"),
        Canned(200, b"[]"),
        Canned.json({}),
        Canned.json({"m.server": 5}),
        Canned.json({"m.server": "bad name!"}),
        Canned.json({"m.server": "delegated.test:0"}),
        Canned(200, b'{"m.server": "delegated.test", "padding": "' + b"x" * 60_000 + b'"}'),
        Canned(200, b'{"m.server": "delegated.test", "x": ' + deeply_nested(900) + b"}"),
        Canned(200, deeply_nested(5_000)),
    ],
    ids=[
        "500",
        "404",
        "not-json",
        "not-object",
        "no-m.server",
        "m.server-not-string",
        "m.server-bad-name",
        "m.server-bad-port",
        "too-large",
        "nested-900-deep",
        "nested-5000-deep",
    ],
)
async def test_invalid_well_known_means_no_delegation(
    resolver: ServerNameResolver,
    zone: ZoneDns,
    well_known: tuple[WellKnownApp, int],
    answer: Canned,
) -> None:
    well_known[0].answers["remote.test"] = answer
    route = await resolver.route("remote.test")
    assert route.host_header == "remote.test"
    assert route.tls_server_name == "remote.test"
    assert route.connect_host == "remote.test"
    assert route.connect_port is None


async def test_redirects_are_followed(
    resolver: ServerNameResolver, well_known: tuple[WellKnownApp, int]
) -> None:
    app, port = well_known
    app.answers["remote.test"] = Canned(
        302,
        b"",
        (("location", f"https://delegated.test:{port}/.well-known/matrix/server"),),
    )
    app.answers["delegated.test"] = Canned.json({"m.server": "srv-target.test:4443"})
    route = await resolver.route("remote.test")
    assert route.host_header == "srv-target.test:4443"
    assert app.hits == ["remote.test", "delegated.test"]


async def test_redirect_loops_end_as_no_delegation(
    resolver: ServerNameResolver, well_known: tuple[WellKnownApp, int]
) -> None:
    app, port = well_known
    for here, there in (("loop-a.test", "loop-b.test"), ("loop-b.test", "loop-a.test")):
        app.answers[here] = Canned(
            301, b"", (("location", f"https://{there}:{port}/.well-known/matrix/server"),)
        )
    route = await resolver.route("loop-a.test")
    assert route.host_header == "loop-a.test"
    assert route.connect_port is None
    # The redirect limit stopped it: a handful of hops, not an endless loop.
    assert 2 <= len(app.hits) <= 7


async def test_well_known_certificate_must_match(
    zone: ZoneDns, pki: Pki, nursery: trio.Nursery
) -> None:
    """A .well-known server whose certificate is for another name is not
    believed: resolution carries on as if there were no delegation."""
    app = WellKnownApp()
    app.answers["remote.test"] = Canned.json({"m.server": "delegated.test:1234"})
    port = await serve(nursery, app, pki.server_context("other.test"))
    async with ServerNameResolver(
        zone, ssl_context=pki.client_context(), well_known_port=port
    ) as resolver:
        route = await resolver.route("remote.test")
    assert route.host_header == "remote.test"
    assert app.hits == []


async def test_concurrent_lookups_share_one_fetch(
    resolver: ServerNameResolver, well_known: tuple[WellKnownApp, int]
) -> None:
    app, _ = well_known
    app.answers["remote.test"] = Canned.json({"m.server": "delegated.test:1234"})
    routes = []

    async def one() -> None:
        routes.append(await resolver.route("remote.test"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert {route.host_header for route in routes} == {"delegated.test:1234"}
    assert app.hits == ["remote.test"]


# Caching


def _http_date(seconds_from_now: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)
    return email.utils.format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "ttl"),
    [
        ({}, 24 * 3600),
        ({"cache-control": "public, max-age=7200"}, 7200),
        ({"cache-control": "max-age=10"}, 300),
        ({"cache-control": "max-age=999999"}, 48 * 3600),
        ({"cache-control": "no-store"}, 300),
        ({"expires": "EXPIRES+3600"}, 3600),
        ({"expires": "not a date"}, 300),
    ],
    ids=["default", "max-age", "floor", "ceiling", "no-store", "expires", "bad-expires"],
)
async def test_well_known_cache_time(
    resolver: ServerNameResolver,
    well_known: tuple[WellKnownApp, int],
    mock_clock: trio.testing.MockClock,
    headers: dict[str, str],
    ttl: int,
) -> None:
    app, _ = well_known
    if headers.get("expires") == "EXPIRES+3600":
        headers = {"expires": _http_date(3600)}
    app.answers["remote.test"] = Canned.json({"m.server": "delegated.test:1234"}, headers=headers)
    await resolver.route("remote.test")
    # Expires is compared with the wall clock's Date; allow it a few seconds.
    mock_clock.jump(ttl - 5)
    await resolver.route("remote.test")
    assert len(app.hits) == 1
    mock_clock.jump(10)
    assert (await resolver.route("remote.test")).host_header == "delegated.test:1234"
    assert len(app.hits) == 2


async def test_failures_are_cached_with_growing_backoff(
    resolver: ServerNameResolver,
    well_known: tuple[WellKnownApp, int],
    mock_clock: trio.testing.MockClock,
) -> None:
    app, _ = well_known
    app.answers["remote.test"] = Canned(500, b"{}")
    await resolver.route("remote.test")
    for ttl, hits in ((300, 2), (600, 3), (1200, 4), (2400, 5), (3600, 6), (3600, 7)):
        mock_clock.jump(ttl - 1)
        await resolver.route("remote.test")
        assert len(app.hits) == hits - 1
        mock_clock.jump(2)
        await resolver.route("remote.test")
        assert len(app.hits) == hits
    # A success resets the backoff and is cached as its headers say.
    app.answers["remote.test"] = Canned.json({"m.server": "delegated.test:1"})
    mock_clock.jump(3601)
    assert (await resolver.route("remote.test")).host_header == "delegated.test:1"


async def test_failing_server_keeps_its_last_delegation(
    resolver: ServerNameResolver,
    well_known: tuple[WellKnownApp, int],
    mock_clock: trio.testing.MockClock,
) -> None:
    app, _ = well_known
    app.answers["remote.test"] = Canned.json(
        {"m.server": "delegated.test:1234"}, headers={"cache-control": "max-age=600"}
    )
    assert (await resolver.route("remote.test")).host_header == "delegated.test:1234"
    # Its web server fails for a while: the delegation it gave stands.
    app.answers["remote.test"] = Canned(503, b"")
    mock_clock.jump(601)
    assert (await resolver.route("remote.test")).host_header == "delegated.test:1234"
    assert len(app.hits) == 2
    # A server that answers that it delegates nowhere is believed.
    app.answers["remote.test"] = Canned(404, b"{}")
    mock_clock.jump(301)
    assert (await resolver.route("remote.test")).host_header == "remote.test"
    assert len(app.hits) == 3


# The DNS half


async def test_srv_priorities_and_targets_without_addresses(
    resolver: ServerNameResolver, zone: ZoneDns
) -> None:
    zone.srv["_matrix-fed._tcp.remote.test"] = [
        SrvRecord(20, 0, 2000, "srv-target.test"),
        SrvRecord(5, 0, 1000, "nowhere.test"),
        SrvRecord(10, 0, 3000, "old-srv-target.test"),
    ]
    zone.addresses["old-srv-target.test"] = ["::1"]
    resolved = await resolver.resolve("remote.test")
    assert resolved.endpoints == (Endpoint("::1", 3000), Endpoint(LOCAL, 2000))


async def test_srv_weights_spread_load(resolver: ServerNameResolver, zone: ZoneDns) -> None:
    zone.srv["_matrix-fed._tcp.remote.test"] = [
        SrvRecord(10, 1, 1000, "srv-target.test"),
        SrvRecord(10, 99, 2000, "old-srv-target.test"),
    ]
    firsts = [(await resolver.resolve("remote.test")).endpoints[0].port for _ in range(200)]
    assert firsts.count(2000) > firsts.count(1000)
    assert set(firsts) <= {1000, 2000}


async def test_srv_saying_no_service(resolver: ServerNameResolver, zone: ZoneDns) -> None:
    zone.srv["_matrix-fed._tcp.remote.test"] = [SrvRecord(0, 0, 0, ".")]
    with pytest.raises(ServerNameResolutionError, match="not offered"):
        await resolver.resolve("remote.test")


async def test_dns_failure_is_not_taken_for_no_records(
    resolver: ServerNameResolver, zone: ZoneDns
) -> None:
    zone.failing.add("_matrix-fed._tcp.remote.test")
    with pytest.raises(ServerNameResolutionError, match="SERVFAIL"):
        await resolver.resolve("remote.test")


@pytest.mark.parametrize("name", ["nowhere.test", "nowhere.test:8448"])
async def test_no_address_at_all(resolver: ServerNameResolver, name: str) -> None:
    with pytest.raises(ServerNameResolutionError, match="no AAAA or A records"):
        await resolver.resolve(name)


async def test_no_srv_target_with_an_address(resolver: ServerNameResolver, zone: ZoneDns) -> None:
    zone.srv["_matrix-fed._tcp.remote.test"] = [SrvRecord(0, 0, 1, "nowhere.test")]
    with pytest.raises(ServerNameResolutionError, match="no SRV target"):
        await resolver.resolve("remote.test")


# SystemDnsResolver, against a real DNS server on UDP


@pytest.fixture
async def responder(nursery: trio.Nursery) -> tuple[DnsResponder, SystemDnsResolver]:
    responder = DnsResponder()
    port = await nursery.start(responder.run)
    return responder, SystemDnsResolver(nameservers=[LOCAL], port=port, timeout=2.0)


async def test_system_resolver_srv_and_addresses(
    responder: tuple[DnsResponder, SystemDnsResolver],
) -> None:
    server, dns = responder
    server.records[("_matrix-fed._tcp.remote.test", "SRV")] = [
        "10 5 8448 srv-target.test.",
        "20 0 443 old-srv-target.test.",
    ]
    server.records[("srv-target.test", "A")] = ["127.0.0.1"]
    server.records[("srv-target.test", "AAAA")] = ["::1"]
    records = await dns.lookup_srv("_matrix-fed._tcp.remote.test")
    assert sorted(records, key=lambda r: r.priority) == [
        SrvRecord(10, 5, 8448, "srv-target.test"),
        SrvRecord(20, 0, 443, "old-srv-target.test"),
    ]
    assert list(await dns.lookup_addresses("srv-target.test")) == ["::1", "127.0.0.1"]


async def test_system_resolver_absent_and_failing_names(
    responder: tuple[DnsResponder, SystemDnsResolver],
) -> None:
    server, dns = responder
    server.records[("remote.test", "A")] = ["127.0.0.1"]
    server.servfail.add("broken.test")
    assert list(await dns.lookup_srv("_matrix-fed._tcp.nowhere.test")) == []  # NXDOMAIN
    assert list(await dns.lookup_srv("remote.test")) == []  # the name exists, no SRV
    with pytest.raises(ServerNameResolutionError, match="SRV lookup failed"):
        await dns.lookup_srv("broken.test")
    with pytest.raises(ServerNameResolutionError, match="lookup failed"):
        await dns.lookup_addresses("broken.test")


async def test_resolution_through_real_dns(
    responder: tuple[DnsResponder, SystemDnsResolver],
    pki: Pki,
    well_known: tuple[WellKnownApp, int],
) -> None:
    server, dns = responder
    _, port = well_known
    server.records[("remote.test", "A")] = ["127.0.0.1"]
    server.records[("_matrix._tcp.remote.test", "SRV")] = ["0 0 9999 srv-target.test."]
    server.records[("srv-target.test", "A")] = ["127.0.0.2"]
    async with ServerNameResolver(
        dns, ssl_context=pki.client_context(), well_known_port=port
    ) as resolver:
        resolved = await resolver.resolve("remote.test")
    assert resolved.endpoints == (Endpoint("127.0.0.2", 9999),)
    assert resolved.host_header == "remote.test"
    assert ("_matrix-fed._tcp.remote.test", "SRV") in server.queries


async def test_system_resolver_uses_the_system_for_addresses() -> None:
    dns = SystemDnsResolver()
    assert LOCAL in await dns.lookup_addresses("127.0.0.1")
    assert set(await dns.lookup_addresses("localhost")) & {LOCAL, "::1"}
