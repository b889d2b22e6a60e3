"""The arena cap, seen in glibc's own statistics of a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_PROGRAM = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, threading
    from ranvier import limit_malloc_arenas

    if sys.argv[1] == "cap":
        print("capped:", limit_malloc_arenas(), flush=True)
    # Eight threads allocating at once, each in sizes malloc serves from
    # an arena (above Python's small-object allocator, below mmap's).
    start = threading.Barrier(8)
    kept = []

    def allocate():
        start.wait()
        kept.append([bytearray(20_000) for _ in range(50)])

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
    """
)


def _arenas(mode: str, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return arenas, done.stdout


def test_a_capped_process_holds_two_arenas_where_threads_would_make_more() -> None:
    uncapped, _ = _arenas("free")
    assert uncapped > 2
    capped, said = _arenas("cap")
    assert said.strip() == "capped: True"
    assert capped == 2


def test_the_operators_own_setting_is_left_alone() -> None:
    arenas, said = _arenas("cap", MALLOC_ARENA_MAX="3")
    assert said.strip() == "capped: False"
    assert arenas <= 3
