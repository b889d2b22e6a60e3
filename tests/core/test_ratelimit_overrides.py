"""Rate overrides over real storage: what the limiter is told, and how
long a change made elsewhere takes to be seen through the cache."""

from __future__ import annotations

import argon2
import trio
from trio.testing import MockClock

from ranvier.core.accounts import Accounts
from ranvier.core.ratelimit_overrides import CACHE_SECONDS, RateLimitOverrides
from ranvier.storage import Storage


async def _alice(storage: Storage) -> str:
    accounts = Accounts(
        server_name="example.org",
        store=storage.accounts,
        password_hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
    )
    return (await accounts.register("alice", None, login=False)).user_id


async def test_changes_here_are_seen_at_once_and_elsewhere_within_the_cache_life(
    storage: Storage, mock_clock: MockClock
) -> None:
    alice = await _alice(storage)
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


class _PausedReads:
    """The real store, whose reads of overrides wait, once read, for
    ``release``: a change can be made while a read is under way."""

    def __init__(self, storage: Storage) -> None:
        self._store = storage.ratelimit_overrides
        self.read_done = trio.Event()
        self.release = trio.Event()

    async def override(self, user_id: str) -> tuple[int, int] | None:
        found = await self._store.override(user_id)
        self.read_done.set()
        await self.release.wait()
        return found

    async def set_override(self, user_id: str, messages_per_second: int, burst_count: int) -> None:
        await self._store.set_override(user_id, messages_per_second, burst_count)

    async def delete_override(self, user_id: str) -> None:
        await self._store.delete_override(user_id)


async def test_a_change_made_during_a_read_is_not_hidden_by_the_read_s_answer(
    storage: Storage,
) -> None:
    store = _PausedReads(storage)
    overrides = RateLimitOverrides(store=store)
    alice = await _alice(storage)
    old: list[tuple[int, int] | None] = []

    async def read() -> None:
        old.append(await overrides.rate_override(alice))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await store.read_done.wait()
        # Set while the read, which found no override, is still to answer.
        await overrides.set(alice, {"messages_per_second": 0, "burst_count": 0})
        store.release.set()
    assert old == [None]
    # The read's answer predates the change: it is not kept in its place.
    assert await overrides.rate_override(alice) == (0, 0)
