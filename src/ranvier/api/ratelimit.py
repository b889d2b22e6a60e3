"""Rate limits on the client-server API.

A client that floods the server (a runaway bot, a script guessing
passwords, a spammer creating rooms) is answered ``429 M_LIMIT_EXCEEDED``
with ``retry_after_ms``, and a ``Retry-After`` header, instead of being
served. Each limited route belongs to a *category*; each category has a
rate and a burst, counted per user for what users do in rooms and per
client address for logging in and registering, where there is no user yet.

Which route belongs to which category is written down once, in
:data:`DEFAULT_ROUTE_CATEGORIES`, and applied by :class:`ClientApp` before
the route's handler runs (see :class:`RouteLimits`), so handlers never
think about it.

Invariants
----------

* **Generic cell rate.** A bucket is one number: the Trio-clock time at
  which it will be full again (its "theoretical arrival time"). An action
  moves that time one interval (``1 / per_second``) later; it is refused
  when that would put it more than ``burst`` intervals ahead of now. This
  is a token bucket of ``burst`` tokens refilled at ``per_second``,
  without a second number to keep in step.
* **Bounded memory.** A bucket whose time has passed is full, and a full
  bucket is the same as none: such buckets are dropped, in a sweep that
  runs when the table has doubled since the last one or a minute has
  passed, so the table holds about what the recent traffic needs and the
  sweeps cost O(1) per action amortised.
* **A refusal costs nothing.** A refused action does not move the bucket,
  so a client that retries early does not push its own wait further out.
* **Admins are exempt** from the per-user categories. Login and
  registration come before there is a user to ask about. Application
  services registered with ``rate_limited: false`` are exempt from all,
  and a service's own sender always is.
* **An admin's override wins** (Synapse's ``override_ratelimit``,
  :class:`RateOverrides`), read in one place, :meth:`UserLimits.check`,
  for every per-user category however the action is counted. A rate of 0
  lifts every per-user limit; a positive rate and burst replace the
  message limit alone, counted in buckets of their own, the other
  categories keeping theirs: the numbers are messages per second, and
  Synapse's other limiters read the override only for whether it lifts
  them. Whose override lifts a limit is whoever holds the token: the
  admin acting through a puppet token, as the user for a message's own
  rate.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

import trio

from ranvier.api.auth import access_token_of
from ranvier.core.accounts import Requester
from ranvier.errors import LimitExceededError, MatrixError
from ranvier.web import Request, Route, retry_after_header

if TYPE_CHECKING:
    from ranvier.config import RateConfig, RateLimitConfig

__all__ = [
    "DEFAULT_ROUTE_CATEGORIES",
    "IP_CATEGORIES",
    "USER_CATEGORIES",
    "Category",
    "Rate",
    "RateLimiter",
    "RateOverrides",
    "RouteLimits",
    "TokenBuckets",
    "UserLimits",
    "client_address",
    "retry_after_header",
]

#: What is limited. Sending events (messages and state alike), creating
#: rooms, inviting, joining, reporting and uploading media are counted per
#: user; logging in and registering per client address.
Category = Literal[
    "message",
    "room_creation",
    "invite",
    "join",
    "report",
    "media_create",
    "login",
    "registration",
    "threepid_validation",
]

USER_CATEGORIES: Final[frozenset[Category]] = frozenset(
    ("message", "room_creation", "invite", "join", "report", "media_create")
)
IP_CATEGORIES: Final[frozenset[Category]] = frozenset(
    ("login", "registration", "threepid_validation")
)

_CLIENT_V3: Final = "/_matrix/client/v3"

#: The limited routes: (method, path pattern) to category. Parameter names
#: in the patterns do not matter, only where the parameters are, so the
#: table need not follow how each route module names them; and a route
#: served under the old ``/_matrix/client/r0`` prefix as well is limited
#: there as under ``v3`` (see :func:`_shape`). Media uploads are served by
#: :class:`~ranvier.api.media.MediaApp`, which applies the same table.
DEFAULT_ROUTE_CATEGORIES: Final[Mapping[tuple[str, str], Category]] = {
    ("PUT", f"{_CLIENT_V3}/rooms/{{room_id}}/send/{{event_type}}/{{txn_id}}"): "message",
    ("PUT", f"{_CLIENT_V3}/rooms/{{room_id}}/state/{{event_type}}"): "message",
    ("PUT", f"{_CLIENT_V3}/rooms/{{room_id}}/state/{{event_type}}/{{state_key}}"): "message",
    ("PUT", f"{_CLIENT_V3}/rooms/{{room_id}}/redact/{{event_id}}/{{txn_id}}"): "message",
    ("POST", f"{_CLIENT_V3}/createRoom"): "room_creation",
    ("POST", f"{_CLIENT_V3}/rooms/{{room_id}}/invite"): "invite",
    ("POST", f"{_CLIENT_V3}/rooms/{{room_id}}/join"): "join",
    ("POST", f"{_CLIENT_V3}/join/{{room_id_or_alias}}"): "join",
    ("POST", f"{_CLIENT_V3}/rooms/{{room_id}}/report/{{event_id}}"): "report",
    ("POST", f"{_CLIENT_V3}/rooms/{{room_id}}/report"): "report",
    ("POST", f"{_CLIENT_V3}/users/{{user_id}}/report"): "report",
    ("POST", f"{_CLIENT_V3}/login"): "login",
    # It takes the password, as a login does: guessing it here is as costly.
    ("POST", "/_matrix/client/v1/login/get_token"): "login",
    ("POST", f"{_CLIENT_V3}/register"): "registration",
    # Guessing tokens is guessing a way to register.
    ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity"): "registration",
    # Each sends a mail. Counted per address too, by the handler.
    ("POST", f"{_CLIENT_V3}/account/3pid/email/requestToken"): "threepid_validation",
    ("POST", f"{_CLIENT_V3}/account/password/email/requestToken"): "threepid_validation",
    ("POST", f"{_CLIENT_V3}/register/email/requestToken"): "threepid_validation",
    # Each makes a file or reserves a media ID: disk and database rows.
    ("POST", "/_matrix/media/v3/upload"): "media_create",
    ("PUT", "/_matrix/media/v3/upload/{server_name}/{media_id}"): "media_create",
    ("POST", "/_matrix/media/v1/create"): "media_create",
}

# A sweep of full buckets runs at least this often (Trio-clock seconds) and
# whenever the table has doubled since the last one, but never while it is
# smaller than _SWEEP_MIN_SIZE.
_SWEEP_SECONDS: Final = 60.0
_SWEEP_MIN_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class Rate:
    """A category's limit: ``burst`` actions at once, refilled at ``per_second``."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError(f"per_second must be positive and finite, not {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")


