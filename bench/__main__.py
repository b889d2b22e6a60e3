"""Run benchmarks: ``python -m bench [NAME ...]``; with no names, every one.

Prints a table per benchmark and writes ``bench/results/<name>.json``. An
unknown name is an error (exit status 2) before anything runs, so a typo
does not cost a long run. A benchmark that fails is reported and the
others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bench

RESULTS = Path(__file__).parent / "results"

Benchmark = Callable[[], dict[str, Any]]


def _available() -> list[str]:
    names = []
    for module in pkgutil.iter_modules(bench.__path__):
        if module.name.startswith("_") or module.ispkg:
            continue
        if hasattr(importlib.import_module(f"bench.{module.name}"), "run"):
            names.append(module.name)
    return sorted(names)


def _load(name: str) -> Benchmark | None:
    if name.startswith("_") or not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise
    run = getattr(module, "run", None)
    return run if callable(run) else None


def _format(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, float) and abs(value) < 1000:
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:,.0f}"


def _table(name: str, figures: dict[str, Any], seconds: float) -> str:
    width = max((len(key) for key in figures), default=0)
    lines = [f"{name} ({seconds:.1f} s)", "-" * (width + 16)]
    lines += [f"{key:<{width}}  {_format(value):>14}" for key, value in figures.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run")
    args = parser.parse_args(argv)
    names: list[str] = args.names or _available()
    benchmarks = {name: _load(name) for name in names}
    unknown = [name for name, run in benchmarks.items() if run is None]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(_available())}",
            file=sys.stderr,
        )
        return 2
    RESULTS.mkdir(exist_ok=True)
    status = 0
    for name, run in benchmarks.items():
        assert run is not None
        started = time.perf_counter()
        try:
            figures = run()
        except Exception:
            traceback.print_exc()
            print(f"benchmark {name} failed", file=sys.stderr)
            status = 1
            continue
        print(_table(name, figures, time.perf_counter() - started), end="\n\n", flush=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
