"""The server's metrics, exposed for Prometheus to scrape.

:meth:`ranvier.server.HomeServer.metrics` reports each sample under its
name in the exposition syntax: ``ranvier_resync_rooms`` for a sample
without labels, ``ranvier_resync_attempts{room_id="!r:example.org"}`` for
one with (:func:`sample_name` builds those, escaping the values). That
keeps the report a plain dict a program can read, and lets
:func:`render_metrics` write it out as Prometheus' text exposition format
(version 0.0.4) with each family's ``# HELP`` and ``# TYPE`` from
:data:`FAMILIES`.

:class:`MetricsApp` is the ASGI application a ``metrics`` listener serves:
``GET /metrics`` and nothing else. It reads the report afresh for every
request and does no I/O of its own, so a scrape costs a few dict lookups
and never waits on storage.

Components keep their own counts as plain ints (or a :class:`Histogram`,
a fixed list of them) where the work happens, so a hot path pays an
addition; a :class:`MetricsRegistry`, made by the server and passed to what
registers with it, pairs each component's families with a function that
turns those counts into samples at scrape time (:mod:`ranvier.server_metrics`
does it for a homeserver). A ``collect`` function may be a coroutine
function: counts that live in the database (registered users) are read
then, through the reader pool, never on a hot path.

An application that routes requests notes the route it matched with
:func:`note_route`, so HTTP metrics label requests by route pattern, whose
number is fixed by the code, and never by the raw path.
"""

from __future__ import annotations

import bisect
import inspect
import itertools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from ranvier.web import Receive, Scope, Send, only_http

if TYPE_CHECKING:
    from ranvier.web import Route

__all__ = [
    "CONTENT_TYPE",
    "FAMILIES",
    "METRICS_PATH",
    "ROUTE_KEY",
    "Histogram",
    "MetricFamily",
    "MetricsApp",
    "MetricsRegistry",
    "escape_label_value",
    "note_route",
    "render_metrics",
    "sample_name",
]

_log: Final = logging.getLogger(__name__)

#: What a scrape is answered with: the text format, version 0.0.4.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Where a ``metrics`` listener serves them.
METRICS_PATH: Final = "/metrics"

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Samples = Mapping[str, int | float]
#: What a component registers: a function of nothing giving its samples now.
Collect = Callable[[], Samples | Awaitable[Samples]]

#: The ASGI scope key an application sets to the :class:`~ranvier.web.Route`
#: it matched, and the API it belongs to (see :func:`note_route`).
ROUTE_KEY: Final = "ranvier.route"

_HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric's name, its type for Prometheus and what it counts."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"{self.name!r} is not a metric name")


#: The families :meth:`~ranvier.server.HomeServer.metrics` reports, in the
#: order they are exposed.
FAMILIES: Final[tuple[MetricFamily, ...]] = (
    MetricFamily(
        "ranvier_resync_rooms",
        "gauge",
        "Rooms joined with partial state whose full state is being fetched.",
    ),
    MetricFamily(
        "ranvier_resync_rooms_waiting",
        "gauge",
        "Of those, rooms waiting to try again after every server failed.",
    ),
    MetricFamily(
        "ranvier_resync_completed_total",
        "counter",
        "Rooms whose full state was completed since the server started.",
    ),
    MetricFamily(
        "ranvier_resync_stopped_total",
        "counter",
        "Resyncs stopped, the room still partial, because no local user was left in it.",
    ),
    MetricFamily(
        "ranvier_resync_phase",
        "gauge",
        "1 for the phase each room's resync is in.",
    ),
    MetricFamily(
        "ranvier_resync_events_resynced",
        "gauge",
        "Partial-state events of each room redone with full state by its resync.",
    ),
    MetricFamily(
        "ranvier_resync_events_remaining",
        "gauge",
        "Partial-state events of each room still to redo, as last counted.",
    ),
    MetricFamily(
        "ranvier_resync_attempts",
        "gauge",
        "Rounds of asking the servers in each room that its resync has started.",
    ),
)


class Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms are.

    :meth:`observe` finds the bucket by bisection and adds one to a list
    entry: cheap enough for the event loop's hot paths, and bounded, as the
    buckets are fixed when it is made.
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"bucket bounds must be given and increasing: {bounds!r}")
        self.bounds = tuple(float(bound) for bound in bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum: float = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least it."""
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def samples(self, family: str, **labels: str) -> dict[str, int | float]:
        """The ``_bucket`` (cumulative, ``le`` labelled), ``_sum`` and
        ``_count`` samples of ``family`` with ``labels``.
        """
        found: dict[str, int | float] = {}
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += count
            le = "+Inf" if math.isinf(bound) else _format_value(bound)
            found[sample_name(f"{family}_bucket", **labels, le=le)] = running
        found[sample_name(f"{family}_sum", **labels)] = self._sum
        found[sample_name(f"{family}_count", **labels)] = running
        return found


class MetricsRegistry:
    """The families a process exposes, and how to read each one's samples.

    Made once per server and passed to whatever registers with it; a scrape
    calls every ``collect`` registered, in order.
    """

    def __init__(self) -> None:
        self._families: list[MetricFamily] = []
        self._collectors: list[Collect] = []

    def add(self, families: Iterable[MetricFamily], collect: Collect) -> None:
        """Expose ``families``, whose samples ``collect`` gives at each scrape."""
        known = {family.name for family in self._families}
        for family in families:
            if family.name in known:
                raise ValueError(f"the metric family {family.name} is registered twice")
            known.add(family.name)
            self._families.append(family)
        self._collectors.append(collect)

    @property
    def families(self) -> tuple[MetricFamily, ...]:
        return tuple(self._families)

    async def collect(self) -> dict[str, int | float]:
        """Every registered sample now."""
        samples: dict[str, int | float] = {}
        for collect in self._collectors:
            found = collect()
            if inspect.isawaitable(found):
                found = await found
            samples.update(found)
        return samples


def note_route(scope: Scope, route: Route, *, api: str | None = None) -> None:
    """Tell the HTTP metrics which route ``scope``'s request matched, and
    which API it belongs to when not the listener's own (media on a client
    listener).
    """
    scope[ROUTE_KEY] = (api, route.method, route.pattern)


def escape_label_value(value: str) -> str:
    """A label value as it goes between the quotes: backslash, double quote
    and line feed escaped, as the text format requires.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample_name(family: str, **labels: str) -> str:
    """The name of a sample of ``family`` with ``labels``, in the exposition
    syntax: the key it has in :meth:`~ranvier.server.HomeServer.metrics`.
    """
    if not _METRIC_NAME.fullmatch(family):
        raise ValueError(f"{family!r} is not a metric name")
    if not labels:
        return family
    for name in labels:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a label name")
    pairs = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels.items())
    return f"{family}{{{pairs}}}"


def render_metrics(samples: Samples, families: Iterable[MetricFamily] = FAMILIES) -> bytes:
    """``samples`` in the text exposition format, family by family.

    Each of ``families`` gets its ``# HELP`` and ``# TYPE`` lines, even
    with no sample now (a room-labelled gauge while no room resyncs), so a
    scraper always learns the type. A sample of a family not listed is
    exposed as ``untyped`` after them.
    """
    families = tuple(families)
    histograms = {family.name for family in families if family.kind == "histogram"}
    by_family: dict[str, list[tuple[str, int | float]]] = {}
    for name, value in samples.items():
        by_family.setdefault(_family_of(name.partition("{")[0], histograms), []).append(
            (name, value)
        )
    lines: list[str] = []
    known: set[str] = set()
    for family in families:
        known.add(family.name)
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines.extend(_sample_lines(by_family.get(family.name, ())))
    for name, found in by_family.items():
        if name not in known:
            lines.append(f"# TYPE {name} untyped")
            lines.extend(_sample_lines(found))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _family_of(name: str, histograms: set[str]) -> str:
    """The family a sample named ``name`` (labels left off) belongs to: a
    histogram's ``_bucket``, ``_sum`` and ``_count`` samples go with it."""
    if histograms:
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                return name.removesuffix(suffix)
    return name


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _sample_lines(found: Iterable[tuple[str, int | float]]) -> list[str]:
    return [f"{name} {_format_value(value)}" for name, value in found]


def _format_value(value: int | float) -> str:
    if isinstance(value, int):
        # bool is an int; the format wants 1 and 0, not True and False.
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class MetricsApp:
    """The ASGI application of a ``metrics`` listener.

    ``GET`` (or ``HEAD``) ``/metrics`` answers ``samples()`` rendered with
    ``families``; any other path is 404 and any other method 405, both in
    plain text. ``samples`` is called on the event loop for each scrape, so
    it must be quick and must not block; it may be a coroutine function
    (:meth:`MetricsRegistry.collect`). ``families`` may be a function too,
    read at each scrape.
    """

    def __init__(
        self,
        samples: Collect,
        families: Iterable[MetricFamily] | Callable[[], Iterable[MetricFamily]] = FAMILIES,
    ) -> None:
        self._samples = samples
        self._families = families if callable(families) else tuple(families)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if not await only_http(scope, receive, send):
            return
        status, headers, body = await self._respond(scope["method"], scope["path"])
        head = scope["method"] == "HEAD"
        headers = [
            *headers,
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _respond(
        self, method: str, path: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        plain = [(b"content-type", b"text/plain; charset=utf-8")]
        if path != METRICS_PATH:
            return 404, plain, f"not found: metrics are served at {METRICS_PATH}\n".encode()
        if method not in ("GET", "HEAD"):
            allow = [*plain, (b"allow", b"GET, HEAD")]
            return 405, allow, f"method {method} not allowed: use GET\n".encode()
        try:
            samples = self._samples()
            if inspect.isawaitable(samples):
                samples = await samples
            families = self._families() if callable(self._families) else self._families
            body = render_metrics(samples, families)
        except Exception:
            _log.exception("the metrics could not be read")
            return 500, plain, b"the metrics could not be read\n"
        return 200, [(b"content-type", CONTENT_TYPE.encode("ascii"))], body
