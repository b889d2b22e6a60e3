"""Admins' per-user overrides of the rate limits (Synapse's
``override_ratelimit``): a bot or a bridge may send faster than people,
or act without any per-user limit (a rate of 0), and a noisy account
send slower (:class:`ranvier.api.ratelimit.UserLimits` applies them).

The rate limiter asks for a user's override on each limited action, so the
answers are cached (:meth:`RateLimitOverrides.rate_override`): a change
made here clears the user's entry at once; an entry otherwise lives
:data:`CACHE_SECONDS`, which is how long a change made through another
process (the main process and a worker each hold a cache) takes to be
honoured here. Overrides are rare and changed by hand, so a short delay
across processes is a fair price for not reading the database on every
message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import trio

from ranvier.errors import MatrixError

__all__ = ["CACHE_SECONDS", "RateLimitOverrides"]

#: How long a cached override (or the lack of one) is trusted.
CACHE_SECONDS: Final = 30.0
# Users whose answers are cached at most; the least recently read go first.
_MAX_CACHED: Final = 10_000
# Past this the numbers mean nothing to a bucket (and fit SQLite's integers).
_MAX_VALUE: Final = 2**31 - 1

_Override = tuple[int, int] | None


class OverrideStore(Protocol):
    """:class:`ranvier.storage.ratelimit_overrides.RateLimitOverrideStorage`."""

    async def override(self, user_id: str) -> tuple[int, int] | None: ...

    async def set_override(
        self, user_id: str, messages_per_second: int, burst_count: int
    ) -> None: ...

    async def delete_override(self, user_id: str) -> None: ...


def _count(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_VALUE:
        raise MatrixError(
            f"'{key}' must be a whole number from 0 to {_MAX_VALUE}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return value


def _shown(override: _Override) -> dict[str, Any]:
    if override is None:
        return {}
    return {"messages_per_second": override[0], "burst_count": override[1]}


class RateLimitOverrides:
    """Reads and sets the overrides; see the module's doc. ``clock`` is
    Trio's, so a test's ``MockClock`` drives the cache's lifetime. Whether
    the user is a local account is the caller's to check (the admin API's
    :meth:`ranvier.core.admin_users.AdminUsers.require_user`)."""

    def __init__(
        self,
        *,
        store: OverrideStore,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._store = store
        self._clock = clock
        # User -> (when the entry goes stale, the override or None).
        self._cache: OrderedDict[str, tuple[float, _Override]] = OrderedDict()
        # Counts the changes made here: a read that a change overtook may
        # hold the old override, so its answer is not cached.
        self._changes = 0

    async def rate_override(self, user_id: str) -> tuple[int, int] | None:
        """``(messages_per_second, burst_count)`` set for ``user_id``, or None."""
        now = self._clock()
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(user_id)
            return cached[1]
        changes = self._changes
        override = await self._store.override(user_id)
        if changes != self._changes:
            return override
        self._cache[user_id] = (now + CACHE_SECONDS, override)
        self._cache.move_to_end(user_id)
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return override

    async def get(self, user_id: str) -> dict[str, Any]:
        """``GET``: the override, or ``{}`` if none is set."""
        return _shown(await self._store.override(user_id))

    async def set(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST``: set the override (each number 0 if absent) and show it."""
        per_second = _count(body, "messages_per_second")
        burst = _count(body, "burst_count")
        if per_second > 0 and burst == 0:
            raise MatrixError(
                "a burst_count of 0 with a positive messages_per_second would refuse every"
                " message: set both to 0 for no limit",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        await self._store.set_override(user_id, per_second, burst)
        self._forget(user_id)
        return _shown((per_second, burst))

    async def delete(self, user_id: str) -> None:
        """``DELETE``: the default limit applies again."""
        await self._store.delete_override(user_id)
        self._forget(user_id)

    def _forget(self, user_id: str) -> None:
        """Drop ``user_id``'s cached answer, and any a read under way
        would cache, after a change."""
        self._cache.pop(user_id, None)
        self._changes += 1
