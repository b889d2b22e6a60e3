"""The process's own metrics, read from ``/proc/self`` at each scrape.

They carry the names every Prometheus client library gives them
(``process_resident_memory_bytes``, ``process_cpu_seconds_total`` …), so
dashboards made for other servers read them as they are. Reading a few
small procfs files costs microseconds and never waits on a disk, which is
why a scrape can do it on the event loop; where there is no ``/proc``
(not Linux) the families are exposed without samples.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Final

from ranvier.metrics import MetricFamily

__all__ = ["PROCESS_FAMILIES", "process_samples"]

PROCESS_FAMILIES: Final = (
    MetricFamily(
        "process_resident_memory_bytes", "gauge", "Resident memory size of the process in bytes."
    ),
    MetricFamily(
        "process_virtual_memory_bytes", "gauge", "Virtual memory size of the process in bytes."
    ),
    MetricFamily(
        "process_cpu_seconds_total", "counter", "User and system CPU time of the process."
    ),
    MetricFamily("process_open_fds", "gauge", "File descriptors the process has open."),
    MetricFamily("process_max_fds", "gauge", "The most file descriptors the process may open."),
    MetricFamily(
        "process_start_time_seconds",
        "gauge",
        "When the process started, in seconds since the Unix epoch.",
    ),
)

_PROC: Final = Path("/proc")
# Fields of /proc/self/stat, counted from the one after the command name
# (field 3 of proc(5), the state, is index 0 here).
_UTIME, _STIME, _STARTTIME, _VSIZE, _RSS = 11, 12, 19, 20, 21


def _boot_time() -> float | None:
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


_BOOT_TIME: Final = _boot_time()


def process_samples() -> dict[str, int | float]:
    """The process's memory, CPU time, file descriptors and start time now."""
    try:
        stat = (_PROC / "self" / "stat").read_text()
        open_fds = len(os.listdir(_PROC / "self" / "fd"))
    except OSError:
        return {}
    # The command name is in parentheses and may hold spaces and ')'.
    fields = stat.rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    samples: dict[str, int | float] = {
        "process_resident_memory_bytes": int(fields[_RSS]) * os.sysconf("SC_PAGE_SIZE"),
        "process_virtual_memory_bytes": int(fields[_VSIZE]),
        "process_cpu_seconds_total": (int(fields[_UTIME]) + int(fields[_STIME])) / ticks,
        "process_open_fds": open_fds,
    }
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit != resource.RLIM_INFINITY:
        samples["process_max_fds"] = soft_limit
    if _BOOT_TIME is not None:
        samples["process_start_time_seconds"] = _BOOT_TIME + int(fields[_STARTTIME]) / ticks
    return samples
