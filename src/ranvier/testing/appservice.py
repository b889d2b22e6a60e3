"""An application service to test bridges' and bots' server side against:
the Application Service API over plain HTTP on loopback, recording every
transaction and query and answering as the test tells it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import trio

from ranvier.federation.transport.listener import HttpListener
from ranvier.web import Receive, Scope, Send, only_http

from .network import whole_body

__all__ = ["FakeAppService", "Transaction"]

_PREFIX: Final = "/_matrix/app/v1"


@dataclass(frozen=True)
class Transaction:
    """One ``PUT /transactions/{txnId}`` as the service received it."""

    txn_id: str
    body: dict[str, Any]

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.body.get("events", [])
        return events


@dataclass
class FakeAppService:
    """An ASGI application service; :meth:`start` serves it and gives its URL.

    Requests must carry ``Authorization: Bearer <hs_token>`` (403
    ``M_FORBIDDEN`` otherwise). ``status`` answers transactions (one is
    recorded in :attr:`transactions` only under 200; every attempt is in
    :attr:`attempts`). ``on_user`` and ``on_alias`` answer queries: called
    with the user ID or alias, they may make it (through the client API)
    and return whether they did; without them every query is answered 404.
    ``ping_status`` answers pings. ``on_third_party`` answers third-party
    lookups: called with the path after ``thirdparty/`` (``protocol/irc``,
    ``location/irc``, ``user``, …) and the query's pairs, it returns the
    status and the answer, JSON or, as bytes, sent as they are; without it
    every lookup is answered 404.
    """

    hs_token: str
    status: int = 200
    ping_status: int = 200
    on_user: Callable[[str], Awaitable[bool]] | None = None
    on_alias: Callable[[str], Awaitable[bool]] | None = None
    on_third_party: Callable[[str, list[tuple[str, str]]], Awaitable[tuple[int, Any]]] | None = None
    #: Transactions answered 200, in order, repeats included.
    transactions: list[Transaction] = field(default_factory=list)
    #: The transaction IDs of every attempt, whatever the answer.
    attempts: list[str] = field(default_factory=list)
    #: ``(kind, subject)`` of each query: ``("users", user_id)``,
    #: ``("rooms", alias)``, ``("ping", transaction_id)``.
    queries: list[tuple[str, str | None]] = field(default_factory=list)
    #: ``(path, query pairs)`` of each third-party lookup, ``path`` after ``thirdparty/``.
    third_party: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    url: str = ""
    _changed: trio.Event = field(default_factory=trio.Event)

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve on 127.0.0.1 until ``nursery`` ends; the URL a registration names."""
        listener = HttpListener(self, host="127.0.0.1", port=0, ssl_context=None)
        port: int = await nursery.start(listener.run)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate`` holds, checked after each request
        (bound the wait with a cancel scope).
        """
        while not predicate():
            self._changed = trio.Event()
            await self._changed.wait()

    async def next_transaction(self, after: int) -> Transaction:
        """The transaction recorded after the first ``after`` ones, waiting for it."""
        await self.wait_for(lambda: len(self.transactions) > after)
        return self.transactions[after]

    def events(self) -> list[dict[str, Any]]:
        """Every event of every transaction recorded, in order."""
        return [event for transaction in self.transactions for event in transaction.events]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await only_http(scope, receive, send):
            return
        body = await whole_body(receive)
        try:
            status, answer = await self._answer(scope, body)
        finally:
            self._changed.set()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        if not isinstance(answer, bytes):
            answer = msgspec.json.encode(answer)
        await send({"type": "http.response.body", "body": answer})

    async def _answer(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        headers = dict(scope.get("headers", []))
        if headers.get(b"authorization") != f"Bearer {self.hs_token}".encode():
            return 403, {"errcode": "M_FORBIDDEN", "error": "wrong hs_token"}
        method: str = scope["method"]
        path: str = scope["path"]
        if not path.startswith(_PREFIX + "/"):
            return 404, {"errcode": "M_UNRECOGNIZED", "error": "unknown path"}
        kind, _, subject = path[len(_PREFIX) + 1 :].partition("/")
        subject = urllib.parse.unquote(subject)
        if kind == "transactions" and method == "PUT":
            self.attempts.append(subject)
            if self.status == 200:
                self.transactions.append(Transaction(subject, msgspec.json.decode(body)))
            return self.status, {}
        if kind in ("users", "rooms") and method == "GET":
            self.queries.append((kind, subject))
            answer = self.on_user if kind == "users" else self.on_alias
            made = answer is not None and await answer(subject)
            if made:
                return 200, {}
            return 404, {"errcode": "M_NOT_FOUND", "error": f"no {subject}"}
        if kind == "thirdparty" and method == "GET":
            query = urllib.parse.parse_qsl(
                scope.get("query_string", b"").decode("utf-8"), keep_blank_values=True
            )
            self.third_party.append((subject, query))
            if self.on_third_party is None:
                return 404, {"errcode": "M_NOT_FOUND", "error": f"no {subject}"}
            return await self.on_third_party(subject, query)
        if kind == "ping" and method == "POST":
            decoded = msgspec.json.decode(body) if body else {}
            self.queries.append(("ping", decoded.get("transaction_id")))
            return self.ping_status, {}
        return 404, {"errcode": "M_UNRECOGNIZED", "error": "unknown path"}
