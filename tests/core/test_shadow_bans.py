"""The pause before an answer faked for a shadow-banned user, on Trio's
(mock) clock: drawn from its range, varying, cancellable, none when the
range is nothing."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from ranvier.core.shadow_bans import DEFAULT_DELAY_SECONDS, NO_DELAY, ShadowBans


async def _timed(bans: ShadowBans) -> float:
    started = trio.current_time()
    await bans.pause()
    return trio.current_time() - started


async def test_each_pause_is_drawn_from_synapses_range(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bans = ShadowBans(rng=random.Random(7))
    waits = [await _timed(bans) for _ in range(50)]
    shortest, longest = DEFAULT_DELAY_SECONDS
    assert all(shortest <= wait <= longest for wait in waits)
    # Not one fixed delay a client could learn to expect.
    assert max(waits) - min(waits) > 3


async def test_no_range_no_pause(autojump_clock: trio.testing.MockClock) -> None:
    assert await _timed(ShadowBans(delay_seconds=NO_DELAY)) == 0


async def test_a_pause_ends_when_the_request_is_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bans = ShadowBans(delay_seconds=(5.0, 5.0))
    started = trio.current_time()
    with trio.move_on_after(1) as scope:
        await bans.pause()
    assert scope.cancelled_caught
    assert trio.current_time() - started == 1


@pytest.mark.parametrize("delay", [(2.0, 1.0), (-1.0, 1.0)])
def test_a_range_must_run_upwards_from_zero(delay: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="delay range"):
        ShadowBans(delay_seconds=delay)
