"""Fetching the URLs users name, for URL previews, without letting them
reach what the server can reach.

Invariants
----------

* **The address checked is the address connected to.** A host name is
  resolved once per connection, every address it resolves to is judged by
  the :class:`~ranvier.protocol.ip_ranges.AddressPolicy` (one denied
  address refuses the host), and the connection is made to those very
  addresses, never to the name. A DNS answer that changes between a check
  and a connect (DNS rebinding) therefore cannot slip a private address
  in. TLS is still verified against the URL's host name.
* **Redirects are new URLs**, followed by hand (at most
  :data:`MAX_REDIRECTS`), each checked as the first was: http or https only,
  its addresses judged when its connection is made.
* **Bounded**: a body is cut off at ``max_bytes`` while it streams (refused
  at once when its ``Content-Length`` says it will pass it; a gzip or
  deflate body also when it unpacks past it), and the whole
  fetch, redirects included, at ``timeout_seconds``. No proxy is taken
  from the environment, and no connection is kept alive after its answer.

Failures are MatrixErrors as the client should see them: 403
``M_FORBIDDEN`` for a denied address, 502 ``M_TOO_LARGE`` past the size
limit, 502 ``M_UNKNOWN`` for the rest (no answer, an error status, too many
redirects, too slow), each with a message saying which.
"""

from __future__ import annotations

import contextlib
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Final

import httpcore
import httpx
import trio

from ranvier.address_backend import AddressBackend
from ranvier.core.url_previews import FetchedUrl
from ranvier.errors import MatrixError
from ranvier.http_transport import chunks_until
from ranvier.protocol.ip_ranges import AddressPolicy
from ranvier.protocol.numbers import is_decimal_number

__all__ = ["MAX_REDIRECTS", "USER_AGENT", "Resolver", "UrlFetcher", "resolve_host"]

#: Redirects followed for one fetch; more is 502.
MAX_REDIRECTS: Final = 5
#: Sites tell bots apart by their User-Agent (some give OpenGraph tags to
#: bots only). The version is left out: every site linked would learn
#: which release runs here.
USER_AGENT: Final = "ranvier (Matrix homeserver; URL preview bot)"
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_ENCODINGS: Final = frozenset({"identity", "gzip", "x-gzip", "deflate"})
# zlib's window bits for a body in either the gzip or the zlib format.
_GZIP_OR_ZLIB: Final = zlib.MAX_WBITS | 32

#: The addresses a host name resolves to for a port, in the order to try.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve_host(host: str, port: int) -> Sequence[str]:
    """Every address of ``host`` from the system's resolver, without repeats."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    addresses: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class UrlFetcher:
    """Fetches http and https URLs within the policy and limits it is given
    (see the module's invariants).

    ``ssl_context`` verifies https servers; None means the system's CAs,
    loaded on the first fetch (not at start: a server that previews nothing
    need not hold them). ``resolve`` replaces the system's
    resolver (tests name hosts that only they know).
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        max_bytes: int,
        timeout_seconds: float,
        ssl_context: ssl.SSLContext | None = None,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.max_bytes = max_bytes
        self._timeout = timeout_seconds
        self._ssl_context = ssl_context
        self._backend = _CheckedBackend(policy, resolve)
        self._pool: httpcore.AsyncConnectionPool | None = None

    async def fetch(self, url: str, *, wanted: Callable[[str | None], bool]) -> FetchedUrl:
        """GET ``url``, following redirects. The body is read only when
        ``wanted`` says yes to the answer's Content-Type; otherwise the
        connection is closed after the headers and the body is None.

        Raises 400 ``M_INVALID_PARAM`` for a URL that is not http or https,
        and the module's failures.
        """
        current = _checked_url(url, invalid=_invalid_param)
        fetched: FetchedUrl | None = None
        with trio.move_on_after(self._timeout):
            fetched = await self._follow(current, wanted)
        if fetched is None:
            raise _bad_gateway(f"fetching {url} took longer than {self._timeout:g} s")
        return fetched

    async def _follow(self, url: httpx.URL, wanted: Callable[[str | None], bool]) -> FetchedUrl:
        for _ in range(MAX_REDIRECTS + 1):
            with _mapped_errors(url):
                async with self._connections().stream(
                    "GET",
                    httpcore.URL(
                        scheme=url.raw_scheme,
                        host=url.raw_host,
                        port=url.port,
                        target=url.raw_path,
                    ),
                    headers=[
                        (b"User-Agent", USER_AGENT.encode()),
                        (b"Accept", b"text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5"),
                        (b"Accept-Encoding", b"identity"),
                    ],
                ) as response:
                    location = _header(response.headers, b"location")
                    if response.status in _REDIRECT_STATUSES and location is not None:
                        url = _redirect_target(url, location)
                        continue
                    if not 200 <= response.status < 300:
                        raise _bad_gateway(f"{url.host} answered HTTP {response.status}")
                    content_type = _header(response.headers, b"content-type")
                    if not wanted(content_type):
                        return FetchedUrl(url=str(url), content_type=content_type, body=None)
                    body = await self._read(response, url)
                    return FetchedUrl(url=str(url), content_type=content_type, body=body)
        raise _bad_gateway(f"more than {MAX_REDIRECTS} redirects from {url.host}")

    async def _read(self, response: httpcore.Response, url: httpx.URL) -> bytes:
        declared = (_header(response.headers, b"content-length") or "").strip()
        if is_decimal_number(declared) and int(declared) > self.max_bytes:
            raise _too_large(url, self.max_bytes)
        encoding = (_header(response.headers, b"content-encoding") or "identity").strip().lower()
        if encoding not in _ENCODINGS:
            raise _bad_gateway(f"{url.host} answered in the {encoding!r} encoding, not read here")
        body = _Body(url, encoding, self.max_bytes)
        failure: MatrixError | None = None
        chunks = chunks_until(response.aiter_stream(), lambda: failure is not None)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                try:
                    body.add(chunk)
                except MatrixError as exc:
                    failure = exc
        if failure is not None:
            raise failure
        return body.finish()

    def _connections(self) -> httpcore.AsyncConnectionPool:
        if self._pool is None:
            # No keep-alive: a connection lives for one answer, so nothing
            # is left open for a shutdown to close.
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context or ssl.create_default_context(),
                max_keepalive_connections=0,
                network_backend=self._backend,
            )
        return self._pool


