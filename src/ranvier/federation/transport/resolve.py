"""Where to connect for a server name, and how to present ourselves there.

The specification (server-server API, "Resolving server names") turns a
server name into three things that do not always agree: the address and port
to connect to, the ``Host`` header to send, and the name the TLS certificate
must be valid for. Delegation through ``/.well-known/matrix/server`` changes
all three; an SRV record changes only the address and port, because DNS is
not trusted to vouch for a server's identity, the certificate is.

Resolution happens in two stages so that neither is repeated needlessly:

* :meth:`ServerNameResolver.route` settles the ``Host`` header, the TLS name
  and what must be looked up in DNS. It needs at most the ``.well-known``
  document, which is cached as that document's HTTP headers allow.
* :meth:`ServerNameResolver.endpoints` does the DNS lookups (SRV, then AAAA
  and A) for a route, and is only needed when a new connection is opened.

DNS comes through the :class:`DnsResolver` Protocol, so tests and embedding
programs can answer lookups themselves; :class:`SystemDnsResolver` is the
real one.

This module also holds :class:`RoutedTransport`, the httpx transport that
opens each connection where a routing function says rather than where the
URL's host would lead. The ``.well-known`` fetch uses it to look hosts up
through the same :class:`DnsResolver`; the federation client uses it to send
each server's requests to that server's endpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import ipaddress
import logging
import random
import re
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import httpx
import msgspec
import trio

from ranvier.address_backend import AddressBackend
from ranvier.http_transport import MAX_BODY_EXTENSION, PoolTransport, ResponseTooLargeError
from ranvier.protocol.numbers import is_decimal_number
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.protocol.x_matrix import split_server_name

__all__ = [
    "DEFAULT_FEDERATION_PORT",
    "MAX_BODY_EXTENSION",
    "DnsResolver",
    "Endpoint",
    "ResolvedServer",
    "ResponseTooLargeError",
    "RoutedTransport",
    "ServerNameResolutionError",
    "ServerNameResolver",
    "ServerRoute",
    "SrvRecord",
    "SystemDnsResolver",
    "parse_server_name",
    "read_body",
    "read_body_into_buffer",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The port a server listens on for federation when nothing says otherwise.
DEFAULT_FEDERATION_PORT: Final = 8448

# SRV service names, newest first: _matrix-fed is the one registered with
# IANA (spec v1.8); _matrix is deprecated but still published by many servers.
_SRV_PREFIXES: Final = ("_matrix-fed._tcp.", "_matrix._tcp.")

# .well-known caching bounds. The spec recommends 24 hours when the response
# says nothing and a 48-hour ceiling; the floor stops a server that answers
# "no-cache" from making us fetch on every request. Failures are cached for
# a short time first, doubling on each failure in a row up to an hour.
_WELL_KNOWN_DEFAULT_TTL: Final = 24 * 3600.0
_WELL_KNOWN_MAX_TTL: Final = 48 * 3600.0
_WELL_KNOWN_MIN_TTL: Final = 5 * 60.0
_WELL_KNOWN_FIRST_FAILURE_TTL: Final = 5 * 60.0
_WELL_KNOWN_MAX_FAILURE_TTL: Final = 3600.0
_WELL_KNOWN_MAX_BYTES: Final = 50 * 1024
_WELL_KNOWN_TIMEOUT: Final = 10.0
_WELL_KNOWN_MAX_REDIRECTS: Final = 5
_WELL_KNOWN_CACHE_SIZE: Final = 10_000

_MAX_AGE_RE: Final = re.compile(
    r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*\"?(\d+)\"?", re.IGNORECASE | re.ASCII
)
_NO_CACHE_RE: Final = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\b", re.IGNORECASE)


class ServerNameResolutionError(Exception):
    """A server name that cannot be turned into an address to connect to.

    Either the name itself is malformed, or DNS has no usable answer for it
    (no addresses, an SRV record saying the service is not offered, or a DNS
    failure). The federation client reports it as a connection error, so the
    caller backs off from that server as it would from one that is down.
    """

    def __init__(self, server_name: str, problem: str) -> None:
        super().__init__(f"cannot resolve server name {server_name!r}: {problem}")
        self.server_name = server_name
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One IP address and port to try a connection on."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One answer to an SRV query, as RFC 2782 defines its fields."""

    priority: int
    weight: int
    port: int
    #: A hostname without the trailing dot; ``"."`` means "no such service".
    target: str


