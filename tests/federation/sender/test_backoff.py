"""Retry intervals: their growth, jitter and cap, checked against the
bounds worked out here; and which failures count against a destination."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranvier.federation.sender import BackoffPolicy, is_destination_failure
from ranvier.federation.transport.client import (
    FederationConnectionError,
    FederationError,
    FederationRequestError,
    FederationResponseError,
    FederationTimeoutError,
)
from ranvier.storage.records import DestinationRetry

DEST = "remote.example"


@given(
    initial=st.integers(1, 10**7),
    multiplier=st.floats(1, 10),
    cap_factor=st.integers(1, 1000),
    jitter=st.floats(0, 0.9),
    previous=st.integers(0, 10**9),
    seed=st.integers(0, 2**32),
)
def test_each_interval_is_within_its_jitter_of_the_grown_one_and_capped(
    initial: int, multiplier: float, cap_factor: int, jitter: float, previous: int, seed: int
) -> None:
    policy = BackoffPolicy(
        initial_ms=initial, multiplier=multiplier, max_ms=initial * cap_factor, jitter=jitter
    )
    interval = policy.next_interval_ms(previous, random.Random(seed))
    base = initial if previous == 0 else previous * multiplier
    low = min(policy.max_ms, base * (1 - jitter))
    high = min(policy.max_ms, base * (1 + jitter))
    assert low - 1 <= interval <= high + 1
    assert 1 <= interval <= policy.max_ms


def test_without_jitter_intervals_double_up_to_the_cap() -> None:
    policy = BackoffPolicy(initial_ms=5_000, max_ms=60_000, jitter=0)
    rng = random.Random(0)
    intervals = [policy.next_interval_ms(0, rng)]
    for _ in range(5):
        intervals.append(policy.next_interval_ms(intervals[-1], rng))
    assert intervals == [5_000, 10_000, 20_000, 40_000, 60_000, 60_000]


def test_jitter_spreads_intervals_over_its_whole_range() -> None:
    policy = BackoffPolicy(initial_ms=10_000, jitter=0.2)
    rng = random.Random(42)
    firsts = [policy.next_interval_ms(0, rng) for _ in range(2_000)]
    assert min(firsts) >= 8_000
    assert max(firsts) <= 12_000
    # Spread across the range, not bunched at one end of it.
    assert min(firsts) < 8_200
    assert max(firsts) > 11_800
    assert len(set(firsts)) > 1_000


def test_the_default_policy_starts_small_and_stops_at_a_day() -> None:
    policy = BackoffPolicy()
    assert policy.initial_ms == 5_000
    assert policy.max_ms == 24 * 3600 * 1000
    assert policy.next_interval_ms(10**12, random.Random(1)) == policy.max_ms


def test_a_run_of_failures_keeps_its_start() -> None:
    policy = BackoffPolicy(initial_ms=1_000, jitter=0)
    rng = random.Random(0)
    first = policy.after_failure(DEST, None, 100, rng)
    assert first == DestinationRetry(
        destination=DEST, failure_ts=100, retry_last_ts=100, retry_interval_ms=1_000
    )
    second = policy.after_failure(DEST, first, 1_200, rng)
    assert second == DestinationRetry(
        destination=DEST, failure_ts=100, retry_last_ts=1_200, retry_interval_ms=2_000
    )
    # Retry state without a start (written by other code) starts the run now.
    adopted = DestinationRetry(
        destination=DEST, failure_ts=None, retry_last_ts=0, retry_interval_ms=4_000
    )
    assert policy.after_failure(DEST, adopted, 5_000, rng).failure_ts == 5_000


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial_ms": 0}, "initial_ms must be positive"),
        ({"initial_ms": 10, "max_ms": 5}, "must be at least initial_ms"),
        ({"multiplier": 0.5}, "multiplier must be at least 1"),
        ({"jitter": 1.0}, "jitter must be in"),
        ({"jitter": -0.1}, "jitter must be in"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**options)  # type: ignore[arg-type]


def _answered(status: int, errcode: str | None = None) -> FederationRequestError:
    return FederationRequestError(
        DEST, method="PUT", path="/send/1", status=status, errcode=errcode, error=None, body=None
    )


@pytest.mark.parametrize(
    ("failure", "counts"),
    [
        (FederationConnectionError(DEST, "connection refused"), True),
        (FederationTimeoutError(DEST, "no answer within 60s"), True),
        (FederationError(DEST, "something else"), True),
        (_answered(500), True),
        (_answered(502), True),
        (_answered(503, "M_UNKNOWN"), True),
        (_answered(429, "M_LIMIT_EXCEEDED"), True),
        (_answered(401, "M_UNAUTHORIZED"), True),
        (_answered(404), True),
        (_answered(404, "M_UNRECOGNIZED"), True),
        (_answered(405, "M_UNRECOGNIZED"), True),
        (_answered(400, "M_BAD_JSON"), False),
        (_answered(400, "M_NOT_JSON"), False),
        (_answered(403, "M_FORBIDDEN"), False),
        (_answered(404, "M_NOT_FOUND"), False),
        (_answered(413, "M_TOO_LARGE"), False),
        (FederationResponseError(DEST, "the answer is not valid JSON"), False),
    ],
)
def test_which_failures_count_against_the_destination(
    failure: FederationError, counts: bool
) -> None:
    assert is_destination_failure(failure) is counts
