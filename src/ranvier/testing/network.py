"""Real HTTPS on loopback under made-up server names.

Federation runs over HTTPS between servers found by name. A test runs its
servers on 127.0.0.1 instead, each on a port of its own, under names like
``remote.test:<port>``. For that it needs what real deployments have:

* :class:`Pki`, a test certificate authority: servers get certificates for
  the test's names, clients trust that CA alone (needs ``trustme``, from
  ranvier's ``test`` extra);
* :class:`ZoneDns`, DNS answered from dicts, handed to the federation
  client (``dns=``) in place of real DNS;
* :func:`serve`, any ASGI app on loopback over TLS, on a free port.

For example::

    pki = Pki.create(tmp_path, names=("remote.test",))
    zone = ZoneDns.loopback("remote.test")
    port = await serve(nursery, app, pki.server_context())
    client = FederationHttpClient("ours.test", key, ssl_context=pki.client_context(), dns=zone)
"""

from __future__ import annotations

import random
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ranvier.federation.transport.listener import AsgiApp, HttpListener
from ranvier.federation.transport.resolve import ServerNameResolutionError, SrvRecord
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.web import Receive, read_body

if TYPE_CHECKING:
    import trustme

__all__ = ["LOOPBACK_NAMES", "Pki", "ZoneDns", "free_port", "serve", "silent_server", "whole_body"]

#: The names of the loopback interface itself.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Pki:
    """A test CA and the file a client configured with it would read.

    ``names`` are what server certificates cover unless told otherwise.
    """

    ca: trustme.CA
    ca_file: Path
    names: tuple[str, ...] = LOOPBACK_NAMES

    @classmethod
    def create(cls, directory: Path, *, names: Sequence[str] = LOOPBACK_NAMES) -> Pki:
        """A new CA, its certificate written to ``directory``."""
        try:
            import trustme
        except ImportError:  # pragma: no cover - the test extra installs it
            raise RuntimeError("ranvier.testing.Pki needs trustme: pip install trustme") from None
        ca = trustme.CA()
        ca_file = directory / "test-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        return cls(ca, ca_file, tuple(names))

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A TLS server context with a certificate for ``names`` (by default :attr:`names`)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*(names or self.names)).configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """What a client configured with the CA file trusts: only this CA."""
        return client_ssl_context(ca_file=self.ca_file)


@dataclass
class ZoneDns:
    """A stand-in for DNS: records in dicts, every lookup recorded.

    It is a :class:`~ranvier.federation.transport.resolve.DnsResolver`.
    Names it has no records of have none (as NXDOMAIN); names in
    ``failing`` fail as a broken DNS server's would.
    """

    #: Host name to addresses.
    addresses: dict[str, list[str]] = field(default_factory=dict)
    #: SRV name (``_matrix-fed._tcp.<host>``) to records.
    srv: dict[str, list[SrvRecord]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    #: ``("SRV" or "ADDR", name)`` of every lookup, in order.
    lookups: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def loopback(cls, *hosts: str) -> ZoneDns:
        """A zone where each of ``hosts`` is 127.0.0.1."""
        return cls(addresses={host: ["127.0.0.1"] for host in hosts})

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


async def serve(nursery: trio.Nursery, app: AsgiApp, context: ssl.SSLContext) -> int:
    """Serve ``app`` over HTTPS on 127.0.0.1 until ``nursery`` ends; return the port."""
    listener = HttpListener(app, host="127.0.0.1", port=0, ssl_context=context)
    port: int = await nursery.start(listener.run)
    return port


async def silent_server(nursery: trio.Nursery) -> tuple[int, trio.Event]:
    """A TCP server on 127.0.0.1 that takes connections and never answers,
    until ``nursery`` ends: its port, and an event set once a client has
    closed its end of a connection (a TLS handshake that never ends, say).
    """
    closed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        while await stream.receive_some():
            pass
        closed.set()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port, closed


#: The ports free_port has handed out in this process.
_handed_out: set[int] = set()
_draws = random.Random()
#: free_port draws from here up to the system's ephemeral ports.
_LOWEST_DRAWN = 10_000


def _ephemeral_ports() -> tuple[int, int]:
    """The range the system takes ports from for ``bind(0)`` and outgoing
    connections (Linux's own file; its default where there is none)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server that must know
    its port before it listens, or for one that is down.

    It is drawn below the system's ephemeral ports, where the system never
    puts a server started on port 0 or an outgoing connection, so nothing
    of the test's takes the port before the server it is meant for; and it
    is never handed out twice in one process. Ports the system picked
    itself (bound, then released) met both: in 3,000 of them, some 300
    repeated, and a server on port 0 could be given one meanwhile.
    """
    low, _ = _ephemeral_ports()
    while True:
        if low - _LOWEST_DRAWN > 1_000:
            port = _draws.randrange(_LOWEST_DRAWN, low)
            if not _bindable(port):
                continue
        else:
            # Ephemeral ports reach down to here: only the system's picks remain.
            port = _system_pick()
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _system_pick() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def whole_body(receive: Receive) -> bytes:
    """A request's whole body, for a stand-in server that records what it
    is sent: no size limit, since it is the server under test that sends."""
    return await read_body(receive, (), sys.maxsize)
