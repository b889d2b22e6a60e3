"""Serving an ASGI application on one socket with hypercorn's Trio worker.

:class:`HttpListener` is a component in the homeserver's sense: its
``run`` is started with ``await nursery.start(listener.run)``, returns to
the starter only once the socket accepts connections (so a test or a
supervisor can connect straight away, to the port it is told), and stops
when its nursery is cancelled. Cancelling closes the socket and every open
connection; nothing outlives the nursery.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, Final, cast

import hypercorn.app_wrappers
import hypercorn.config
import hypercorn.trio.run
import hypercorn.typing
import trio

__all__ = ["AsgiApp", "HttpListener"]

_logger: Final = logging.getLogger("ranvier.http")

#: An ASGI 3 application, typed as loosely as ASGI itself.
AsgiApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class _HypercornConfig(hypercorn.config.Config):
    # hypercorn builds its SSL context from file names; ours is made by
    # ranvier.federation.transport.tls, so it is handed over as it is.
    # (The listening socket is ours too; see HttpListener._listen.)
    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._ssl_context = ssl_context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    @property
    def ssl_enabled(self) -> bool:
        return self._ssl_context is not None


class HttpListener:
    """Serves ``app`` on ``host``:``port``, over TLS if given an SSL context.

    ``port`` 0 asks the system for a free port; ``run`` reports the real one
    through ``task_status.started`` and keeps it in :attr:`port`.
    """

    def __init__(
        self,
        app: AsgiApp,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._address = ipaddress.ip_address(host)
        self.app = app
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        #: The port listened on, once ``run`` has started.
        self.port: int | None = None
        self._bind = f"[{host}]:{port}" if self._address.version == 6 else f"{host}:{port}"

    @property
    def scheme(self) -> str:
        """``https`` or ``http``."""
        return "http" if self.ssl_context is None else "https"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; report the bound port when listening.

        Raises OSError naming the address if it cannot be listened on (for
        example, the port is in use), before anything is reported.
        """
        config = _HypercornConfig(self.ssl_context)
        config.errorlog = _logger
        config.accesslog = None
        sock = self._listen(config.backlog)
        try:
            sockets = hypercorn.config.Sockets(
                secure_sockets=[sock] if self.ssl_context is not None else [],
                insecure_sockets=[] if self.ssl_context is not None else [sock],
                quic_sockets=[],
            )
            # hypercorn.trio.serve binds its own sockets; worker_serve, which
            # it wraps, takes ready ones.
            app = hypercorn.app_wrappers.ASGIWrapper(cast(hypercorn.typing.ASGIFramework, self.app))
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(hypercorn.trio.run.worker_serve, app, config, sockets=sockets)
                )
                self.port = sock.getsockname()[1]
                task_status.started(self.port)
        finally:
            sock.close()

    def _listen(self, backlog: int) -> socket.socket:
        # The socket is made here rather than by hypercorn so that a failure
        # to listen is a plain OSError naming the address, and so that the
        # socket is closed on every way out of run.
        family = socket.AF_INET6 if self._address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restart may listen again at once, while old connections
            # linger in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                # "::" then means IPv6 only, so a second listener can take
                # "0.0.0.0" on the same port, as the configuration allows.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {self._bind}: {exc.strerror}") from None
        return sock
