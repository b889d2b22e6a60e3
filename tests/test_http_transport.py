"""Requests through :class:`ranvier.http_transport.DirectTransport`, over
real loopback sockets."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from ranvier.federation.transport.listener import HttpListener
from ranvier.http_transport import DirectTransport
from ranvier.testing import Pki, silent_server
from ranvier.web import Receive, Scope, Send, only_http


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if not await only_http(scope, receive, send):
        return
    body = f"{scope['scheme']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_http_and_https_are_spoken(nursery: trio.Nursery, tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    plain = HttpListener(_hello, host="127.0.0.1", port=0, ssl_context=None)
    secure = HttpListener(_hello, host="127.0.0.1", port=0, ssl_context=pki.server_context())
    plain_port = await nursery.start(plain.run)
    secure_port = await nursery.start(secure.run)
    transport = DirectTransport(ssl_context=pki.client_context())
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await client.get(f"http://127.0.0.1:{plain_port}/a")
        assert (answer.status_code, answer.text) == (200, "http /a")
        answer = await client.get(f"https://127.0.0.1:{secure_port}/b")
        assert (answer.status_code, answer.text) == (200, "https /b")
        # The certificate is checked: a client trusting another CA refuses it.
        other = DirectTransport(ssl_context=Pki.create(tmp_path / "..").client_context())
        async with httpx.AsyncClient(transport=other) as stranger:
            with pytest.raises(httpx.ConnectError):
                await stranger.get(f"https://127.0.0.1:{secure_port}/c")
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(f"ftp://127.0.0.1:{plain_port}/d")


async def test_a_request_cancelled_in_its_tls_handshake_closes_its_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port, closed = await silent_server(nursery)
    transport = DirectTransport(ssl_context=Pki.create(tmp_path).client_context())
    async with httpx.AsyncClient(transport=transport) as client:
        with trio.move_on_after(0.2) as scope:
            await client.get(f"https://127.0.0.1:{port}/")
        assert scope.cancelled_caught
        # The server sees the connection end while the client still lives:
        # the socket was closed, not left for the garbage collector.
        with trio.fail_after(5):
            await closed.wait()
