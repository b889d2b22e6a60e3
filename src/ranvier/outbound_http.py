"""An HTTPS client made on first use, for servers that are not Matrix servers.

Push gateways and application services are reached with one pooled httpx
client each, which is only made when the first request goes out: a TLS
context with the system's CAs costs most of a megabyte, which a server
without pushers or services need not pay. Redirects are not followed and
the environment's proxies are not taken: the operator named the URL.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

__all__ = ["LazyHttpClient"]


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
                verify=ssl.create_default_context(cafile=cafile),
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
