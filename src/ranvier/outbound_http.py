"""An HTTPS client made on first use, for servers that are not Matrix servers.

Push gateways and application services are reached with one pooled httpx
client each, which is only made when the first request goes out: a TLS
context with the system's CAs costs most of a megabyte, which a server
without pushers or services need not pay. Redirects are not followed and
the environment's proxies are not taken: the operator named the URL.

What such servers answer is read to a bound (:func:`capped_body`): none of
them is trusted with this server's memory.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import httpx

from ranvier.http_transport import DirectTransport, chunks_until
from ranvier.protocol.numbers import is_decimal_number

__all__ = ["LazyHttpClient", "capped_body"]


class LazyHttpClient:
    """One httpx client, made on first use; close it with :meth:`aclose`."""

    def __init__(self, *, timeout: float, ca_file: Path | None = None) -> None:
        self._timeout = timeout
        self._ca_file = ca_file
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            cafile = None if self._ca_file is None else str(self._ca_file)
            self._client = httpx.AsyncClient(
                transport=DirectTransport(ssl_context=ssl.create_default_context(cafile=cafile)),
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def capped_body(response: httpx.Response, limit: int) -> bytes | None:
    """The body of a streamed ``response``, or None once it is (or its
    Content-Length says it will be) over ``limit`` bytes."""
    length = response.headers.get("content-length", "")
    if is_decimal_number(length) and int(length) > limit:
        return None
    body = bytearray()
    chunks = chunks_until(response.aiter_bytes(), lambda: len(body) > limit)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            body += chunk
    return None if len(body) > limit else bytes(body)
