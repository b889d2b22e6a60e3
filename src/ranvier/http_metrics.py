"""Requests each listener answered, by route and status class, and how long
they took.

:meth:`HttpMetrics.wrap` puts a thin layer around a listener's ASGI
application. It takes the status from the response's start and, once the
application returns, the route from the scope, where the application left
it (:func:`ranvier.metrics.note_route`). Requests are labelled with the
route's pattern (``/_matrix/federation/v1/send/{txn_id}``), never the raw
path, so the number of series is bounded by the routes in the code; a
request that matched no route counts as ``unmatched``. A request is one
dict entry bumped and one histogram bucket: the cost on ``/send`` is a
clock read either side and a closure around ``send``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

from ranvier.metrics import ROUTE_KEY, Histogram, MetricFamily, sample_name
from ranvier.web import Message, Receive, Scope, Send

__all__ = ["DURATION_BUCKETS", "HTTP_FAMILIES", "HttpMetrics"]

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds: from a quick read to a /sync long-poll held for its timeout.
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

HTTP_FAMILIES: Final = (
    MetricFamily(
        "ranvier_http_requests_total",
        "counter",
        "HTTP requests answered, by API (client, federation, media, replication),"
        " method and route pattern of the route matched, and status class.",
    ),
    MetricFamily(
        "ranvier_http_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its answer, by API.",
    ),
)

_Key = tuple[str, str, str, str]


class HttpMetrics:
    """The counts behind :data:`HTTP_FAMILIES`, for every listener wrapped."""

    def __init__(self) -> None:
        self._requests: dict[_Key, int] = {}
        self._durations: dict[str, Histogram] = {}

    def wrap(self, api: str, app: AsgiApp) -> AsgiApp:
        """``app`` with its HTTP requests counted under ``api``, unless the
        application names another one for a route."""
        requests = self._requests
        durations = self._durations

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 0

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            started = time.perf_counter()
            try:
                await app(scope, receive, sending)
            finally:
                elapsed = time.perf_counter() - started
                routed = scope.get(ROUTE_KEY)
                if routed is None:
                    key = (api, "other", "unmatched", _status_class(status))
                else:
                    key = (routed[0] or api, routed[1], routed[2], _status_class(status))
                requests[key] = requests.get(key, 0) + 1
                histogram = durations.get(key[0])
                if histogram is None:
                    histogram = durations[key[0]] = Histogram(DURATION_BUCKETS)
                histogram.observe(elapsed)

        return counted

    def samples(self) -> dict[str, int | float]:
        """The samples of :data:`HTTP_FAMILIES` now."""
        samples: dict[str, int | float] = {}
        for (api, method, endpoint, status), count in sorted(self._requests.items()):
            name = sample_name(
                "ranvier_http_requests_total",
                listener=api,
                method=method,
                endpoint=endpoint,
                code=status,
            )
            samples[name] = count
        for api, histogram in sorted(self._durations.items()):
            samples.update(histogram.samples("ranvier_http_request_duration_seconds", listener=api))
        return samples


def _status_class(status: int) -> str:
    """``2xx`` and so on; ``none`` for a request left before its answer began."""
    return f"{status // 100}xx" if 100 <= status < 600 else "none"
