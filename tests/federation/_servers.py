"""Stand-ins for the outgoing side's tests of server-name resolution: the
names the test certificates cover, a real DNS server over UDP, and a
server of raw answers by ``Host``.

The rest (the test CA, DNS from dicts, remote homeservers) is
:mod:`ranvier.testing`.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio

from ranvier.testing import Canned

#: Every name a test server may be reached by; certificates cover all.
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
