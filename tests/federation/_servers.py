"""Real HTTPS servers on loopback for the outgoing side's tests: a test CA,
a DNS stand-in, a UDP DNS responder, and remote homeservers.

Every server here listens on 127.0.0.1 with a certificate from one test CA
for the names the tests use; :class:`ZoneDns` answers DNS for those names,
since the tests cannot be given real DNS records.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import msgspec
import trio
import trustme

from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.resolve import ServerNameResolutionError, SrvRecord
from ranvier.federation.transport.routes import add_version_route, server_keys_json
from ranvier.federation.transport.server import FederationApp, JsonResponse, KeyLookup, Request
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.signing import SigningKey, generate_signing_key

#: Every name a test server may be reached by; the certificate covers all.
TEST_NAMES = (
    "a.test",
    "b.test",
    "remote.test",
    "delegated.test",
    "srv-target.test",
    "old-srv-target.test",
    "notary.test",
    "loop-a.test",
    "loop-b.test",
    "127.0.0.1",
    "::1",
)

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Pki:
    """A test CA, a certificate for :data:`TEST_NAMES`, and the CA as a file."""

    ca: trustme.CA
    ca_file: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        ca = trustme.CA()
        ca_file = directory / "test-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        return cls(ca, ca_file)

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A TLS server context with a certificate for ``names`` (default: all)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*(names or TEST_NAMES)).configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """What a client configured with the CA file trusts: only this CA."""
        return client_ssl_context(ca_file=self.ca_file)


async def serve(
    nursery: trio.Nursery,
    app: Callable[[_Scope, _Receive, _Send], Awaitable[None]],
    context: ssl.SSLContext,
) -> int:
    """Serve ``app`` over HTTPS on 127.0.0.1; return the port."""
    listener = HttpListener(app, host="127.0.0.1", port=0, ssl_context=context)
    port: int = await nursery.start(listener.run)
    return port


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class ZoneDns:
    """A stand-in for DNS: records in dicts, every lookup recorded."""

    addresses: dict[str, list[str]] = field(default_factory=dict)
    srv: dict[str, list[SrvRecord]] = field(default_factory=dict)
    #: Names whose lookups fail as a broken DNS server's would.
    failing: set[str] = field(default_factory=set)
    lookups: list[tuple[str, str]] = field(default_factory=list)

    async def lookup_srv(self, name: str) -> Sequence[SrvRecord]:
        await trio.lowlevel.checkpoint()
        self.lookups.append(("SRV", name))
        if name in self.failing:
            raise ServerNameResolutionError(name, "SRV lookup failed: SERVFAIL")
        return list(self.srv.get(name, []))

    async def lookup_addresses(self, host: str) -> Sequence[str]:
        await trio.lowlevel.checkpoint()
        self.lookups.append(("ADDR", host))
        if host in self.failing:
            raise ServerNameResolutionError(host, "address lookup failed: SERVFAIL")
        return list(self.addresses.get(host, []))


class DnsResponder:
    """A real DNS server over UDP on loopback, answering from a dict.

    ``records`` maps ``(name, type)`` to record texts as a zone file writes
    them (``"10 5 8448 target.test."`` for SRV). Names in ``servfail`` get
    SERVFAIL; names never mentioned get NXDOMAIN; a known name asked for a
    type it lacks gets an empty answer.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            task_status.started(sock.getsockname()[1])
            while True:
                data, address = await sock.recvfrom(4096)
                await sock.sendto(self._answer(data), address)

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        known_names = {known for known, _ in self.records}
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            response.answer.append(
                dns.rrset.from_text(question.name, 60, "IN", rdtype, *self.records[(name, rdtype)])
            )
        elif name not in known_names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire: bytes = response.to_wire()
        return wire


# ASGI stand-ins


@dataclass
class Canned:
    """One canned HTTP answer."""

    status: int = 200
    body: bytes = b"{}"
    headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),)

    @classmethod
    def json(
        cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Canned:
        extra = tuple((headers or {}).items())
        return cls(
            status, msgspec.json.encode(value), (("content-type", "application/json"), *extra)
        )


class WellKnownApp:
    """Serves ``/.well-known/matrix/server`` per ``Host``, counting requests."""

    def __init__(self) -> None:
        self.answers: dict[str, Canned] = {}
        self.hits: list[str] = []

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        host = headers.get("host", "").rsplit(":", 1)[0]
        self.hits.append(host)
        answer = self.answers.get(host, Canned(404, b'{"errcode":"M_NOT_FOUND"}'))
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(n.encode(), v.encode()) for n, v in answer.headers],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


@dataclass
class Seen:
    """A request as a stand-in server saw it."""

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes
    origin: str | None


class RemoteHomeserver:
    """Another homeserver: the real federation app, its key route, an echo
    route, and routes whose answers a test sets.

    ``key_response`` replaces the key route's answer when set, to serve a
    forged or broken one.
    """

    def __init__(
        self,
        server_name: str,
        *,
        key_lookup: KeyLookup,
        signing_key: SigningKey | None = None,
        clock: Callable[[], int],
        validity_ms: int = 24 * 3600 * 1000,
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key or generate_signing_key("k1")
        self.app = FederationApp(server_name=server_name, key_lookup=key_lookup)
        self.seen: list[Seen] = []
        self.key_requests = 0
        self.key_response: Mapping[str, Any] | None = None
        self.key_delay = 0.0
        self.canned: dict[str, Canned] = {}
        self._clock = clock
        self.validity_ms = validity_ms
        add_version_route(self.app.router)
        self.app.router.add("GET", "/_matrix/key/v2/server", self._keys, authenticated=False)
        self.app.router.add("GET", "/_matrix/federation/v1/echo", self._echo)
        self.app.router.add("PUT", "/_matrix/federation/v1/echo/{id}", self._echo)
        self.app.router.add("POST", "/_matrix/federation/v1/echo", self._echo)
        self.app.router.add("GET", "/_matrix/federation/v1/open", self._echo, authenticated=False)

    async def _keys(self, request: Request) -> Any:
        self.key_requests += 1
        if self.key_delay:
            await trio.sleep(self.key_delay)
        if self.key_response is not None:
            return self.key_response
        return server_keys_json(
            self.server_name, [self.signing_key], self._clock() + self.validity_ms
        )

    async def _echo(self, request: Request) -> Any:
        self.seen.append(
            Seen(request.method, request.uri, dict(request.headers), request.body, request.origin)
        )
        canned = self.canned.get(request.uri.partition("?")[0])
        if canned is not None:
            return JsonResponse(msgspec.json.decode(canned.body), status=canned.status)
        return {"uri": request.uri, "origin": request.origin, "content": request.content}
