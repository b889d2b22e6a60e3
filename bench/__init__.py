"""ranvier's benchmarks, run with ``python -m bench [NAME ...]`` (or ``nox -s bench``).

Each benchmark is a module ``bench/<name>.py`` with a synchronous
``run() -> dict[str, Any]`` that returns its figures, JSON-serialisable, with
the unit in each key's name (``..._ops_per_s``, ``..._speedup``). The runner
prints them and writes ``bench/results/<name>.json``. Modules whose names
start with ``_`` are helpers, not benchmarks.

Figures worth comparing are measured against a reference in the same run,
on the same machine, so that the ratio means something even where the
absolute rates do not.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["JsonLines", "ops_per_second"]


class JsonLines:
    """Lines of a child process's standard output, one JSON object each."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            if not data:
                raise AssertionError("the child process exited before reporting")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer


#: ``0`` runs the benchmarks' servers without a signature process (their
#: signatures are then checked in threads), to compare the two.
SIGNATURE_PROCESS_VARIABLE = "RANVIER_BENCH_SIGNATURE_PROCESS"


def signature_process_wanted() -> bool:
    """Whether the servers a benchmark starts get a signature process."""
    return os.environ.get(SIGNATURE_PROCESS_VARIABLE, "1") != "0"


def ops_per_second(
    operation: Callable[[], object],
    *,
    ops_per_call: int = 1,
    repeats: int = 5,
    seconds_per_repeat: float = 0.2,
) -> float:
    """The best rate of ``operation`` over several timed repeats.

    The number of calls per repeat is calibrated first, so that each repeat
    lasts about ``seconds_per_repeat`` whatever the operation costs. The best
    repeat is kept, not the mean: slower repeats measure interference from
    the rest of the machine, not the code. ``ops_per_call`` counts the
    operations one call makes (for example one per event of a batch).
    """
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            operation()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds_per_repeat / 10:
            break
        calls *= 2
    calls = max(1, round(calls * seconds_per_repeat / elapsed))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            operation()
        best = min(best, time.perf_counter() - started)
    return calls * ops_per_call / best