@dataclass(frozen=True, slots=True)
class ServerRoute:
    """What resolution decides before any DNS lookup of the final host.

    ``connect_host`` is an IP literal or a hostname; with ``connect_port``
    None, its SRV records are looked up and, if it has none, port 8448 is
    used.
    """

    server_name: str
    #: The ``Host`` header to send (the server name, or the delegated name).
    host_header: str
    #: The name the certificate must be valid for, and the SNI unless it is
    #: an IP address.
    tls_server_name: str
    connect_host: str
    connect_port: int | None


@dataclass(frozen=True, slots=True)
class ResolvedServer:
    """A route together with the endpoints its DNS lookups gave, best first."""

    route: ServerRoute
    endpoints: tuple[Endpoint, ...]

    @property
    def server_name(self) -> str:
        return self.route.server_name

    @property
    def host_header(self) -> str:
        return self.route.host_header

    @property
    def tls_server_name(self) -> str:
        return self.route.tls_server_name


class DnsResolver(Protocol):
    """The DNS lookups server-name resolution needs.

    Both methods return an empty sequence when the name has no such records
    (NXDOMAIN or no answer) and raise :class:`ServerNameResolutionError` when
    DNS itself fails (timeouts, SERVFAIL), so that a failing DNS server is
    not mistaken for a server name without SRV records.
    """

    async def lookup_srv(self, name: str) -> Sequence[SrvRecord]: ...

    async def lookup_addresses(self, host: str) -> Sequence[str]: ...


def parse_server_name(server_name: str) -> tuple[str, int | None]:
    """Split a server name into its host and optional port, IPv6 literals
    without their brackets.

    The grammar is :func:`~ranvier.protocol.x_matrix.split_server_name`'s;
    a name outside it raises :class:`ServerNameResolutionError`.
    """
    try:
        host, port = split_server_name(server_name)
    except ValueError as exc:
        raise ServerNameResolutionError(str(server_name), str(exc)) from None
    if host.startswith("["):
        host = host[1:-1]
    return host, port


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _order_srv_records(records: Iterable[SrvRecord]) -> list[SrvRecord]:
    """RFC 2782 order: lowest priority first; within one priority, a random
    order weighted by ``weight`` (weight 0 records rarely go first).
    """
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        remaining = sorted(by_priority[priority], key=lambda r: r.weight)
        while remaining:
            total = sum(r.weight for r in remaining)
            pick = random.randint(0, total)
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= pick:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


