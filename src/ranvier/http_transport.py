"""httpx transports over httpcore connection pools of our own making.

httpx's own transport builds its pool on httpcore's Trio backend, whose
connections are left to the garbage collector when their TLS handshake is
cancelled (see :mod:`ranvier.address_backend`). These build theirs on an
:class:`~ranvier.address_backend.AddressBackend`, which closes them at
once, and read the body of a response within the limit its request sets
(:data:`MAX_BODY_EXTENSION`).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Final

import httpcore
import httpx
import trio

from ranvier.address_backend import DirectBackend, root_cause

__all__ = [
    "MAX_BODY_EXTENSION",
    "DirectTransport",
    "PoolTransport",
    "ResponseTooLargeError",
    "chunks_until",
]

#: The request extension that caps the response body, in bytes; set by
#: :func:`ranvier.federation.transport.resolve.read_body`.
MAX_BODY_EXTENSION: Final = "ranvier.max_body_bytes"


class ResponseTooLargeError(Exception):
    """A response body longer than the request's :data:`MAX_BODY_EXTENSION`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body is over {limit} bytes")
        self.limit = limit


class PoolTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one httpcore pool whose connections
    ``backend`` makes, speaking only ``schemes``."""

    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend,
        *,
        schemes: Iterable[str],
        ssl_context: ssl.SSLContext,
        max_connections: int | None,
        max_keepalive_connections: int | None,
        keepalive_expiry: float | None,
    ) -> None:
        self._schemes = frozenset(schemes)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in self._schemes:
            spoken = " and ".join(sorted(self._schemes))
            raise httpx.UnsupportedProtocol(
                f"only {spoken} is spoken here, not {request.url.scheme!r}", request=request
            )
        assert isinstance(request.stream, AsyncIterable)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            core_response = await self._pool.handle_async_request(core_request)
        assert isinstance(core_response.stream, AsyncIterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, request),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class DirectTransport(PoolTransport):
    """HTTP and HTTPS to the host a URL names, as httpx's own transport
    speaks them by default (its limits included), TLS checked with
    ``ssl_context``."""

    def __init__(self, *, ssl_context: ssl.SSLContext) -> None:
        super().__init__(
            DirectBackend(),
            schemes=("http", "https"),
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
        )


async def chunks_until(
    chunks: AsyncIterable[bytes], stop: Callable[[], bool]
) -> AsyncGenerator[bytes, None]:
    """The chunks of a body as they are read, until it ends or until
    ``stop()`` holds before a read.

    Between the socket and the reader, httpx and httpcore stack several
    async generators. A reader that stops iterating early leaves the lower
    ones suspended, and Trio warns when the garbage collector finds them.
    So once ``stop()`` holds, the next read is not just left: it is
    cancelled, and the cancellation, raised at the socket, closes every
    generator (and the connection, whose body was not read) on its way up
    to here.
    """
    iterator = aiter(chunks)
    while True:
        with trio.CancelScope() as scope:
            if stop():
                scope.cancel()
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            return
        yield chunk


class _ResponseStream(httpx.AsyncByteStream):
    """The body as httpcore reads it, with httpcore's errors turned into
    httpx's and the body limit enforced: past it, reading stops
    (:func:`chunks_until`) and :class:`ResponseTooLargeError` is raised.
    """

    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Read now, not at construction: the reader sets it once it knows
        # the status (error bodies get a smaller limit).
        limit: int | None = self._request.extensions.get(MAX_BODY_EXTENSION)
        size = 0

        def over() -> bool:
            return limit is not None and size > limit

        with _httpx_errors(self._request):
            async with contextlib.aclosing(chunks_until(self._stream, over)) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    if limit is None or size <= limit:
                        yield chunk
        if limit is not None and size > limit:
            raise ResponseTooLargeError(limit)

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


# httpcore's errors and the httpx errors callers expect for them, most
# specific first (the timeouts are subclasses of the network errors' base).
_ERROR_MAP: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Any:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _ERROR_MAP:
            if isinstance(exc, core_type):
                raise httpx_type(root_cause(exc), request=request) from exc
        raise
