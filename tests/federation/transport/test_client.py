"""The signed federation client against the real federation server app over
HTTPS on loopback: signatures it accepts, where requests go, how failures
are told apart, trying servers in turn, and the client's lifecycle."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio

from ranvier.config import Config
from ranvier.errors import BadJsonError
from ranvier.federation.transport.client import (
    FederationConnectionError,
    FederationError,
    FederationHttpClient,
    FederationRequestError,
    FederationResponseError,
    FederationTimeoutError,
    NoDestinationAnsweredError,
)
from ranvier.federation.transport.resolve import ServerNameResolver
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.protocol.untrusted_json import MAX_JSON_NESTING
from ranvier.testing import Canned, KnownKeys, Pki, RemoteHomeserver, ZoneDns, free_port, serve
from ranvier.testing.hostile import deeply_nested

from .._servers import TEST_NAMES, WellKnownApp

ORIGIN = "origin.test"
NOW_MS = 1_700_000_000_000
ECHO = "/_matrix/federation/v1/echo"


@dataclass
class Setup:
    pki: Pki
    zone: ZoneDns
    key: SigningKey
    nursery: trio.Nursery
    well_known: WellKnownApp
    well_known_port: int

    def client(self, **kwargs: object) -> FederationHttpClient:
        options: dict[str, object] = {
            "ssl_context": self.pki.client_context(),
            "dns": self.zone,
            "well_known_port": self.well_known_port,
        }
        options.update(kwargs)
        return FederationHttpClient(ORIGIN, self.key, **options)  # type: ignore[arg-type]

    async def remote(
        self, template: str = "remote.test:{port}", *, names: tuple[str, ...] = ()
    ) -> RemoteHomeserver:
        remote = RemoteHomeserver(
            template, key_lookup=KnownKeys({ORIGIN: self.key}), clock=lambda: NOW_MS
        )
        await remote.start(self.nursery, self.pki.server_context(*names))
        return remote


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> Setup:
    pki = Pki.create(tmp_path, names=TEST_NAMES)
    zone = ZoneDns()
    for name in ("remote.test", "delegated.test", "a.test", "b.test"):
        zone.addresses[name] = ["127.0.0.1"]
    well_known = WellKnownApp()
    port = await serve(nursery, well_known, pki.server_context())
    return Setup(pki, zone, generate_signing_key("o1"), nursery, well_known, port)


@pytest.fixture
async def client(setup: Setup) -> AsyncIterator[FederationHttpClient]:
    async with setup.client() as client:
        yield client


# Requests the server accepts


async def test_signed_get_is_accepted(setup: Setup, client: FederationHttpClient) -> None:
    remote = await setup.remote()
    answer = await client.get_json(
        remote.server_name, ECHO, query={"limit": 10, "room": "!a b:c", "v": ["1", "2"]}
    )
    target = ECHO + "?limit=10&room=%21a%20b%3Ac&v=1&v=2"
    assert answer == {"uri": target, "origin": ORIGIN, "content": None}
    (seen,) = remote.seen
    assert seen.origin == ORIGIN
    assert seen.uri == target
    assert seen.headers["host"] == remote.server_name
    assert seen.headers["authorization"].startswith(f'X-Matrix origin="{ORIGIN}",destination=')


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_bodies_are_canonical_json(
    setup: Setup, client: FederationHttpClient, method: str
) -> None:
    remote = await setup.remote()
    content = {"pdus": [{"b": 1, "a": "é"}], "edus": []}
    path = ECHO + "/txn1" if method == "PUT" else ECHO
    send = client.put_json if method == "PUT" else client.post_json
    answer = await send(remote.server_name, path, content)
    assert answer["content"] == content
    (seen,) = remote.seen
    assert seen.body == encode_canonical_json(content)
    assert seen.headers["content-type"] == "application/json"
    assert seen.origin == ORIGIN


async def test_post_without_content_sends_an_empty_object(
    setup: Setup, client: FederationHttpClient
) -> None:
    remote = await setup.remote()
    response = await client.request("POST", remote.server_name, ECHO)
    assert response.json()["content"] == {}
    assert remote.seen[0].body == b"{}"


@pytest.mark.parametrize(
    ("query", "content", "problem"),
    [
        (None, {"n": 1.5}, "float"),
        ({"flag": True}, None, "must be a string or an integer"),
        ({"n": 1.5}, None, "must be a string or an integer"),
    ],
)
async def test_bad_input_is_refused_before_sending(
    setup: Setup,
    client: FederationHttpClient,
    query: dict[str, object] | None,
    content: object,
    problem: str,
) -> None:
    remote = await setup.remote()
    with pytest.raises(BadJsonError, match=problem):
        await client.request("PUT", remote.server_name, ECHO + "/t", query=query, content=content)
    assert remote.seen == []


# Where requests go


async def test_delegated_server_gets_the_delegated_host_and_tls_name(
    setup: Setup, client: FederationHttpClient
) -> None:
    # The listener's certificate names only the delegated host: the
    # connection succeeds only if TLS is checked against that name.
    remote = await setup.remote("remote.test", names=("delegated.test",))
    setup.well_known.answers["remote.test"] = Canned.json(
        {"m.server": f"delegated.test:{remote.port}"}
    )
    answer = await client.get_json("remote.test", ECHO)
    assert answer["origin"] == ORIGIN
    assert remote.seen[0].headers["host"] == f"delegated.test:{remote.port}"


async def test_certificate_for_the_wrong_name_is_refused(
    setup: Setup, client: FederationHttpClient
) -> None:
    remote = await setup.remote("remote.test", names=("remote.test",))
    setup.well_known.answers["remote.test"] = Canned.json(
        {"m.server": f"delegated.test:{remote.port}"}
    )
    with pytest.raises(FederationConnectionError, match=r"not valid for 'delegated\.test'"):
        await client.get_json("remote.test", ECHO)
    assert remote.seen == []


async def test_ip_literal_destination(setup: Setup, client: FederationHttpClient) -> None:
    remote = await setup.remote("127.0.0.1:{port}", names=("127.0.0.1",))
    answer = await client.get_json(remote.server_name, ECHO)
    assert answer["origin"] == ORIGIN
    assert remote.seen[0].headers["host"] == remote.server_name


async def test_connections_are_pooled_per_server_name(
    setup: Setup, client: FederationHttpClient
) -> None:
    """Two server names at one address get separate connections, each with
    its own certificate check."""
    app = WellKnownApp()
    port = await serve(setup.nursery, app, setup.pki.server_context("remote.test"))
    app.answers["remote.test"] = app.answers["a.test"] = Canned.json({"ok": True})
    for _ in range(3):
        assert await client.get_json(f"remote.test:{port}", ECHO) == {"ok": True}
    assert len(set(app.client_ports)) == 1
    # a.test resolves to the same address and port, but the certificate
    # there is not a.test's: a pooled connection must not be reused for it.
    with pytest.raises(FederationConnectionError, match=r"not valid for 'a\.test'"):
        await client.get_json(f"a.test:{port}", ECHO)
    assert app.hits == ["remote.test"] * 3


# Failures, told apart


async def test_error_answers_carry_status_and_errcode(
    setup: Setup, client: FederationHttpClient
) -> None:
    remote = await setup.remote()
    remote.canned[ECHO] = Canned.json({"errcode": "M_FORBIDDEN", "error": "no"}, status=403)
    with pytest.raises(FederationRequestError) as caught:
        await client.get_json(remote.server_name, ECHO)
    assert (caught.value.status, caught.value.errcode, caught.value.error) == (
        403,
        "M_FORBIDDEN",
        "no",
    )
    assert caught.value.destination == remote.server_name
    with pytest.raises(FederationRequestError) as caught:
        await client.get_json(remote.server_name, "/_matrix/federation/v1/nothing-here")
    assert (caught.value.status, caught.value.errcode) == (404, "M_UNRECOGNIZED")


async def test_request_signed_with_an_unknown_key_is_refused(setup: Setup) -> None:
    remote = await setup.remote()
    async with FederationHttpClient(
        ORIGIN,
        generate_signing_key("other"),
        ssl_context=setup.pki.client_context(),
        dns=setup.zone,
    ) as client:
        with pytest.raises(FederationRequestError) as caught:
            await client.get_json(remote.server_name, ECHO)
    assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
    assert remote.seen == []


async def test_answers_that_are_not_json(setup: Setup, client: FederationHttpClient) -> None:
    app = WellKnownApp()
    port = await serve(setup.nursery, app, setup.pki.server_context())
    app.answers["remote.test"] = Canned(200, b"<html>hello</html>")
    with pytest.raises(FederationResponseError, match="not valid JSON"):
        await client.get_json(f"remote.test:{port}", ECHO)
    app.answers["remote.test"] = Canned(502, b"<html>bad gateway</html>")
    with pytest.raises(FederationRequestError) as caught:
        await client.get_json(f"remote.test:{port}", ECHO)
    assert (caught.value.status, caught.value.errcode, caught.value.body) == (502, None, None)


@pytest.mark.parametrize("depth", [MAX_JSON_NESTING + 1, 900, 5_000])
async def test_answers_nested_too_deeply_are_not_json(
    setup: Setup, client: FederationHttpClient, depth: int
) -> None:
    app = WellKnownApp()
    port = await serve(setup.nursery, app, setup.pki.server_context())
    deep = b'{"errcode": "M_FORBIDDEN", "error": "no", "x": ' + deeply_nested(depth) + b"}"
    app.answers["remote.test"] = Canned(200, deep)
    with pytest.raises(FederationResponseError, match="nested too deeply"):
        await client.get_json(f"remote.test:{port}", ECHO)
    # An error body nested too deeply is read as no Matrix error at all.
    app.answers["remote.test"] = Canned(403, deep)
    with pytest.raises(FederationRequestError) as caught:
        await client.get_json(f"remote.test:{port}", ECHO)
    assert (caught.value.status, caught.value.errcode, caught.value.body) == (403, None, None)


async def test_answers_over_the_limit(setup: Setup) -> None:
    remote = await setup.remote()
    async with setup.client(max_response_bytes=2000) as client:
        big = {"x": "y" * 3000}
        with pytest.raises(FederationResponseError, match="over 2000 bytes"):
            await client.put_json(remote.server_name, ECHO + "/1", big)
        # A larger limit for one request; and the client is still usable.
        answer = await client.put_json(
            remote.server_name, ECHO + "/2", big, max_response_bytes=10_000
        )
        assert answer["content"] == big
        assert (await client.get_json(remote.server_name, ECHO))["origin"] == ORIGIN


async def test_a_big_answer_read_into_one_buffer(setup: Setup) -> None:
    """request_into_buffer gives the body request gives, in a buffer of its
    own (many chunks of it), under the same limits.
    """
    remote = await setup.remote()
    big = {"x": "y" * 300_000}
    async with setup.client(max_response_bytes=400_000) as client:
        whole = await client.request("PUT", remote.server_name, ECHO + "/1", content=big)
        buffered = await client.request_into_buffer(
            "PUT", remote.server_name, ECHO + "/2", content=big
        )
        assert type(buffered) is bytearray
        assert msgspec.json.decode(buffered)["content"] == big
        assert len(buffered) == len(whole.body)
        with pytest.raises(FederationResponseError, match="over 2000 bytes"):
            await client.request_into_buffer(
                "PUT", remote.server_name, ECHO + "/3", content=big, max_response_bytes=2000
            )


@pytest.mark.parametrize(
    ("destination", "problem"),
    [
        ("127.0.0.1:{free}", "connect"),
        ("nowhere.test:{free}", "no AAAA or A records"),
        ("bad name", "characters not allowed"),
    ],
)
async def test_unreachable_destinations_are_connection_errors(
    client: FederationHttpClient, destination: str, problem: str
) -> None:
    with pytest.raises(FederationConnectionError, match=problem) as caught:
        await client.get_json(destination.format(free=free_port()), ECHO)
    assert not isinstance(caught.value, FederationRequestError)


async def test_untrusted_certificate_is_a_connection_error(setup: Setup) -> None:
    remote = await setup.remote()
    async with setup.client(ssl_context=None) as client:  # the system's CAs only
        with pytest.raises(FederationConnectionError, match="certificate verify failed"):
            await client.get_json(remote.server_name, ECHO)


async def test_slow_answers_time_out(setup: Setup) -> None:
    remote = await setup.remote()
    remote.delay = 30
    async with setup.client(request_timeout=0.3) as client:
        with pytest.raises(FederationTimeoutError, match=r"within 0\.3s"):
            await client.get_json(remote.server_name, ECHO)


# Trying servers in turn


async def test_try_destinations_moves_past_failures(
    setup: Setup, client: FederationHttpClient
) -> None:
    failing = await setup.remote("a.test:{port}")
    failing.canned[ECHO] = Canned.json({"errcode": "M_UNKNOWN"}, status=500)
    good = await setup.remote("b.test:{port}")
    dead = f"127.0.0.1:{free_port()}"
    tried: list[str] = []

    async def attempt(destination: str) -> str:
        tried.append(destination)
        answer = await client.get_json(destination, ECHO)
        return f"{destination} {answer['origin']}"

    destinations = [ORIGIN, dead, failing.server_name, dead, good.server_name, "never.test"]
    result = await client.try_destinations(destinations, attempt)
    assert result == f"{good.server_name} {ORIGIN}"
    # Our own name and repeats are skipped; it stops at the first success.
    assert tried == [dead, failing.server_name, good.server_name]


async def test_try_destinations_raises_a_refusal_at_once(
    setup: Setup, client: FederationHttpClient
) -> None:
    refusing = await setup.remote("a.test:{port}")
    refusing.canned[ECHO] = Canned.json({"errcode": "M_FORBIDDEN", "error": "banned"}, status=403)
    good = await setup.remote("b.test:{port}")

    async def attempt(destination: str) -> object:
        return await client.get_json(destination, ECHO)

    with pytest.raises(FederationRequestError, match="M_FORBIDDEN"):
        await client.try_destinations([refusing.server_name, good.server_name], attempt)
    assert good.seen == []
    # Unless the caller says a refusal is worth trying elsewhere.
    answer = await client.try_destinations(
        [refusing.server_name, good.server_name],
        attempt,
        should_try_next=lambda exc: isinstance(exc, FederationError),
    )
    assert answer == {"uri": ECHO, "origin": ORIGIN, "content": None}


async def test_try_destinations_reports_every_failure(
    setup: Setup, client: FederationHttpClient
) -> None:
    slow = await setup.remote("a.test:{port}")
    slow.delay = 30
    overloaded = await setup.remote("b.test:{port}")
    overloaded.canned[ECHO] = Canned.json({"errcode": "M_LIMIT_EXCEEDED"}, status=429)

    attempt: Callable[[str], Awaitable[object]] = lambda name: client.get_json(name, ECHO)  # noqa: E731
    with pytest.raises(NoDestinationAnsweredError) as caught:
        await client.try_destinations(
            [slow.server_name, overloaded.server_name], attempt, timeout_per_destination=0.3
        )
    failures = caught.value.failures
    assert [name for name, _ in failures] == [slow.server_name, overloaded.server_name]
    assert isinstance(failures[0][1], FederationTimeoutError)
    assert isinstance(failures[1][1], FederationRequestError)
    assert "M_LIMIT_EXCEEDED" in str(caught.value)
    with pytest.raises(NoDestinationAnsweredError, match="no destination to try"):
        await client.try_destinations([ORIGIN], attempt)


# Lifecycle and configuration


async def test_run_holds_the_client_open_until_cancelled(setup: Setup) -> None:
    remote = await setup.remote()
    client = setup.client()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert (await client.get_json(remote.server_name, ECHO))["origin"] == ORIGIN
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_json(remote.server_name, ECHO)


async def test_closing_does_not_close_a_resolver_it_was_given(setup: Setup) -> None:
    remote = await setup.remote()
    async with ServerNameResolver(setup.zone, ssl_context=setup.pki.client_context()) as resolver:
        async with setup.client(resolver=resolver, dns=None) as client:
            await client.get_json(remote.server_name, ECHO)
        async with setup.client(resolver=resolver, dns=None) as client:
            await client.get_json(remote.server_name, ECHO)
    assert len(remote.seen) == 2


@pytest.mark.parametrize("verify", [True, False])
async def test_from_config(setup: Setup, verify: bool) -> None:
    remote = await setup.remote()
    config = Config.from_mapping(
        {
            "server_name": ORIGIN,
            "federation": {
                "verify_certificates": verify,
                "ca_file": str(setup.pki.ca_file) if verify else None,
                "request_timeout_seconds": 5.0,
            },
        }
    )
    async with FederationHttpClient.from_config(config, setup.key, dns=setup.zone) as client:
        assert client.request_timeout == 5.0
        assert (await client.get_json(remote.server_name, ECHO))["origin"] == ORIGIN


# A kept-alive connection the server has dropped


class _DroppingServer:
    """Plain HTTP/1.1 over TLS that answers every request, except that on
    its first connection it drops the connection when a second request
    arrives there: a server whose keep-alive timeout ran out just as the
    client reused the connection.
    """

    def __init__(self) -> None:
        self.connections = 0
        #: (connection number, request line) of each request read whole.
        self.requests: list[tuple[int, str]] = []

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        number, served, buffer = self.connections, 0, b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some()
                buffer = buffer[length:]
                self.requests.append((number, lines[0]))
                if number == 1 and served == 1:
                    await stream.aclose()
                    return
                payload = b'{"answer": %d}' % len(self.requests)
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                served += 1
        except trio.BrokenResourceError:
            return


async def _dropping_server(setup: Setup) -> tuple[_DroppingServer, str]:
    server = _DroppingServer()
    listeners = await setup.nursery.start(
        functools.partial(
            trio.serve_ssl_over_tcp,
            server.handle,
            0,
            setup.pki.server_context("remote.test"),
            host="127.0.0.1",
        )
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    return server, f"remote.test:{port}"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ECHO), ("PUT", "/_matrix/federation/v1/send/txn-7")],
)
async def test_a_dropped_kept_alive_connection_is_retried_once_on_a_new_one(
    setup: Setup, client: FederationHttpClient, method: str, path: str
) -> None:
    server, destination = await _dropping_server(setup)
    first = await client.request(method, destination, path)
    assert first.json() == {"answer": 1}
    second = await client.request(method, destination, path)
    assert second.json() == {"answer": 3}
    # The same request again, the transaction ID and all, on a new connection.
    line = f"{method} {path} HTTP/1.1"
    assert server.requests == [(1, line), (1, line), (2, line)]


async def test_a_post_on_a_dropped_connection_is_not_sent_again(
    setup: Setup, client: FederationHttpClient
) -> None:
    server, destination = await _dropping_server(setup)
    path = "/_matrix/federation/v1/user/keys/claim"
    assert (await client.request("POST", destination, path)).json() == {"answer": 1}
    with pytest.raises(FederationConnectionError, match="POST /_matrix/federation"):
        await client.request("POST", destination, path)
    assert server.requests == [(1, f"POST {path} HTTP/1.1")] * 2
