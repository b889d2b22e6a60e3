"""Limits on what one other server may ask of this one at a time.

Every request another server signs costs us something (a read of state,
a backfill, a join handshake), and without a limit one server could take
the whole process from everyone else. :class:`FederationRateLimiter`
holds each origin to the shape Synapse's ``rc_federation`` gives it:

* requests of one origin are counted over a sliding window; beyond
  ``sleep_limit`` of them in the window, each further one is held
  ``sleep_delay`` before it is served;
* at most ``concurrent`` of an origin's requests are served at once; the
  rest wait their turn, first come first served;
* when ``reject_limit`` of an origin's requests are already held (delayed
  or waiting their turn), another is refused at once with ``429
  M_LIMIT_EXCEEDED``, so a flood costs a queue of bounded length, not an
  unbounded one.

:class:`~ranvier.federation.transport.server.FederationApp` applies it
in two steps, since a request names its origin in its ``Authorization``
header, before its body, but the signature proving it covers the body:

* **Before the body is read**, :meth:`FederationRateLimiter.check` refuses
  a request naming an origin that already has ``reject_limit`` requests
  held. It counts nothing and holds nothing: the state it reads is made
  by requests whose signatures held, so a forger naming another server
  can neither spend that server's allowance nor hold its requests back,
  and all it can be refused is what the real server would be refused
  too. A flood of a server over its limit is thus turned away for the
  price of its headers, none of its bodies read or buffered.
* **Once the signature holds**, :meth:`FederationRateLimiter.limit`
  counts the request against its origin and delays, queues or refuses it
  as above, around the route's handler.

What the first step cannot spare is the bodies of requests an origin
under its limit has in flight: they are read before the origin is
proven, and those held by the second step keep theirs (at most
``reject_limit`` plus ``concurrent`` of them per origin). Holding them
before their bodies are read instead would let a forger fill another
server's queue. A limit by the peer's address, cheap as it would be,
is not used: servers share addresses (one hosting provider's proxy,
several servers on one host, this server behind its own reverse proxy,
where every request comes from the proxy), so it would either be loose
enough to matter little or let one server's flood turn the others away.

Invariants
----------

* **Trio's clock.** The window is read from ``trio.current_time`` and the
  delays are ``trio.sleep``, so a test's ``MockClock`` drives both.
* **One origin never slows another.** Each origin has its own window, its
  own :class:`trio.CapacityLimiter` and its own queue; nothing is shared
  but the counters.
* **Bounded memory.** An origin's state is kept while it has a request in
  flight or one in the window. Idle states are dropped in a sweep that
  runs at most once a window, so the table holds the origins heard from
  in about the last window, however many there have ever been.
* **A refusal is cheap and not counted.** A refused request takes no
  place in the window, so a server retrying too early does not push its
  own limit further out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ranvier.errors import LimitExceededError

if TYPE_CHECKING:
    from ranvier.config import FederationRateConfig

__all__ = ["FederationRate", "FederationRateLimiter"]


@dataclass(frozen=True, slots=True)
class FederationRate:
    """The limits one origin is held to; times in seconds."""

    window_seconds: float = 1.0
    sleep_limit: int = 10
    sleep_seconds: float = 0.5
    reject_limit: int = 50
    concurrent: int = 3

    def __post_init__(self) -> None:
        if not (self.window_seconds > 0 and math.isfinite(self.window_seconds)):
            raise ValueError(f"window_seconds must be positive, not {self.window_seconds}")
        if not (self.sleep_seconds >= 0 and math.isfinite(self.sleep_seconds)):
            raise ValueError(f"sleep_seconds must not be negative, not {self.sleep_seconds}")
        for name in ("sleep_limit", "reject_limit", "concurrent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: FederationRateConfig) -> FederationRate:
        """The rate ``[ratelimit.federation]`` describes (milliseconds there)."""
        return cls(
            window_seconds=config.window_size / 1000,
            sleep_limit=config.sleep_limit,
            sleep_seconds=config.sleep_delay / 1000,
            reject_limit=config.reject_limit,
            concurrent=config.concurrent,
        )


@dataclass(slots=True)
class _Origin:
    slots: trio.CapacityLimiter
    #: Trio-clock times of the requests counted in the window, oldest first.
    arrivals: deque[float] = field(default_factory=deque)
    #: Requests delayed or waiting for a slot now.
    held: int = 0
    #: Requests anywhere between arriving and finishing.
    in_flight: int = 0


class FederationRateLimiter:
    """Each origin's window, queue and concurrency slots.

    ``exempt`` origins are never limited. The counters say how often the
    limits bit, for the metrics: ``delayed`` requests were held
    ``sleep_delay``, ``queued`` ones waited for a slot, ``rejected`` ones
    were refused.
    """

    def __init__(
        self,
        rate: FederationRate,
        *,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.rate = rate
        self.exempt = frozenset(exempt)
        self._clock = clock
        self._origins: dict[str, _Origin] = {}
        self._last_sweep: float | None = None
        self.delayed = 0
        self.queued = 0
        self.rejected = 0

    @classmethod
    def from_config(cls, config: FederationRateConfig) -> FederationRateLimiter:
        """The limiter ``[ratelimit.federation]`` describes."""
        return cls(FederationRate.from_config(config), exempt=config.exempt_origins)

    def origin_count(self) -> int:
        """How many origins have state held: for tests and monitoring."""
        return len(self._origins)

    def check(self, origin: str) -> None:
        """Raise :class:`~ranvier.errors.LimitExceededError` if a request
        of ``origin`` would be refused now, counting nothing.

        For a request whose signature is not checked yet (see the module's
        doc): ``origin`` is only what it claims, so it neither takes a
        place in the window nor adds an origin to the table. The refusal
        counts in :attr:`rejected` like any other.
        """
        if origin in self.exempt:
            return
        state = self._origins.get(origin)
        if state is not None and state.held >= self.rate.reject_limit:
            self.rejected += 1
            raise self._refusal(origin)

    @asynccontextmanager
    async def limit(self, origin: str) -> AsyncIterator[None]:
        """Hold the body of the ``async with`` until ``origin`` may be
        served, or raise :class:`~ranvier.errors.LimitExceededError`.
        """
        if origin in self.exempt:
            yield
            return
        rate = self.rate
        now = self._clock()
        self._maybe_sweep(now)
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _Origin(trio.CapacityLimiter(rate.concurrent))
        arrivals = state.arrivals
        while arrivals and arrivals[0] <= now - rate.window_seconds:
            arrivals.popleft()
        if state.held >= rate.reject_limit:
            self.rejected += 1
            raise self._refusal(origin)
        arrivals.append(now)
        must_sleep = len(arrivals) > rate.sleep_limit and rate.sleep_seconds > 0
        state.in_flight += 1
        try:
            await self._take_slot(state, must_sleep=must_sleep)
            try:
                yield
            finally:
                state.slots.release()
        finally:
            state.in_flight -= 1

    def _refusal(self, origin: str) -> LimitExceededError:
        rate = self.rate
        return LimitExceededError(
            f"too many requests from {origin}: {rate.reject_limit} are already waiting",
            # The pace at which the window lets requests through undelayed.
            retry_after_ms=math.ceil(rate.window_seconds * 1000 / rate.sleep_limit),
        )

    async def _take_slot(self, state: _Origin, *, must_sleep: bool) -> None:
        if not must_sleep:
            try:
                state.slots.acquire_nowait()
            except trio.WouldBlock:
                pass
            else:
                return
        state.held += 1
        try:
            if must_sleep:
                self.delayed += 1
                await trio.sleep(self.rate.sleep_seconds)
            if state.slots.available_tokens == 0:
                self.queued += 1
            await state.slots.acquire()
        finally:
            state.held -= 1

    def _maybe_sweep(self, now: float) -> None:
        if self._last_sweep is None:
            self._last_sweep = now
            return
        window = self.rate.window_seconds
        if now - self._last_sweep < window:
            return
        self._last_sweep = now
        horizon = now - window
        self._origins = {
            origin: state
            for origin, state in self._origins.items()
            if state.in_flight or (state.arrivals and state.arrivals[-1] > horizon)
        }
