"""A web site to test URL previews against: pages a test defines, served
over HTTP (or HTTPS) on loopback, each request counted.

A page can be HTML or an image, a redirect, an error, a body far larger
than any limit (streamed, with or without a ``Content-Length``), an answer
that never comes, or one held back until the test lets it go.
"""

from __future__ import annotations

import ssl
from collections import Counter
from dataclasses import dataclass, field

import trio

from ranvier.federation.transport.listener import HttpListener
from ranvier.web import Receive, Scope, Send, only_http

__all__ = ["Page", "WebPages"]


@dataclass
class Page:
    """What one path answers."""

    body: bytes = b""
    content_type: str | None = "text/html; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    #: The body is sent this many times over, one chunk each time.
    repeat: int = 1
    #: Send a ``Content-Length`` (of the whole, repeated body).
    declare_length: bool = True
    #: Never answer: the request waits until the client gives up.
    stall: bool = False
    #: Answer only once this is set.
    gate: trio.Event | None = None


@dataclass
class WebPages:
    """An ASGI site of :class:`Page` by path; :meth:`start` serves it."""

    pages: dict[str, Page] = field(default_factory=dict)
    #: Requests received, by path.
    hits: Counter[str] = field(default_factory=Counter)
    #: The ``Host`` and ``User-Agent`` headers of each request, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def start(
        self, nursery: trio.Nursery, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on 127.0.0.1 until ``nursery`` ends; return the base URL
        (``http://127.0.0.1:<port>``)."""
        listener = HttpListener(self, host="127.0.0.1", port=0, ssl_context=ssl_context)
        port: int = await nursery.start(listener.run)
        self.base_url = f"{listener.scheme}://127.0.0.1:{port}"
        return self.base_url

    async def wait_for_hits(self, path: str, count: int = 1) -> None:
        """Until ``path`` has been asked for ``count`` times (bound the wait
        with a cancel scope)."""
        while self.hits[path] < count:
            self._arrived = trio.Event()
            await self._arrived.wait()

    def url(self, path: str) -> str:
        """The URL of ``path`` on this site."""
        return self.base_url + path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await only_http(scope, receive, send):
            return
        path = str(scope["path"])
        self.hits[path] += 1
        headers = {
            bytes(key).decode("latin-1").lower(): bytes(value).decode("latin-1")
            for key, value in scope["headers"]
        }
        self.requests.append((headers.get("host", ""), headers.get("user-agent", "")))
        self._arrived.set()
        page = self.pages.get(path)
        if page is None:
            page = Page(body=b"not here", content_type="text/plain", status=404)
        if page.stall:
            await trio.sleep_forever()
        if page.gate is not None:
            await page.gate.wait()
        answer_headers = [(key.encode(), value.encode()) for key, value in page.headers]
        if page.content_type is not None:
            answer_headers.append((b"content-type", page.content_type.encode()))
        if page.declare_length:
            answer_headers.append((b"content-length", str(len(page.body) * page.repeat).encode()))
        await send(
            {"type": "http.response.start", "status": page.status, "headers": answer_headers}
        )
        for index in range(page.repeat):
            more = index < page.repeat - 1
            await send({"type": "http.response.body", "body": page.body, "more_body": more})
