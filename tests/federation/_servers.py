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
from ranvier.protocol.signing import SigningKey, VerifyKeyLike, generate_signing_key, key_id

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
    """Answers any path with the answer set for the request's ``Host`` (for
    ``/.well-known/matrix/server``, and as a server of raw answers),
    recording each request's host and the client port it came from.
    """

    def __init__(self) -> None:
        self.answers: dict[str, Canned] = {}
        self.hits: list[str] = []
        self.client_ports: list[int] = []

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
        self.client_ports.append(scope["client"][1])
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


class StaticKeys:
    """A key lookup answering from a dict: for servers whose keys a test
    hands over directly."""

    def __init__(self, *keys: tuple[str, SigningKey]) -> None:
        self.keys = {(name, key_id(key)): key.verify_key for name, key in keys}

    async def get_verify_key(self, server_name: str, key_id: str) -> VerifyKeyLike | None:
        await trio.lowlevel.checkpoint()
        return self.keys.get((server_name, key_id))


class RemoteHomeserver:
    """Another homeserver: the real federation app with its own key route,
    echo routes that record what arrives, and answers a test can set.

    The server name is ``name_template`` with the port filled in once it
    listens (``"remote.test:{port}"``). ``key_response`` replaces the key
    route's answer when set, to serve a forged or broken one; ``delay``
    holds every answer back that many seconds.
    """

    def __init__(
        self,
        name_template: str,
        *,
        key_lookup: KeyLookup,
        clock: Callable[[], int],
        signing_key: SigningKey | None = None,
        validity_ms: int = 24 * 3600 * 1000,
    ) -> None:
        self.name_template = name_template
        self.server_name = name_template
        self.signing_key = signing_key or generate_signing_key("k1")
        self.app = FederationApp(server_name=name_template, key_lookup=key_lookup)
        self.port = 0
        self.seen: list[Seen] = []
        self.key_requests = 0
        #: Set when the first key request arrives.
        self.key_requested = trio.Event()
        self.key_response: Mapping[str, Any] | None = None
        self.delay = 0.0
        self.canned: dict[str, Canned] = {}
        self.clock = clock
        self.validity_ms = validity_ms
        add_version_route(self.app.router)
        self.app.router.add("GET", "/_matrix/key/v2/server", self._keys, authenticated=False)
        for method in ("GET", "PUT", "POST"):
            self.app.router.add(method, "/_matrix/federation/v1/echo", self._echo)
        self.app.router.add("PUT", "/_matrix/federation/v1/echo/{id}", self._echo)

    async def start(self, nursery: trio.Nursery, context: ssl.SSLContext) -> str:
        """Listen on loopback; return the server name, port filled in."""
        self.port = await serve(nursery, self.app, context)
        self.server_name = self.name_template.format(port=self.port)
        self.app.server_name = self.server_name
        return self.server_name

    async def _keys(self, request: Request) -> Any:
        self.key_requests += 1
        self.key_requested.set()
        if self.delay:
            await trio.sleep(self.delay)
        if self.key_response is not None:
            return self.key_response
        return server_keys_json(
            self.server_name, [self.signing_key], self.clock() + self.validity_ms
        )

    async def _echo(self, request: Request) -> Any:
        self.seen.append(
            Seen(request.method, request.uri, dict(request.headers), request.body, request.origin)
        )
        if self.delay:
            await trio.sleep(self.delay)
        canned = self.canned.get(request.uri.partition("?")[0])
        if canned is not None:
            return JsonResponse(msgspec.json.decode(canned.body), status=canned.status)
        return {"uri": request.uri, "origin": request.origin, "content": request.content}