class _Body:
    """A body as it arrives, unpacked if it came compressed, within the
    limit both as sent and as unpacked."""

    def __init__(self, url: httpx.URL, encoding: str, limit: int) -> None:
        self._url = url
        self._limit = limit
        self._received = 0
        self._data = bytearray()
        # Identity is asked for; a server that compresses anyway is read.
        self._inflater = None if encoding == "identity" else zlib.decompressobj(_GZIP_OR_ZLIB)

    def add(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._limit:
            raise _too_large(self._url, self._limit)
        if self._inflater is None:
            self._data += chunk
        else:
            self._inflate(chunk)

    def finish(self) -> bytes:
        if self._inflater is not None:
            self._inflate(b"")
            if not self._inflater.eof:
                raise _bad_gateway(f"{self._url.host} answered with a compressed body cut short")
        return bytes(self._data)

    def _inflate(self, data: bytes) -> None:
        # Never more than one byte past the limit at a time: a small bomb
        # must not unpack whole before it is found out.
        assert self._inflater is not None
        while True:
            try:
                room = self._limit + 1 - len(self._data)
                self._data += self._inflater.decompress(data, room)
            except zlib.error:
                raise _bad_gateway(
                    f"{self._url.host} answered with a body that does not unpack"
                ) from None
            if len(self._data) > self._limit:
                raise _too_large(self._url, self._limit)
            data = self._inflater.unconsumed_tail
            if not data:
                return


class _AddressDeniedError(Exception):
    """A host that resolves to an address the policy denies."""


class _CheckedBackend(AddressBackend):
    """Connects to the addresses it checked, never to a name."""

    purpose = "URL previews"

    def __init__(self, policy: AddressPolicy, resolve: Resolver) -> None:
        super().__init__()
        self._policy = policy
        self._resolve = resolve

    async def endpoints(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        if not all(self._policy.allows(address) for address in addresses):
            raise _AddressDeniedError(host)
        return [(address, port) for address in addresses]


@contextlib.contextmanager
def _mapped_errors(url: httpx.URL) -> Iterator[None]:
    """httpcore's failures, and a denied address, as the client sees them."""
    host = url.host
    try:
        yield
    except _AddressDeniedError:
        raise MatrixError(
            f"{host} resolves to an address that URL previews may not fetch from",
            errcode="M_FORBIDDEN",
            http_status=403,
        ) from None
    except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
        raise _bad_gateway(f"could not reach {host}: {_said(exc)}") from None
    except (httpcore.TimeoutException, httpcore.NetworkError) as exc:
        raise _bad_gateway(f"the connection to {host} failed: {_said(exc)}") from None
    except (httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise _bad_gateway(f"{host} did not answer in HTTP: {_said(exc)}") from None


def _said(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _checked_url(url: str, *, invalid: Callable[[str], MatrixError]) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise invalid(f"{url!r} is not a URL") from None
    if parsed.scheme not in ("http", "https"):
        raise invalid(f"only http and https URLs are fetched, not {parsed.scheme or 'this'!r}")
    if not parsed.host:
        raise invalid(f"{url!r} names no host")
    return parsed.copy_with(fragment=None)


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    try:
        target = url.join(location)
    except (httpx.InvalidURL, ValueError):
        raise _bad_gateway(f"{url.host} redirected to {location!r}, which is not a URL") from None
    return _checked_url(
        str(target),
        invalid=lambda why: _bad_gateway(f"{url.host} redirected to a URL not fetched: {why}"),
    )


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _invalid_param(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _bad_gateway(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_UNKNOWN", http_status=502)


def _too_large(url: httpx.URL, limit: int) -> MatrixError:
    return MatrixError(
        f"{url.host} answered with more than {limit} bytes, the most previews read",
        errcode="M_TOO_LARGE",
        http_status=502,
    )
