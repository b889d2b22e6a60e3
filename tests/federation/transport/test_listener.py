import socket
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.routes import add_version_route
from ranvier.federation.transport.server import FederationApp
from ranvier.federation.transport.tls import (
    client_ssl_context,
    ensure_certificate,
    server_ssl_context,
)

from .conftest import SERVER_NAME, DictKeyLookup


def _app() -> FederationApp:
    app = FederationApp(server_name=SERVER_NAME, key_lookup=DictKeyLookup())
    add_version_route(app.router)
    return app


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _refused(host: str, port: int) -> bool:
    with trio.socket.socket() as sock:
        try:
            await sock.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


async def test_reports_the_port_once_listening_and_stops_on_cancel(
    tls_files: tuple[Path, Path],
) -> None:
    certificate, private_key = tls_files
    listener = HttpListener(
        _app(),
        host="127.0.0.1",
        port=0,
        ssl_context=server_ssl_context(certificate, private_key),
    )
    assert listener.port is None
    assert listener.scheme == "https"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        assert port == listener.port
        assert port > 0
        # started() came after the socket listens: connecting needs no retry.
        async with httpx.AsyncClient(verify=client_ssl_context(ca_file=certificate)) as client:
            response = await client.get(f"https://127.0.0.1:{port}/_matrix/federation/v1/version")
            assert response.status_code == 200
            # A keep-alive connection stays open until the listener is cancelled.
            nursery.cancel_scope.cancel()
    assert await _refused("127.0.0.1", port)


async def test_cancel_closes_open_connections() -> None:
    listener = HttpListener(_app(), host="127.0.0.1", port=0, ssl_context=None)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while not received.endswith(b"}}"):
            received += await stream.receive_some()
        assert received.startswith(b"HTTP/1.1 200 ")
        nursery.cancel_scope.cancel()
    # The keep-alive connection was closed by the server as the listener
    # stopped, not left open for the client to time out.
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some() == b""
    assert await _refused("127.0.0.1", port)


async def test_plain_http_listener() -> None:
    listener = HttpListener(_app(), host="127.0.0.1", port=0, ssl_context=None)
    assert listener.scheme == "http"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/_matrix/federation/v1/version")
        assert response.json()["server"]["name"] == "ranvier"
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback on this machine")
async def test_ipv6_listener(tls_files: tuple[Path, Path]) -> None:
    certificate, private_key = tls_files
    listener = HttpListener(
        _app(), host="::1", port=0, ssl_context=server_ssl_context(certificate, private_key)
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        async with httpx.AsyncClient(verify=client_ssl_context(ca_file=certificate)) as client:
            response = await client.get(f"https://[::1]:{port}/_matrix/federation/v1/version")
        assert response.status_code == 200
        nursery.cancel_scope.cancel()


async def test_client_refuses_a_certificate_it_does_not_trust(
    tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    certificate, private_key = tls_files
    other_certificate, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    ensure_certificate(other_certificate, other_key, SERVER_NAME)
    listener = HttpListener(
        _app(),
        host="127.0.0.1",
        port=0,
        ssl_context=server_ssl_context(certificate, private_key),
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        url = f"https://localhost:{port}/_matrix/federation/v1/version"
        async with httpx.AsyncClient(
            verify=client_ssl_context(ca_file=other_certificate)
        ) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get(url)
            assert any(
                isinstance(cause, ssl.SSLCertVerificationError) for cause in _causes(info.value)
            )
        async with httpx.AsyncClient(verify=client_ssl_context(verify=False)) as client:
            assert (await client.get(url)).status_code == 200
        nursery.cancel_scope.cancel()


async def test_port_in_use_fails_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = HttpListener(_app(), host="127.0.0.1", port=port, ssl_context=None)
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
                await nursery.start(listener.run)
        assert listener.port is None


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def test_host_must_be_an_ip_address() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        HttpListener(_app(), host="localhost", port=0, ssl_context=None)
