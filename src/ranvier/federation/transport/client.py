"""Signed HTTPS requests to other homeservers.

:class:`FederationHttpClient` sends each request to the server name's
resolved endpoints (:mod:`.resolve`) with the ``Host`` header and TLS name
resolution chose, signs it with ``X-Matrix`` as this server
(:mod:`ranvier.protocol.x_matrix`), and hands back the JSON answer or an
error that says whether the server answered at all:

* :class:`FederationConnectionError`: no answer (DNS, connection refused,
  TLS, a timeout, a connection dropped mid-response). Callers back off from
  the destination. A GET, HEAD, PUT or DELETE whose connection closed
  before any answer came (a kept-alive connection the server had just
  closed, typically) is first sent once more, on a new connection.
* :class:`FederationRequestError`: the server answered with a non-2xx
  status; it carries the status and the Matrix ``errcode``.
* :class:`FederationResponseError`: a 2xx answer that cannot be used (too
  large, not JSON).

Connection pooling is per server name, not per IP address: the pool's key is
a URL built from the server name itself, and the transport looks the
endpoints up when it opens a connection. So a connection whose certificate
was checked for one server is never reused for another server that happens
to share its address (a hosting provider's, say).

The client has no background task; it is an async context manager, like
``httpx.AsyncClient`` and ``trio.open_nursery``. :meth:`run` wraps that for a
nursery that starts components with ``nursery.start``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import ssl
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import httpx
import msgspec
import trio

from ranvier.config import Config
from ranvier.errors import BadJsonError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.numbers import is_decimal_number
from ranvier.protocol.signing import SigningKeyLike
from ranvier.protocol.untrusted_json import decode_untrusted_json

from .request_signing import XMatrixAuth
from .resolve import (
    DEFAULT_FEDERATION_PORT,
    DnsResolver,
    Endpoint,
    ResponseTooLargeError,
    RoutedTransport,
    ServerNameResolutionError,
    ServerNameResolver,
    SystemDnsResolver,
    parse_server_name,
    read_body,
    read_body_into_buffer,
)
from .tls import client_ssl_context

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "FederationConnectionError",
    "FederationError",
    "FederationHttpClient",
    "FederationRequestError",
    "FederationResponse",
    "FederationResponseError",
    "FederationTimeoutError",
    "NoDestinationAnsweredError",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
# What a request's answer is read into: its body, or whatever a streamed
# answer's reader makes of it.
_Body = TypeVar("_Body")

#: The default cap on a response body. Large rooms' ``send_join`` and
#: ``state`` answers run to tens of megabytes; callers expecting more pass
#: their own limit.
DEFAULT_MAX_RESPONSE_BYTES: Final = 100 * 1024 * 1024
# Error bodies are only read for their errcode and message.
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
_DEFAULT_CONNECT_TIMEOUT: Final = 10.0
_USER_AGENT: Final = "ranvier"
_CLOSE_TIMEOUT: Final = 5.0
#: Methods whose request may be sent a second time when the connection
#: dropped before any answer: a repeated GET reads again, and a repeated
#: PUT (a transaction under the same ID, a join event) is taken as a repeat.
_RETRIED_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: How a connection that closed before the answer's head fails, as opposed
#: to one never opened or too slow.
_DROPPED_BEFORE_ANSWER: Final = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class FederationError(Exception):
    """A request to another homeserver that did not give a usable answer."""

    def __init__(self, destination: str, message: str) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination


class FederationConnectionError(FederationError):
    """The destination could not be reached or did not finish answering."""


class FederationTimeoutError(FederationConnectionError):
    """The request did not finish within its time limit."""


class FederationRequestError(FederationError):
    """The destination answered with a non-2xx status.

    ``errcode`` and ``error`` come from a Matrix error body, when the
    answer had one; ``body`` is the decoded JSON (or None).
    """

    def __init__(
        self,
        destination: str,
        *,
        method: str,
        path: str,
        status: int,
        errcode: str | None,
        error: str | None,
        body: Any,
    ) -> None:
        detail = f"{errcode}: {error}" if errcode else (error or "no Matrix error body")
        super().__init__(destination, f"{method} {path} answered {status} ({detail})")
        self.method = method
        self.path = path
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


class FederationResponseError(FederationError):
    """The destination answered 2xx with a body that cannot be used."""


class NoDestinationAnsweredError(FederationError):
    """Every destination tried failed; ``failures`` says how, in order."""

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        if failures:
            summary = "; ".join(f"{name}: {_describe(exc)}" for name, exc in failures)
            message = f"no destination answered ({summary})"
        else:
            message = "there was no destination to try"
        super().__init__(", ".join(name for name, _ in failures) or "-", message)
        self.failures = list(failures)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FederationError):
        text = str(exc)
        prefix = f"{exc.destination}: "
        return text.removeprefix(prefix)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class FederationResponse:
    """A 2xx answer, with its body as received."""

    destination: str
    status: int
    headers: httpx.Headers
    body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body decoded; :class:`FederationResponseError` if it is not JSON."""
        try:
            return decode_untrusted_json(self.body)
        except msgspec.DecodeError as exc:
            raise FederationResponseError(
                self.destination, f"the answer is not valid JSON: {exc}"
            ) from None


