"""Requests to application services: the Application Service API's
transactions, user and alias queries, third-party lookups, and ping.

A service is a program of the operator's, usually on the same machine or
network, reached at the ``url`` of its registration over plain HTTP or
HTTPS (certificates checked against the system's CAs). Every request
carries ``Authorization: Bearer <hs_token>``, by which the service knows
the server. What an answer means is the caller's business; this module
sorts answers into what the callers need: delivered or to be retried, the
queried thing made or not, and the ping's errors as the spec names them.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

import httpx
import msgspec

from ranvier.core.appservices import AppService, AppServiceUnavailableError
from ranvier.errors import MatrixError
from ranvier.outbound_http import LazyHttpClient, capped_body
from ranvier.protocol.untrusted_json import DECODE_ERRORS, decode_untrusted_json

__all__ = ["HttpAppServiceClient"]

_log: Final = logging.getLogger(__name__)

_PREFIX: Final = "/_matrix/app/v1"
#: Services answer with small JSON objects; the ping echoes at most this of a bad answer.
_MAX_ECHOED_BODY: Final = 4096
#: The most a third-party lookup's answer may weigh: a protocol's metadata
#: or a page of locations or users is a few kilobytes; a service that
#: sends more is not read further.
MAX_THIRD_PARTY_ANSWER_BYTES: Final = 1024 * 1024


class HttpAppServiceClient:
    """One pooled HTTP client for every service; close it with :meth:`aclose`."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._lazy = LazyHttpClient(timeout=timeout)

    @property
    def _http(self) -> httpx.AsyncClient:
        return self._lazy.client

    async def aclose(self) -> None:
        await self._lazy.aclose()

    async def send_transaction(self, service: AppService, txn_id: str, body: bytes) -> None:
        url = _url(service, f"/transactions/{urllib.parse.quote(txn_id, safe='')}")
        try:
            response = await self._http.put(url, content=body, headers=_headers(service))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise AppServiceUnavailableError(f"{service.id}: {exc!r}") from exc
        if not response.is_success:
            raise AppServiceUnavailableError(
                f"{service.id} answered transaction {txn_id} with {response.status_code}"
            )

    async def query_user(self, service: AppService, user_id: str) -> bool:
        return await self._query(service, f"/users/{urllib.parse.quote(user_id, safe='')}")

    async def query_alias(self, service: AppService, alias: str) -> bool:
        return await self._query(service, f"/rooms/{urllib.parse.quote(alias, safe='')}")

    async def _query(self, service: AppService, path: str) -> bool:
        try:
            response = await self._http.get(_url(service, path), headers=_headers(service))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            _log.info("query %s of application service %s failed: %r", path, service.id, exc)
            return False
        return response.status_code == 200

    async def query_third_party(
        self, service: AppService, path: str, params: Sequence[tuple[str, str]]
    ) -> Any:
        """``GET /_matrix/app/v1/thirdparty/{path}`` with ``params`` as the
        query; the answer's JSON, unchecked. Raises
        :class:`AppServiceUnavailableError` for anything but a 200 with JSON
        of at most :data:`MAX_THIRD_PARTY_ANSWER_BYTES`.
        """
        url = _url(service, f"/thirdparty/{path}")
        try:
            async with self._http.stream(
                "GET", url, params=list(params), headers=_headers(service)
            ) as response:
                if response.status_code != 200:
                    raise AppServiceUnavailableError(
                        f"{service.id} answered thirdparty/{path} with {response.status_code}"
                    )
                body = await capped_body(response, MAX_THIRD_PARTY_ANSWER_BYTES)
                if body is None:
                    raise AppServiceUnavailableError(
                        f"{service.id} answered thirdparty/{path} with over"
                        f" {MAX_THIRD_PARTY_ANSWER_BYTES} bytes"
                    )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise AppServiceUnavailableError(f"{service.id}: {exc!r}") from exc
        try:
            return decode_untrusted_json(body)
        except DECODE_ERRORS as exc:
            raise AppServiceUnavailableError(
                f"{service.id} answered thirdparty/{path} with no JSON: {exc}"
            ) from None

    async def ping(self, service: AppService, transaction_id: str | None) -> int:
        """Ping the service; the milliseconds it took. Raises the spec's
        errors: ``M_URL_NOT_SET``, ``M_CONNECTION_TIMEOUT``,
        ``M_CONNECTION_FAILED`` and ``M_BAD_STATUS``.
        """
        if service.url is None:
            raise MatrixError(
                f"application service {service.id} has no URL configured",
                errcode="M_URL_NOT_SET",
                http_status=400,
            )
        body = {} if transaction_id is None else {"transaction_id": transaction_id}
        started = time.monotonic()
        try:
            response = await self._http.post(
                _url(service, "/ping"), content=msgspec.json.encode(body), headers=_headers(service)
            )
        except httpx.TimeoutException:
            raise MatrixError(
                f"the connection to application service {service.id} timed out",
                errcode="M_CONNECTION_TIMEOUT",
                http_status=504,
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise MatrixError(
                f"application service {service.id} could not be reached: {exc}",
                errcode="M_CONNECTION_FAILED",
                http_status=502,
            ) from None
        duration_ms = round((time.monotonic() - started) * 1000)
        if not response.is_success:
            raise MatrixError(
                f"application service {service.id} answered the ping with {response.status_code}",
                errcode="M_BAD_STATUS",
                http_status=502,
                status=response.status_code,
                body=response.text[:_MAX_ECHOED_BODY],
            )
        return duration_ms


def _url(service: AppService, path: str) -> str:
    assert service.url is not None  # callers send nothing to a service without one
    return service.url.rstrip("/") + _PREFIX + path


def _headers(service: AppService) -> dict[str, str]:
    return {
        "authorization": f"Bearer {service.hs_token}",
        "content-type": "application/json",
    }