class TokenBuckets:
    """One category's buckets, one per key (a user ID or a client address).

    ``clock`` defaults to Trio's, so a test's ``MockClock`` drives it.
    """

    def __init__(self, rate: Rate, *, clock: Callable[[], float] = trio.current_time) -> None:
        self.rate = rate
        self._clock = clock
        self._interval = 1.0 / rate.per_second
        # How far ahead of now a bucket's time may be before an action is
        # refused: an action needs one interval of room below the burst.
        self._limit = (rate.burst - 1) * self._interval
        self._full_at: dict[str, float] = {}
        self._last_sweep = clock()
        self._size_after_sweep = 0

    def take(self, key: str) -> float:
        """Take one action for ``key``. Return 0.0 if it is allowed (and
        counted), else how many seconds until it would be (not counted).
        """
        now = self._clock()
        self._maybe_sweep(now)
        ahead = max(0.0, self._full_at.get(key, now) - now)
        if ahead > self._limit:
            return ahead - self._limit
        self._full_at[key] = now + ahead + self._interval
        return 0.0

    def __len__(self) -> int:
        """How many buckets are held (full ones not yet swept included)."""
        return len(self._full_at)

    def _maybe_sweep(self, now: float) -> None:
        size = len(self._full_at)
        if size < _SWEEP_MIN_SIZE:
            return
        if size < 2 * self._size_after_sweep and now - self._last_sweep < _SWEEP_SECONDS:
            return
        self._full_at = {key: full for key, full in self._full_at.items() if full > now}
        self._last_sweep = now
        self._size_after_sweep = len(self._full_at)


