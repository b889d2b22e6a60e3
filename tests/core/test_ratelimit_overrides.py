"""Rate overrides over real storage: what the limiter is told, and how
long a change made elsewhere takes to be seen through the cache."""

from __future__ import annotations

import argon2
from trio.testing import MockClock

from ranvier.core.accounts import Accounts
from ranvier.core.ratelimit_overrides import CACHE_SECONDS, RateLimitOverrides
from ranvier.storage import Storage


async def test_changes_here_are_seen_at_once_and_elsewhere_within_the_cache_life(
    storage: Storage, mock_clock: MockClock
) -> None:
    accounts = Accounts(
        server_name="example.org",
        store=storage.accounts,
        password_hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
    )
    alice = (await accounts.register("alice", None, login=False)).user_id
    here = RateLimitOverrides(store=storage.ratelimit_overrides)
    elsewhere = RateLimitOverrides(store=storage.ratelimit_overrides)
    assert await elsewhere.rate_override(alice) is None

    assert await here.set(alice, {"messages_per_second": 3, "burst_count": 9}) == {
        "messages_per_second": 3,
        "burst_count": 9,
    }
    assert await here.rate_override(alice) == (3, 9)
    # Another process's cache still holds the old answer, for a while.
    assert await elsewhere.rate_override(alice) is None
    mock_clock.jump(CACHE_SECONDS)
    assert await elsewhere.rate_override(alice) == (3, 9)

    await here.delete(alice)
    assert await here.rate_override(alice) is None
    assert await here.get(alice) == {}
    mock_clock.jump(CACHE_SECONDS)
    assert await elsewhere.rate_override(alice) is None