class ServerNameResolver:
    """Server-name resolution with its ``.well-known`` cache.

    ``ssl_context`` checks the certificates of ``.well-known`` servers (the
    system's trust store by default). ``well_known_port`` exists for tests,
    which cannot listen on 443; a real server never changes it. Open it with
    ``async with`` or close it with :meth:`aclose`: it holds a connection
    pool for the ``.well-known`` fetches.
    """

    def __init__(
        self,
        dns: DnsResolver,
        *,
        ssl_context: ssl.SSLContext | None = None,
        well_known_port: int = 443,
        well_known_timeout: float = _WELL_KNOWN_TIMEOUT,
    ) -> None:
        self.dns = dns
        self._well_known_port = well_known_port
        self._well_known_timeout = well_known_timeout
        self._well_known_cache: OrderedDict[str, _WellKnownEntry] = OrderedDict()
        self._well_known_locks: dict[str, trio.Lock] = {}
        self._http = httpx.AsyncClient(
            transport=RoutedTransport(
                self._well_known_route,
                ssl_context=ssl_context or ssl.create_default_context(),
            ),
            follow_redirects=True,
            max_redirects=_WELL_KNOWN_MAX_REDIRECTS,
            timeout=well_known_timeout,
            trust_env=False,
        )

    async def __aenter__(self) -> ServerNameResolver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def resolve(self, server_name: str) -> ResolvedServer:
        """The route for ``server_name`` and its endpoints, best first."""
        route = await self.route(server_name)
        return ResolvedServer(route=route, endpoints=await self.endpoints(route))

    async def route(self, server_name: str) -> ServerRoute:
        """Steps 1-3 of the spec's resolution: everything but the final DNS."""
        host, port = parse_server_name(server_name)
        if _is_ip_literal(host):
            # Step 1: an IP literal is used as it is, its certificate must
            # name the IP, and the Host header is the server name as given.
            return ServerRoute(
                server_name=server_name,
                host_header=server_name,
                tls_server_name=host,
                connect_host=host,
                connect_port=port if port is not None else DEFAULT_FEDERATION_PORT,
            )
        if port is not None:
            # Step 2: a hostname with an explicit port skips delegation.
            return ServerRoute(
                server_name=server_name,
                host_header=server_name,
                tls_server_name=host,
                connect_host=host,
                connect_port=port,
            )
        delegated = await self.well_known(host)
        if delegated is None:
            # Steps 4-6: SRV records of the hostname itself, then port 8448.
            return ServerRoute(
                server_name=server_name,
                host_header=host,
                tls_server_name=host,
                connect_host=host,
                connect_port=None,
            )
        delegated_host, delegated_port = parse_server_name(delegated)
        if _is_ip_literal(delegated_host):
            # Step 3.1: the Host header is the delegated IP, with its port if
            # one was given.
            return ServerRoute(
                server_name=server_name,
                host_header=delegated,
                tls_server_name=delegated_host,
                connect_host=delegated_host,
                connect_port=(
                    delegated_port if delegated_port is not None else DEFAULT_FEDERATION_PORT
                ),
            )
        # Step 3.2 (explicit port) and 3.3-3.5 (SRV of the delegated name,
        # then 8448): the Host header and the certificate are the delegated
        # name's, wherever SRV points.
        return ServerRoute(
            server_name=server_name,
            host_header=delegated,
            tls_server_name=delegated_host,
            connect_host=delegated_host,
            connect_port=delegated_port,
        )

    async def endpoints(self, route: ServerRoute) -> tuple[Endpoint, ...]:
        """The DNS half of resolution: the addresses and ports to try, best first.

        Raises :class:`ServerNameResolutionError` when there is none.
        """
        host = route.connect_host
        if route.connect_port is not None:
            addresses = await self._addresses(route.server_name, host)
            return tuple(Endpoint(address, route.connect_port) for address in addresses)
        for prefix in _SRV_PREFIXES:
            records = list(await self.dns.lookup_srv(prefix + host))
            if not records:
                continue
            if len(records) == 1 and records[0].target in (".", ""):
                # RFC 2782: a lone "." target means the service is
                # decidedly not available at this domain.
                raise ServerNameResolutionError(
                    route.server_name, f"{prefix}{host} says the service is not offered"
                )
            endpoints: list[Endpoint] = []
            for record in _order_srv_records(r for r in records if r.target not in (".", "")):
                try:
                    addresses = await self._addresses(route.server_name, record.target)
                except ServerNameResolutionError as exc:
                    _log.debug("skipping SRV target %s: %s", record.target, exc.problem)
                    continue
                endpoints.extend(Endpoint(address, record.port) for address in addresses)
            if not endpoints:
                raise ServerNameResolutionError(
                    route.server_name, f"no SRV target of {prefix}{host} has an address"
                )
            return _unique(endpoints)
        addresses = await self._addresses(route.server_name, host)
        return tuple(Endpoint(address, DEFAULT_FEDERATION_PORT) for address in addresses)

    async def _addresses(self, server_name: str, host: str) -> tuple[str, ...]:
        if _is_ip_literal(host):
            return (host,)
        addresses = _unique(await self.dns.lookup_addresses(host))
        if not addresses:
            raise ServerNameResolutionError(server_name, f"{host} has no AAAA or A records")
        return addresses

    # .well-known

    async def well_known(self, hostname: str) -> str | None:
        """The server name ``hostname`` delegates to, or None for no delegation.

        A failure of any kind (no answer, a non-200 status, a body that is
        not the right JSON) counts as no delegation, as step 3 says; it is
        cached too, for a time that doubles on each failure in a row. A
        server that answered before and now cannot be reached keeps its last
        delegation meanwhile, so a short outage of its web server does not
        send federation traffic to the wrong place.
        """
        hostname = hostname.lower()
        entry = self._cached_well_known(hostname)
        if entry is not None:
            return entry.delegated
        lock = self._well_known_locks.setdefault(hostname, trio.Lock())
        try:
            async with lock:
                entry = self._cached_well_known(hostname)
                if entry is None:
                    entry = await self._fetch_well_known(hostname)
                    self._store_well_known(hostname, entry)
                return entry.delegated
        finally:
            if lock.statistics().tasks_waiting == 0 and not lock.locked():
                self._well_known_locks.pop(hostname, None)

    def _cached_well_known(self, hostname: str) -> _WellKnownEntry | None:
        entry = self._well_known_cache.get(hostname)
        if entry is None or entry.expires_at <= trio.current_time():
            return None
        self._well_known_cache.move_to_end(hostname)
        return entry

    def _store_well_known(self, hostname: str, entry: _WellKnownEntry) -> None:
        self._well_known_cache[hostname] = entry
        self._well_known_cache.move_to_end(hostname)
        while len(self._well_known_cache) > _WELL_KNOWN_CACHE_SIZE:
            self._well_known_cache.popitem(last=False)

    async def _fetch_well_known(self, hostname: str) -> _WellKnownEntry:
        previous = self._well_known_cache.get(hostname)
        now = trio.current_time()
        try:
            delegated, ttl = await self._request_well_known(hostname)
        except _WellKnownFailure as failure:
            failures = previous.failures + 1 if previous is not None else 1
            ttl = min(
                _WELL_KNOWN_FIRST_FAILURE_TTL * 2 ** (failures - 1), _WELL_KNOWN_MAX_FAILURE_TTL
            )
            keep = previous.delegated if previous is not None and failure.unreachable else None
            _log.info(
                "no .well-known delegation for %s (%s); cached for %ds%s",
                hostname,
                failure,
                ttl,
                f", keeping {keep}" if keep else "",
            )
            return _WellKnownEntry(delegated=keep, expires_at=now + ttl, failures=failures)
        return _WellKnownEntry(delegated=delegated, expires_at=now + ttl, failures=0)

    async def _request_well_known(self, hostname: str) -> tuple[str, float]:
        url = httpx.URL(
            scheme="https",
            host=hostname,
            port=self._well_known_port,
            path="/.well-known/matrix/server",
        )
        try:
            with trio.fail_after(self._well_known_timeout):
                async with self._http.stream("GET", url) as response:
                    body = await read_body(response, _WELL_KNOWN_MAX_BYTES)
        except trio.TooSlowError:
            raise _WellKnownFailure("timed out", unreachable=True) from None
        except httpx.TooManyRedirects:
            raise _WellKnownFailure("too many redirects", unreachable=False) from None
        except (httpx.TransportError, ServerNameResolutionError) as exc:
            raise _WellKnownFailure(f"no answer: {exc}", unreachable=True) from None
        except ResponseTooLargeError:
            raise _WellKnownFailure(
                f"the body is over {_WELL_KNOWN_MAX_BYTES} bytes", unreachable=False
            ) from None
        if response.status_code != 200:
            raise _WellKnownFailure(
                f"status {response.status_code}", unreachable=response.status_code >= 500
            )
        try:
            document = decode_untrusted_json(body)
        except msgspec.DecodeError:
            raise _WellKnownFailure("the body is not JSON", unreachable=False) from None
        if not isinstance(document, dict):
            raise _WellKnownFailure("the body is not a JSON object", unreachable=False)
        delegated = document.get("m.server")
        if not isinstance(delegated, str):
            raise _WellKnownFailure("'m.server' is missing or not a string", unreachable=False)
        try:
            parse_server_name(delegated)
        except ServerNameResolutionError as exc:
            raise _WellKnownFailure(f"'m.server': {exc.problem}", unreachable=False) from None
        return delegated, _cache_ttl(response.headers)

    async def _well_known_route(self, host: str, port: int) -> Sequence[Endpoint]:
        """Where a ``.well-known`` request (or a redirect it follows) connects."""
        addresses = await self._addresses(host, host)
        return [Endpoint(address, port) for address in addresses]


