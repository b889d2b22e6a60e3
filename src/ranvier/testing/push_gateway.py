"""A push gateway to test pushers against: the Push Gateway API's
``POST /_matrix/push/v1/notify`` over HTTPS on loopback, recording every
notification and answering as the test tells it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import trio

from ranvier.web import Receive, Scope, Send, only_http

from .network import Pki, serve, whole_body

__all__ = ["NOTIFY_PATH", "FakePushGateway"]

NOTIFY_PATH: Final = "/_matrix/push/v1/notify"


@dataclass
class FakePushGateway:
    """An ASGI push gateway; :meth:`start` serves it and gives its URL.

    ``status`` is the answer's HTTP status (a notification is recorded only
    under 200), ``rejected`` the pushkeys the answer lists as rejected;
    ``answer``, when set, is the answer's body as sent instead.
    """

    status: int = 200
    rejected: list[str] = field(default_factory=list)
    answer: bytes | None = None
    #: Notifications received and not yet taken by :meth:`next`.
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def start(self, nursery: trio.Nursery, pki: Pki) -> str:
        """Serve on 127.0.0.1 until ``nursery`` ends; the URL pushers name."""
        port = await serve(nursery, self, pki.server_context("127.0.0.1"))
        self.url = f"https://127.0.0.1:{port}{NOTIFY_PATH}"
        return self.url

    async def next(self) -> dict[str, Any]:
        """The oldest notification not yet taken, waiting for one if need be
        (bound the wait with a cancel scope).
        """
        while not self.received:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.received.pop(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await only_http(scope, receive, send):
            return
        body = await whole_body(receive)
        status = self.status
        if status == 200 and scope["path"] == NOTIFY_PATH:
            self.received.append(msgspec.json.decode(body)["notification"])
            self._arrived.set()
        answer = self.answer
        if answer is None:
            answer = msgspec.json.encode({"rejected": self.rejected})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})
