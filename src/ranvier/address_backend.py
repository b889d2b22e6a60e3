"""An httpcore network backend that connects to addresses it chose itself.

Federation connects where server-name resolution points (SRV targets,
``.well-known`` delegation), and URL previews only to the addresses they
checked against the operator's denylist: in both, the host name in the
URL is not what the connection may resolve on its own. A subclass says
which endpoints a host and port stand for; they are tried in turn, and
when none takes the connection, the error names each with its cause.

A connection whose TLS handshake fails or is cancelled is closed at once.
httpcore's Trio backend closes it on an error, but not on a cancellation
(``trio.Cancelled`` is no ``Exception``), which a server stopping while a
request connects gives: the socket was then left to the garbage collector.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import trio

__all__ = ["AddressBackend", "DirectBackend", "format_endpoint", "root_cause"]


def format_endpoint(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def root_cause(exc: BaseException) -> str:
    """The message of the deepest exception behind ``exc`` that has one:
    httpcore's errors are often empty and wrap the one that says what
    happened (a certificate that does not match, a refused connection).
    """
    message = str(exc) or type(exc).__name__
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if str(current):
            message = str(current)
        current = current.__cause__ or current.__context__
    return message


class AddressBackend(httpcore.AsyncNetworkBackend):
    """Connects to the endpoints :meth:`endpoints` gives, in turn."""

    #: What uses the backend, for the refusal of Unix sockets.
    purpose = "this client"

    def __init__(self) -> None:
        self._backend = httpcore.TrioBackend()

    async def endpoints(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        """The ``(address, port)`` pairs to try for ``host`` and ``port``."""
        raise NotImplementedError

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failures: list[str] = []
        for address, endpoint_port in await self.endpoints(host, port):
            try:
                stream = await self._backend.connect_tcp(
                    address,
                    endpoint_port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
                return _ClosedOnFailedHandshake(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failures.append(f"{format_endpoint(address, endpoint_port)}: {root_cause(exc)}")
        if not failures:
            raise httpcore.ConnectError(f"no endpoint to connect to for {host}")
        raise httpcore.ConnectError(f"could not connect to {host}: " + "; ".join(failures))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol(f"{self.purpose} does not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class DirectBackend(AddressBackend):
    """Connects to the host and port asked for, resolving the name as
    httpcore's Trio backend does."""

    async def endpoints(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        return [(host, port)]


class _ClosedOnFailedHandshake(httpcore.AsyncNetworkStream):
    """A connection that is closed if its TLS handshake does not complete,
    for any reason: see the module's doc."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            # Closed without waiting, as trio.aclose_forcefully closes a
            # stream of Trio's: the socket closes before the first checkpoint.
            with trio.CancelScope() as scope:
                scope.cancel()
                await self._stream.aclose()
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
