"""How long to leave a destination alone after it failed us, and which
failures count.

A destination that cannot be reached is retried after an interval that
grows by ``multiplier`` with each failure in a row, up to ``max_ms``, each
interval scaled by a random factor within ``jitter`` of 1 so that the many
servers that lost touch with one destination at the same moment do not all
come back to it at the same moment. One success ends the run of failures.

Failures that count are those of the destination or the path to it: no
answer, a timeout, a 5xx, 429 (it asked us to slow down), 401 (it could not
check our signature, typically because it could not fetch our keys) and an
endpoint it does not have (404 or 405 without another Matrix error: a server
that is gone, or is not a homeserver). Any other 4xx is the destination's
considered refusal of the transaction itself: sending it again will not
change the answer, so it is dropped instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ranvier.federation.transport.client import (
    FederationError,
    FederationRequestError,
    FederationResponseError,
)
from ranvier.storage.records import DestinationRetry

__all__ = ["BackoffPolicy", "is_destination_failure"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The growth of retry intervals, in milliseconds."""

    initial_ms: int = 5_000
    multiplier: float = 2.0
    max_ms: int = 24 * 3600 * 1000
    #: Each interval is scaled by a factor drawn from [1 - jitter, 1 + jitter].
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial_ms <= 0:
            raise ValueError(f"initial_ms must be positive, not {self.initial_ms}")
        if self.max_ms < self.initial_ms:
            raise ValueError(
                f"max_ms ({self.max_ms}) must be at least initial_ms ({self.initial_ms})"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter}")

    def next_interval_ms(self, previous_ms: int, rng: random.Random) -> int:
        """The interval after one more failure, ``previous_ms`` being the one
        before it (0 for the first failure of a run).
        """
        base = self.initial_ms if previous_ms <= 0 else previous_ms * self.multiplier
        scaled = base * rng.uniform(1 - self.jitter, 1 + self.jitter)
        return max(1, min(self.max_ms, round(scaled)))

    def after_failure(
        self,
        destination: str,
        previous: DestinationRetry | None,
        now_ms: int,
        rng: random.Random,
    ) -> DestinationRetry:
        """The retry state to keep once ``destination`` failed at ``now_ms``."""
        failing_since = previous.failure_ts if previous is not None else None
        interval = self.next_interval_ms(
            previous.retry_interval_ms if previous is not None else 0, rng
        )
        return DestinationRetry(
            destination=destination,
            failure_ts=failing_since if failing_since is not None else now_ms,
            retry_last_ts=now_ms,
            retry_interval_ms=interval,
        )


def is_destination_failure(exc: FederationError) -> bool:
    """Whether a failed request says the destination is unwell (back off and
    send the same transaction again later) rather than that it refused what
    was sent (drop it).

    A 2xx answer whose body cannot be read is neither: the destination took
    the transaction.
    """
    if isinstance(exc, FederationResponseError):
        return False
    if isinstance(exc, FederationRequestError):
        return (
            exc.status >= 500
            or exc.status in (401, 429)
            or (exc.status in (404, 405) and exc.errcode in (None, "M_UNRECOGNIZED"))
        )
    return True
