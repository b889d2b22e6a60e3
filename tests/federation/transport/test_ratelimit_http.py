"""Per-origin federation limits over real HTTPS on loopback: a server over
its limit is refused before the body of its request is read, and served
again once its limit has room.

Time is Trio's mock clock, moved by hand, so a delay ends when the test
says; the network is real.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import msgspec
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.ratelimit import FederationRate, FederationRateLimiter
from ranvier.federation.transport.server import FederationApp, Request
from ranvier.federation.transport.tls import client_ssl_context, server_ssl_context
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.protocol.x_matrix import format_authorization, sign_request
from ranvier.web import Receive, Scope, Send

from .conftest import SERVER_NAME, DictKeyLookup

BUSY = "busy.test"
INVITE = "/_matrix/federation/v2/invite/{room_id}/{event_id}"
#: Far more than the socket buffers and the HTTP server's queue hold.
LARGE = 8 * 1024 * 1024

# Real seconds a wait may take before the test fails: the mock clock never
# moves by itself, so only a bug uses them up.
_GIVE_UP_AFTER = 15.0


async def _until(predicate: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + _GIVE_UP_AFTER
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


@dataclass
class _Server:
    """A federation app on HTTPS whose invite handler waits for ``gate``,
    and what its app was handed of each request's body."""

    app: FederationApp
    limiter: FederationRateLimiter
    port: int
    certificate: Path
    key: SigningKey
    gate: trio.Event = field(default_factory=trio.Event)
    running: int = 0
    #: Body bytes the app received, by request path.
    body_bytes: dict[str, int] = field(default_factory=dict)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")

        async def counting() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                chunk = message.get("body", b"")
                self.body_bytes[path] = self.body_bytes.get(path, 0) + len(chunk)
            return message

        await self.app(scope, counting, send)

    async def invite(self, request: Request) -> Mapping[str, Any]:
        self.running += 1
        try:
            await self.gate.wait()
            return {"event": {"size": len(request.body)}}
        finally:
            self.running -= 1

    def signed(self, path: str, content: Any) -> tuple[bytes, dict[str, str]]:
        body = encode_canonical_json(content)
        authorization = sign_request(
            method="PUT",
            uri=path,
            origin=BUSY,
            destination=SERVER_NAME,
            signing_key=self.key,
            content=content,
        )
        headers = {
            "authorization": format_authorization(authorization),
            "content-type": "application/json",
        }
        return body, headers


@pytest.fixture
async def server(tls_files: tuple[Path, Path], nursery: trio.Nursery) -> _Server:
    certificate, private_key = tls_files
    key = generate_signing_key("busy1")
    lookup = DictKeyLookup()
    lookup.add(BUSY, key)
    # One at a time, one more held, none more: the third request in flight
    # is over the limit.
    rate = FederationRate(
        window_seconds=1.0, sleep_limit=1, sleep_seconds=0.5, reject_limit=1, concurrent=1
    )
    limiter = FederationRateLimiter(rate)
    app = FederationApp(server_name=SERVER_NAME, key_lookup=lookup, rate_limiter=limiter)
    served = _Server(app, limiter, 0, certificate, key)
    app.router.add("PUT", INVITE, served.invite)
    listener = HttpListener(
        served.asgi,
        host="127.0.0.1",
        port=0,
        ssl_context=server_ssl_context(certificate, private_key),
    )
    served.port = await nursery.start(listener.run)
    return served


def _invite_path(n: int) -> str:
    return f"/_matrix/federation/v2/invite/!room:busy.test/$invite{n}"


def _content(n: int, padding: int = 0) -> dict[str, Any]:
    return {"event": {"n": n}, "room_version": "10", "padding": "x" * padding}


async def _headers_only(
    server: _Server, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """Send a request's headers, announcing ``body``, and read the answer
    without sending a byte of the body: only a server that answers before
    reading the body answers at all."""
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    stream = trio.SSLStream(
        tcp,
        client_ssl_context(ca_file=server.certificate),
        server_hostname="localhost",
        https_compatible=True,
    )
    try:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="PUT",
            target=path,
            headers=[
                ("host", SERVER_NAME),
                ("content-length", str(len(body))),
                *headers.items(),
            ],
        )
        await stream.send_all(connection.send(request))
        status: int | None = None
        answer = b""
        done = False

        async def read_answer() -> None:
            nonlocal status, answer, done
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(bytes(await stream.receive_some()))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    answer += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    done = True
                    return

        # Not trio.fail_after: the mock clock does not move by itself.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_answer)
            try:
                await _until(lambda: done, "an answer before the body")
            finally:
                nursery.cancel_scope.cancel()
        assert status is not None
        return status, msgspec.json.decode(answer)
    finally:
        await trio.aclose_forcefully(stream)


async def test_an_origin_over_its_limit_is_refused_before_its_body_is_read(
    server: _Server, mock_clock: MockClock
) -> None:
    limiter = server.limiter
    results: dict[int, httpx.Response] = {}
    async with (
        httpx.AsyncClient(
            base_url=f"https://localhost:{server.port}",
            verify=client_ssl_context(ca_file=server.certificate),
        ) as client,
        trio.open_nursery() as nursery,
    ):

        async def put(n: int, padding: int = 0) -> None:
            path = _invite_path(n)
            body, headers = server.signed(path, _content(n, padding))
            results[n] = await client.put(path, content=body, headers=headers)

        # The first is served (its handler waits), the second is held half
        # a second: busy.test has a request held, its limit.
        nursery.start_soon(put, 1)
        await _until(lambda: server.running == 1, "the first request in its handler")
        nursery.start_soon(put, 2)
        await _until(lambda: limiter.delayed == 1, "the second request held")

        # The third announces 8 MiB and sends none of it: it is answered.
        path = _invite_path(3)
        body, headers = server.signed(path, _content(3, LARGE))
        assert len(body) > LARGE
        status, answer = await _headers_only(server, path, body, headers)
        assert status == 429
        assert answer["errcode"] == "M_LIMIT_EXCEEDED"
        assert answer["retry_after_ms"] == 1000
        assert server.body_bytes.get(path, 0) == 0
        assert limiter.rejected == 1
        # Refused before its signature could be checked, it counted nothing.
        assert len(limiter._origins[BUSY].arrivals) == 2

        # The held one goes on once its delay is over and the first is done.
        server.gate.set()
        mock_clock.jump(0.5)
        await _until(lambda: len(results) == 2, "the first two answers")
    assert [results[n].status_code for n in (1, 2)] == [200, 200]

    # A window later busy.test has its allowance back: the same large
    # request is read whole and served at once.
    mock_clock.jump(1.0)
    async with httpx.AsyncClient(
        base_url=f"https://localhost:{server.port}",
        verify=client_ssl_context(ca_file=server.certificate),
        timeout=_GIVE_UP_AFTER,
    ) as client:
        path = _invite_path(4)
        body, headers = server.signed(path, _content(4, LARGE))
        answer_4 = await client.put(path, content=body, headers=headers)
    assert answer_4.status_code == 200
    assert answer_4.json() == {"event": {"size": len(body)}}
    assert server.body_bytes[path] == len(body)
    assert (limiter.delayed, limiter.rejected) == (1, 1)