@dataclass(frozen=True, slots=True)
class _WellKnownEntry:
    delegated: str | None
    expires_at: float
    #: Failures in a row, for the doubling of the failure cache time.
    failures: int


class _WellKnownFailure(Exception):
    def __init__(self, problem: str, *, unreachable: bool) -> None:
        super().__init__(problem)
        #: True when the server gave no usable answer at all (as opposed to
        #: answering that it delegates nowhere).
        self.unreachable = unreachable


def _cache_ttl(headers: httpx.Headers) -> float:
    """How long to keep a ``.well-known`` answer, from Cache-Control or
    Expires, within the bounds the spec recommends.
    """
    ttl: float | None = None
    cache_control = headers.get("cache-control")
    if cache_control is not None:
        match = _MAX_AGE_RE.search(cache_control)
        if match is not None:
            ttl = float(match.group(1))
        elif _NO_CACHE_RE.search(cache_control):
            ttl = 0.0
    if ttl is None and (expires := headers.get("expires")) is not None:
        ttl = _seconds_until(expires, headers.get("date"))
    if ttl is None:
        ttl = _WELL_KNOWN_DEFAULT_TTL
    return min(max(ttl, _WELL_KNOWN_MIN_TTL), _WELL_KNOWN_MAX_TTL)


def _seconds_until(expires: str, date: str | None) -> float:
    """Seconds from the response's Date (or now) to its Expires; an Expires
    that cannot be parsed means "already expired", as RFC 9111 says.
    """
    try:
        expires_at = email.utils.parsedate_to_datetime(expires)
    except (TypeError, ValueError):
        return 0.0
    reference = None
    if date is not None:
        with contextlib.suppress(TypeError, ValueError):
            reference = email.utils.parsedate_to_datetime(date)
    if reference is None or reference.tzinfo is None or expires_at.tzinfo is None:
        reference = datetime.datetime.now(datetime.UTC)
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=datetime.UTC)
    return (expires_at - reference).total_seconds()


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