class FederationHttpClient:
    """The homeserver's one pooled client for outgoing federation requests.

    ``server_name`` and ``signing_key`` are ours: every request is signed
    with them. ``resolver`` resolves destinations; without one, a
    :class:`~.resolve.ServerNameResolver` over ``dns`` (real DNS by default)
    is made, checking ``.well-known`` servers with the same ``ssl_context``
    as federation requests, and closed with this client.

    ``request_timeout`` bounds a whole request, from resolving the name to
    the end of the body; a caller that wants less wraps the call in
    ``trio.fail_after``. ``max_response_bytes`` bounds bodies, and can be
    changed per request.
    """

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKeyLike,
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: ServerNameResolver | None = None,
        dns: DnsResolver | None = None,
        well_known_port: int = 443,
        request_timeout: float = 60.0,
        connect_timeout: float = _DEFAULT_CONNECT_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_keepalive_connections: int = 100,
    ) -> None:
        parse_server_name(server_name)
        self.server_name = server_name
        self._signing_key = signing_key
        self._ssl_context = ssl_context if ssl_context is not None else client_ssl_context()
        self._owns_resolver = resolver is None
        if resolver is None:
            resolver = ServerNameResolver(
                dns if dns is not None else SystemDnsResolver(),
                ssl_context=self._ssl_context,
                well_known_port=well_known_port,
            )
        self.resolver = resolver
        self.request_timeout = request_timeout
        self.max_response_bytes = max_response_bytes
        self._closed = False
        self._http = httpx.AsyncClient(
            transport=RoutedTransport(
                self._route_connection,
                ssl_context=self._ssl_context,
                max_keepalive_connections=max_keepalive_connections,
            ),
            timeout=httpx.Timeout(request_timeout, connect=min(connect_timeout, request_timeout)),
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_config(
        cls,
        config: Config,
        signing_key: SigningKeyLike,
        **kwargs: Any,
    ) -> FederationHttpClient:
        """A client set up from a :class:`ranvier.config.Config`: its server
        name, certificate checking, CA file and request timeout.
        """
        federation = config.federation
        return cls(
            config.server_name,
            signing_key,
            ssl_context=client_ssl_context(
                verify=federation.verify_certificates, ca_file=federation.ca_file
            ),
            request_timeout=federation.request_timeout_seconds,
            **kwargs,
        )

    # Lifecycle

    async def __aenter__(self) -> FederationHttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections. Requests after this raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        # Shielded, so a cancelled owner still closes its sockets; bounded,
        # so a peer that never finishes closing cannot hold it up.
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._http.aclose()
            if self._owns_resolver:
                await self.resolver.aclose()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client open until cancelled, for ``nursery.start``."""
        async with self:
            task_status.started()
            await trio.sleep_forever()

    # Requests

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        max_response_bytes: int | None = None,
    ) -> Any:
        """GET ``path`` from ``destination`` and return the decoded JSON answer."""
        response = await self.request(
            "GET",
            destination,
            path,
            query=query,
            max_response_bytes=max_response_bytes,
        )
        return response.json()

    async def put_json(
        self,
        destination: str,
        path: str,
        content: Any,
        *,
        query: Mapping[str, Any] | None = None,
        max_response_bytes: int | None = None,
    ) -> Any:
        """PUT ``content`` as JSON and return the decoded JSON answer."""
        response = await self.request(
            "PUT",
            destination,
            path,
            query=query,
            content=content,
            max_response_bytes=max_response_bytes,
        )
        return response.json()

    async def post_json(
        self,
        destination: str,
        path: str,
        content: Any,
        *,
        query: Mapping[str, Any] | None = None,
        max_response_bytes: int | None = None,
    ) -> Any:
        """POST ``content`` as JSON and return the decoded JSON answer."""
        response = await self.request(
            "POST",
            destination,
            path,
            query=query,
            content=content,
            max_response_bytes=max_response_bytes,
        )
        return response.json()

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        content: Any = None,
        max_response_bytes: int | None = None,
    ) -> FederationResponse:
        """Send one signed request and return its 2xx answer.

        ``path`` starts with ``/_matrix/`` and is already percent-encoded;
        ``query`` values are strings, integers or sequences of them (a key
        repeated). ``content``, when not None, is sent as JSON; POST and PUT
        send ``{}`` without it, as the spec requires a body for them.

        Raises :class:`FederationConnectionError` (no answer),
        :class:`FederationRequestError` (non-2xx) or
        :class:`FederationResponseError` (a body over the limit), and
        :class:`~ranvier.errors.BadJsonError` before sending anything if
        ``content`` is not canonical JSON.
        """
        status, headers, answer = await self._request(
            method, destination, path, query, content, max_response_bytes, read_body
        )
        return FederationResponse(
            destination=destination, status=status, headers=headers, body=answer
        )

    async def request_into_buffer(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        content: Any = None,
        max_response_bytes: int | None = None,
    ) -> bytearray:
        """:meth:`request`, for a big answer: only its body, read into one
        buffer of the length its Content-Length gives, so that it is never
        held twice (:func:`~.resolve.read_body_into_buffer`). What is
        decoded from it may keep views into it rather than copies.
        """
        _, _, answer = await self._request(
            method, destination, path, query, content, max_response_bytes, read_body_into_buffer
        )
        return answer

    async def request_streamed(
        self,
        method: str,
        destination: str,
        path: str,
        consume: Callable[[httpx.Headers, AsyncIterator[bytes]], Awaitable[_T]],
        *,
        query: Mapping[str, Any] | None = None,
        max_response_bytes: int | None = None,
    ) -> _T:
        """:meth:`request`, for an answer too big to hold: ``consume`` gets
        its headers and its body a piece at a time as it arrives, and what
        it returns is returned. Past ``max_response_bytes`` the pieces stop
        with :class:`FederationResponseError`; whatever else ``consume``
        raises comes out as it is.
        """

        async def read(response: httpx.Response, limit: int) -> _T:
            async with contextlib.aclosing(_body_chunks(response, limit)) as chunks:
                return await consume(response.headers, chunks)

        _, _, result = await self._request(
            method, destination, path, query, None, max_response_bytes, read
        )
        return result

    async def fetch_url(
        self,
        url: str,
        consume: Callable[[httpx.Headers, AsyncIterator[bytes]], Awaitable[_T]],
        *,
        max_response_bytes: int | None = None,
    ) -> _T:
        """GET ``url``, an ``https://`` address another server gave (the
        ``Location`` of a media answer), and hand its 2xx answer to
        ``consume`` as :meth:`request_streamed` does.

        Unlike :meth:`request` it is not signed and not routed by server
        name: it is a plain HTTPS request, with the certificate checks
        and time limit federation requests have, following redirects.
        Raises the same errors as :meth:`request`, naming the URL's host.
        """
        if self._closed:
            raise RuntimeError("the federation client is closed")
        parsed = httpx.URL(url)
        host = parsed.host or url
        if parsed.scheme != "https":
            raise FederationResponseError(host, f"{url!r} is not an https:// URL")
        limit = self.max_response_bytes if max_response_bytes is None else max_response_bytes
        try:
            with trio.fail_after(self.request_timeout):
                async with (
                    httpx.AsyncClient(
                        verify=self._ssl_context,
                        follow_redirects=True,
                        max_redirects=5,
                        trust_env=False,
                        timeout=self.request_timeout,
                    ) as http,
                    http.stream("GET", parsed, headers={"User-Agent": _USER_AGENT}) as response,
                ):
                    if not 200 <= response.status_code < 300:
                        raise await self._request_error(response, host, "GET", parsed.path)
                    async with contextlib.aclosing(_body_chunks(response, limit)) as chunks:
                        return await consume(response.headers, chunks)
        except trio.TooSlowError:
            raise FederationTimeoutError(
                host, f"GET {url} got no complete answer within {self.request_timeout:g}s"
            ) from None
        except ResponseTooLargeError:
            raise FederationResponseError(
                host, f"GET {url}: the answer is over {limit} bytes"
            ) from None
        except httpx.HTTPError as exc:
            raise FederationConnectionError(host, f"GET {url}: {exc}") from None

    async def _request(
        self,
        method: str,
        destination: str,
        path: str,
        query: Mapping[str, Any] | None,
        content: Any,
        max_response_bytes: int | None,
        read: Callable[[httpx.Response, int], Awaitable[_Body]],
    ) -> tuple[int, httpx.Headers, _Body]:
        if self._closed:
            raise RuntimeError("the federation client is closed")
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError(f"a request path must start with '/', not {path!r}")
        if content is None and method in ("POST", "PUT"):
            content = {}
        target = path + _query_string(query)
        body = encode_canonical_json(content) if content is not None else None
        limit = self.max_response_bytes if max_response_bytes is None else max_response_bytes
        try:
            with trio.fail_after(self.request_timeout):
                return await self._send(method, destination, target, body, limit, read)
        except trio.TooSlowError:
            raise FederationTimeoutError(
                destination,
                f"{method} {path} got no complete answer within {self.request_timeout:g}s",
            ) from None

    async def _send(
        self,
        method: str,
        destination: str,
        target: str,
        body: bytes | None,
        limit: int,
        read: Callable[[httpx.Response, int], Awaitable[_Body]],
    ) -> tuple[int, httpx.Headers, _Body]:
        path = target.partition("?")[0]
        try:
            route = await self.resolver.route(destination)
        except ServerNameResolutionError as exc:
            raise FederationConnectionError(destination, str(exc)) from None
        pool_host, pool_port = _pool_origin(destination)
        headers = {"Host": route.host_header, "User-Agent": _USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._http.build_request(
            method,
            httpx.URL(
                scheme="https", host=pool_host, port=pool_port, raw_path=target.encode("ascii")
            ),
            headers=headers,
            content=body,
            extensions={"sni_hostname": route.tls_server_name},
        )
        auth = XMatrixAuth(
            origin=self.server_name, destination=destination, signing_key=self._signing_key
        )
        for attempt in (1, 2):
            try:
                response = await self._http.send(request, auth=auth, stream=True)
                break
            except ServerNameResolutionError as exc:
                raise FederationConnectionError(destination, str(exc)) from None
            except _DROPPED_BEFORE_ANSWER as exc:
                # Most often a kept-alive connection the server closed as
                # the request went out; the pool has discarded it, so the
                # next try opens a new one. Only requests that do the same
                # when repeated are sent twice.
                if attempt == 1 and method in _RETRIED_METHODS:
                    _log.debug("%s %s to %s: %s; sending it again", method, path, destination, exc)
                    continue
                raise FederationConnectionError(destination, f"{method} {path}: {exc}") from None
            except httpx.TransportError as exc:
                raise FederationConnectionError(destination, f"{method} {path}: {exc}") from None
        try:
            if not 200 <= response.status_code < 300:
                raise await self._request_error(response, destination, method, path)
            try:
                content = await read(response, limit)
            except ResponseTooLargeError:
                raise FederationResponseError(
                    destination, f"{method} {path}: the answer is over {limit} bytes"
                ) from None
        except httpx.TransportError as exc:
            raise FederationConnectionError(destination, f"{method} {path}: {exc}") from None
        finally:
            await response.aclose()
        return response.status_code, response.headers, content

    async def _request_error(
        self, response: httpx.Response, destination: str, method: str, path: str
    ) -> FederationRequestError:
        errcode = error = decoded = None
        with contextlib.suppress(ResponseTooLargeError, msgspec.DecodeError):
            decoded = decode_untrusted_json(await read_body(response, _MAX_ERROR_BODY_BYTES))
        if isinstance(decoded, dict):
            if isinstance(decoded.get("errcode"), str):
                errcode = decoded["errcode"]
            if isinstance(decoded.get("error"), str):
                error = decoded["error"]
        return FederationRequestError(
            destination,
            method=method,
            path=path,
            status=response.status_code,
            errcode=errcode,
            error=error,
            body=decoded,
        )

    async def _route_connection(self, host: str, port: int) -> Sequence[Endpoint]:
        """Where a new pooled connection for the URL ``host:port`` goes: the
        endpoints of the server name :func:`_pool_origin` made it from.
        """
        if host.endswith("."):
            name = host[:-1]
        elif ":" in host:
            name = f"[{host}]:{port}"
        else:
            name = f"{host}:{port}"
        resolved = await self.resolver.resolve(name)
        return resolved.endpoints

    # Trying servers in turn

    async def try_destinations(
        self,
        destinations: Iterable[str],
        attempt: Callable[[str], Awaitable[_T]],
        *,
        timeout_per_destination: float | None = None,
        should_try_next: Callable[[BaseException], bool] | None = None,
    ) -> _T:
        """Run ``attempt(destination)`` for each destination in turn until
        one succeeds, and return its result.

        Our own server name and repeats are skipped. Each attempt gets
        ``timeout_per_destination`` seconds (if given). Which failures move
        on to the next destination is ``should_try_next``'s call; by default
        any connection or response failure, a timeout, a 5xx, 429, or an
        unknown endpoint (404/405 ``M_UNRECOGNIZED``), while other 4xx
        answers are the destination's considered refusal and are raised at
        once. When every destination fails,
        :class:`NoDestinationAnsweredError` lists how each did.
        """
        decide = should_try_next if should_try_next is not None else _worth_trying_elsewhere
        failures: list[tuple[str, BaseException]] = []
        seen: set[str] = set()
        for destination in destinations:
            if destination == self.server_name or destination in seen:
                continue
            seen.add(destination)
            try:
                if timeout_per_destination is None:
                    return await attempt(destination)
                with trio.fail_after(timeout_per_destination):
                    return await attempt(destination)
            except trio.TooSlowError:
                failure: BaseException = FederationTimeoutError(
                    destination, f"no answer within {timeout_per_destination:g}s"
                )
            except FederationError as exc:
                if not decide(exc):
                    raise
                failure = exc
            _log.info("trying the next destination after %s", failure)
            failures.append((destination, failure))
        raise NoDestinationAnsweredError(failures)


def _pool_origin(server_name: str) -> tuple[str, int | None]:
    """The URL host and port that stand for ``server_name`` in the pool.

    The URL names the destination, not where it lives: the connection pool
    is keyed by it, and the transport asks the resolver where to connect.
    So every server name needs its own key. A hostname without a port gets
    a trailing dot, which keeps ``example.org`` apart from
    ``example.org:443``; an IP literal without a port is the same server as
    with port 8448, so it gets that port.
    """
    host, port = parse_server_name(server_name)
    if port is not None:
        return host, port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host + ".", None
    return host, DEFAULT_FEDERATION_PORT


def _worth_trying_elsewhere(exc: BaseException) -> bool:
    if isinstance(exc, FederationRequestError):
        return (
            exc.status >= 500
            or exc.status == 429
            or (exc.status in (404, 405) and exc.errcode in (None, "M_UNRECOGNIZED"))
        )
    return isinstance(exc, FederationError)


def _query_string(query: Mapping[str, Any] | None) -> str:
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        values = value if isinstance(value, list | tuple) else (value,)
        for item in values:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise BadJsonError(
                    f"query parameter {name!r} must be a string or an integer, not"
                    f" {type(item).__name__}"
                )
            pairs.append((name, str(item)))
    return "?" + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


async def _body_chunks(response: httpx.Response, limit: int) -> AsyncGenerator[bytes, None]:
    """A streamed response's body as it arrives, stopped with
    :class:`~.resolve.ResponseTooLargeError` once it passes ``limit``
    bytes (at once, if its Content-Length says it will). The count is kept
    here, so it holds for any transport.
    """
    length = response.headers.get("content-length")
    if length is not None and is_decimal_number(length) and int(length) > limit:
        raise ResponseTooLargeError(limit)
    size = 0
    pieces = response.aiter_bytes()
    finished = False
    try:
        async for chunk in pieces:
            size += len(chunk)
            if size > limit:
                raise ResponseTooLargeError(limit)
            yield chunk
        finished = True
    finally:
        if not finished:
            # httpx's generators under this one end only when their stream
            # does: close it, then let them run into that end, rather than
            # leave them suspended for the garbage collector.
            await response.aclose()
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                async for _ in pieces:
                    pass