class RateLimiter:
    """Every category's buckets.

    A category without a rate is not limited.
    """

    def __init__(
        self,
        rates: Mapping[Category, Rate],
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._clock = clock
        self._buckets = {
            category: TokenBuckets(rate, clock=clock) for category, rate in rates.items()
        }
        self._override_buckets: dict[tuple[Category, Rate], TokenBuckets] = {}

    @classmethod
    def from_config(
        cls, config: RateLimitConfig, *, clock: Callable[[], float] = trio.current_time
    ) -> RateLimiter:
        """The limiter the ``[ratelimit]`` section describes (none if disabled)."""
        if not config.enabled:
            return cls({}, clock=clock)
        settings: dict[Category, RateConfig] = {
            "message": config.message,
            "room_creation": config.room_creation,
            "invite": config.invite,
            "join": config.join,
            "report": config.report,
            "media_create": config.media_create,
            "login": config.login,
            "registration": config.registration,
            "threepid_validation": config.threepid_validation,
        }
        rates = {
            category: Rate(setting.per_second, setting.burst)
            for category, setting in settings.items()
        }
        return cls(rates, clock=clock)

    def limits(self, category: Category) -> bool:
        """Whether ``category`` has a rate."""
        return category in self._buckets

    def check(self, category: Category, key: str) -> None:
        """Count one action of ``category`` for ``key``, or raise
        :class:`~ranvier.errors.LimitExceededError` saying when to retry.
        """
        buckets = self._buckets.get(category)
        if buckets is None:
            return
        self._take(category, buckets, key)

    @staticmethod
    def _take(category: Category, buckets: TokenBuckets, key: str) -> None:
        wait = buckets.take(key)
        if wait > 0:
            raise LimitExceededError(
                f"too many requests ({category}): at most {buckets.rate.burst} at once and"
                f" {buckets.rate.per_second:g} a second after that",
                retry_after_ms=math.ceil(wait * 1000),
            )

    def check_at(self, category: Category, key: str, rate: Rate) -> None:
        """:meth:`check` at ``rate`` instead of the category's: a user's
        override. Buckets are kept per rate, so a changed override starts
        the user afresh, and there are as many sets as distinct overrides.
        """
        buckets = self._override_buckets.get((category, rate))
        if buckets is None:
            buckets = TokenBuckets(rate, clock=self._clock)
            self._override_buckets[category, rate] = buckets
        self._take(category, buckets, key)

    def bucket_count(self, category: Category) -> int:
        """How many buckets ``category`` holds: for tests and monitoring."""
        buckets = self._buckets.get(category)
        return 0 if buckets is None else len(buckets)


#: Finds who made a request from its access token: ``Auth.get_user``.
Identify = Callable[[Request], Awaitable[Requester]]


class RateOverrides(Protocol):
    """Admins' per-user overrides
    (:class:`ranvier.core.ratelimit_overrides.RateLimitOverrides`)."""

    async def rate_override(self, user_id: str) -> tuple[int, int] | None:
        """``(messages_per_second, burst_count)`` for ``user_id``, or None."""
        ...


class UserLimits:
    """The per-user categories, for a requester: counts an action, or
    raises :class:`~ranvier.errors.LimitExceededError`, honouring
    exemptions and admins' overrides (``overrides``, when admins may set
    them) the same way wherever the action is counted, by a route's
    category (:class:`RouteLimits`) or by the action a request stands for
    (a join sent as a member event through ``/state``, counted as a message
    by its route and as a join by its handler).
    """

    def __init__(self, limiter: RateLimiter, overrides: RateOverrides | None = None) -> None:
        self.limiter = limiter
        self._overrides = overrides

    async def check(self, category: Category, requester: Requester) -> None:
        """Count one action of the per-user ``category`` for ``requester``."""
        if not self.limiter.limits(category) or _exempt(requester):
            return
        user_id = requester.user_id
        own = await self._override(user_id) if category == "message" else None
        if own is not None and own[0] == 0:
            return
        # The one who holds the token: Synapse reads the override of a
        # request's authenticated entity, the admin behind a puppet token.
        holder = requester.puppeted_by or user_id
        if (category != "message" or holder != user_id) and await self._unlimited(holder):
            return
        if own is not None:
            per_second, burst = own
            self.limiter.check_at(category, user_id, Rate(per_second, max(burst, 1)))
            return
        self.limiter.check(category, user_id)

    async def _override(self, user_id: str) -> tuple[int, int] | None:
        return None if self._overrides is None else await self._overrides.rate_override(user_id)

    async def _unlimited(self, user_id: str) -> bool:
        own = await self._override(user_id)
        return own is not None and own[0] == 0


class RouteLimits:
    """Which routes are limited, and how, for :class:`~ranvier.api.app.ClientApp`
    and :class:`~ranvier.api.media.MediaApp`.

    ``routes`` maps (method, pattern) to a category (default
    :data:`DEFAULT_ROUTE_CATEGORIES`). For a per-user category the request's
    user is found with ``identify``; a request it refuses (no token, a bad
    one) goes on to its handler unlimited, which refuses it the same way.
    ``trust_x_forwarded_for`` takes the client address from the last
    ``X-Forwarded-For`` entry, which the reverse proxy in front of the
    server appended, instead of from the connection. ``overrides`` are
    admins' per-user overrides, when admins may set them; :attr:`users`
    counts actions of the per-user categories honouring them, for handlers
    that count an action their route's category does not.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        identify: Identify,
        routes: Mapping[tuple[str, str], Category] = DEFAULT_ROUTE_CATEGORIES,
        trust_x_forwarded_for: bool = False,
        overrides: RateOverrides | None = None,
    ) -> None:
        self.limiter = limiter
        self.users = UserLimits(limiter, overrides)
        self._identify = identify
        self._categories: dict[tuple[str, tuple[str | None, ...]], Category] = {}
        for (method, pattern), category in routes.items():
            self._categories[method.upper(), _shape(pattern)] = category
        self.trust_x_forwarded_for = trust_x_forwarded_for

    def category_of(self, route: Route) -> Category | None:
        """The category ``route`` is limited under, or None."""
        return self._categories.get((route.method, _same_version(route.segments)))

    async def apply(self, route: Route, request: Request, peer: tuple[str, int] | None) -> None:
        """Count the request against its route's limit, or raise
        :class:`~ranvier.errors.LimitExceededError`. ``peer`` is the ASGI
        scope's ``client``.
        """
        category = self.category_of(route)
        if category is None or not self.limiter.limits(category):
            # Nothing to count: the requester is not looked up either.
            return
        if category in IP_CATEGORIES:
            if access_token_of(request) is not None and not await self._limited(request):
                # An application service registering or logging in its users.
                return
            key = client_address(request, peer, trust_x_forwarded_for=self.trust_x_forwarded_for)
            self.limiter.check(category, key)
            return
        try:
            requester = await self._identify(request)
        except MatrixError:
            return
        await self.users.check(category, requester)

    async def _limited(self, request: Request) -> bool:
        try:
            return (await self._identify(request)).rate_limited
        except MatrixError:
            return True


def _exempt(requester: Requester) -> bool:
    """Whether the per-user categories leave ``requester`` alone: an admin,
    or an application service (or one of its users) not rate limited."""
    return requester.is_admin or not requester.rate_limited


def client_address(
    request: Request, peer: tuple[str, int] | None, *, trust_x_forwarded_for: bool
) -> str:
    """The address a request came from.

    With ``trust_x_forwarded_for``, the last entry of the last
    ``X-Forwarded-For`` header: a proxy that appends puts the address it
    saw there, after whatever the client claimed, and a proxy that
    replaces the header leaves only that. Without it, or without the
    header, the connection's peer (``"unknown"`` when the server does not
    say, as over a Unix socket).
    """
    if trust_x_forwarded_for:
        forwarded = [value for name, value in request.headers if name == "x-forwarded-for"]
        if forwarded:
            last = forwarded[-1].rsplit(",", 1)[-1].strip()
            if last:
                return last
    return peer[0] if peer else "unknown"


def _shape(pattern: str) -> tuple[str | None, ...]:
    # A pattern's segments as Router keeps them (literal text, None for a
    # parameter), under one version prefix.
    return _same_version(
        tuple(
            None if part.startswith("{") and part.endswith("}") else part
            for part in pattern[1:].split("/")
        )
    )


_OLD_VERSIONS: Final = frozenset(("r0", "v3"))
_VERSIONED_APIS: Final = frozenset(("client", "media"))


def _same_version(segments: tuple[str | None, ...]) -> tuple[str | None, ...]:
    # r0 and v3 are one API for the routes limited here, media's as the client API's.
    if (
        len(segments) > 2
        and segments[0] == "_matrix"
        and segments[1] in _VERSIONED_APIS
        and segments[2] in _OLD_VERSIONS
    ):
        return ("_matrix", segments[1], "v3", *segments[3:])
    return segments