# DNS


class SystemDnsResolver:
    """Real DNS: SRV records through dnspython's async resolver (on Trio),
    addresses through the system's ``getaddrinfo``, so ``/etc/hosts`` and
    the system's resolver configuration apply as they do to other programs.

    With ``nameservers`` given, every lookup, addresses too, goes to those
    servers (on ``port``) and the system's configuration is not read. That
    is for networks with a DNS server of their own for federation, and for
    tests.
    """

    def __init__(
        self,
        *,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
    ) -> None:
        self._nameservers = tuple(nameservers) if nameservers is not None else None
        self._port = port
        self._timeout = timeout
        self._resolver: Any = None

    def _dns(self) -> Any:
        # Built on first use: reading /etc/resolv.conf at construction would
        # make a machine without one fail even when only addresses are needed.
        if self._resolver is None:
            import dns.asyncresolver
            import dns.resolver

            if self._nameservers is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = list(self._nameservers)
                resolver.port = self._port
            # Answers are kept for their TTL, so the SRV lookup done for
            # each new connection rarely reaches the network.
            resolver.cache = dns.resolver.LRUCache()
            self._resolver = resolver
        return self._resolver

    async def lookup_srv(self, name: str) -> Sequence[SrvRecord]:
        answer = await self._query(name, "SRV")
        return [
            SrvRecord(
                priority=int(rr.priority),
                weight=int(rr.weight),
                port=int(rr.port),
                target=rr.target.to_text(omit_final_dot=True) or ".",
            )
            for rr in answer
        ]

    async def lookup_addresses(self, host: str) -> Sequence[str]:
        if self._nameservers is not None:
            found: list[str] = []
            for rdtype in ("AAAA", "A"):
                found.extend(str(rr.address) for rr in await self._query(host, rdtype))
            return found
        try:
            infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME_ERRNOS:
                return []
            raise ServerNameResolutionError(host, f"address lookup failed: {exc}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _query(self, name: str, rdtype: str) -> Sequence[Any]:
        import dns.exception
        import dns.resolver

        try:
            answer = await self._dns().resolve(
                name, rdtype, lifetime=self._timeout, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:
            raise ServerNameResolutionError(name, f"{rdtype} lookup failed: {exc}") from None
        return list(answer.rrset) if answer.rrset is not None else []


_NO_SUCH_NAME_ERRNOS: Final = frozenset(
    code
    for code in (
        getattr(socket, "EAI_NONAME", None),
        getattr(socket, "EAI_NODATA", None),
        getattr(socket, "EAI_ADDRFAMILY", None),
    )
    if code is not None
)


# The transport


#: Given the URL's host and port, the endpoints to try, best first.
Router = Callable[[str, int], Awaitable[Sequence[Endpoint]]]


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The whole body of a streamed response from a :class:`RoutedTransport`,
    or :class:`ResponseTooLargeError` once it passes ``limit`` bytes (at
    once, if its Content-Length says it will).
    """
    length = response.headers.get("content-length")
    if length is not None and is_decimal_number(length) and int(length) > limit:
        raise ResponseTooLargeError(limit)
    response.request.extensions[MAX_BODY_EXTENSION] = limit
    return await response.aread()


async def read_body_into_buffer(response: httpx.Response, limit: int) -> bytearray:
    """:func:`read_body`, into one buffer as long as the Content-Length says.

    httpx reads a body as a list of chunks and joins them, so that a big
    body is held twice for a moment (and the chunks' memory, freed, stays
    with the process): some 66 MB at the top of a 33 MB answer. Here each
    chunk is copied into its place and dropped. A body without a length, or
    with a Content-Encoding, is read as :func:`read_body` reads it.
    """
    length = response.headers.get("content-length")
    if (
        length is None
        or not is_decimal_number(length)
        or response.headers.get("content-encoding", "identity") != "identity"
    ):
        return bytearray(await read_body(response, limit))
    size = int(length)
    if size > limit:
        raise ResponseTooLargeError(limit)
    response.request.extensions[MAX_BODY_EXTENSION] = limit
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for chunk in response.aiter_raw():
        end = filled + len(chunk)
        if end > size:
            raise httpx.RemoteProtocolError("the body is longer than its Content-Length")
        view[filled:end] = chunk
        filled = end
    view.release()
    if filled != size:
        raise httpx.RemoteProtocolError("the body is shorter than its Content-Length")
    return buffer


class RoutedTransport(PoolTransport):
    """An httpx transport that connects where ``router`` says.

    The URL's host and port name the connection pool a request uses; the
    router turns them into the endpoints to try, in turn, when a new
    connection is needed. TLS is checked against the ``sni_hostname``
    request extension when given, else against the URL's host, so the
    certificate check never depends on the address DNS gave. Only HTTPS is
    spoken.
    """

    def __init__(
        self,
        router: Router,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int | None = None,
        max_keepalive_connections: int | None = 20,
        keepalive_expiry: float | None = 30.0,
    ) -> None:
        super().__init__(
            _RoutingBackend(router),
            schemes=("https",),
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
        )


class _RoutingBackend(AddressBackend):
    """Connects where server-name resolution routes a host."""

    purpose = "federation"

    def __init__(self, router: Router) -> None:
        super().__init__()
        self._router = router

    async def endpoints(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        return [(endpoint.address, endpoint.port) for endpoint in await self._router(host, port)]
