"""The C allocator's arenas, capped for a server process.

glibc gives each thread that allocates its own arena, up to eight per
core, and keeps what an arena once held: a server whose storage writer,
reader threads and signature checks each touch large buffers (a room's
whole state arriving over federation) ends up holding several peaks at
once. Two arenas keep the peak close to the largest single one, at no cost
measurable here, since the threads mostly wait on SQLite and libsodium
with the GIL released. This is the ``MALLOC_ARENA_MAX=2`` that operators
set for threaded Python servers, applied by ``ranvier serve`` and
``ranvier worker`` themselves; a program embedding ranvier owns its process
and decides for itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Final

__all__ = ["SERVER_ARENAS", "limit_malloc_arenas"]

#: Arenas for a server process.
SERVER_ARENAS: Final = 2
#: glibc's mallopt parameter for the arena cap (malloc.h's M_ARENA_MAX).
_M_ARENA_MAX: Final = -8


def limit_malloc_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Cap glibc's arenas at ``arenas``, before the threads that would make
    more start; whether the cap was set.

    Nothing is changed where the allocator is not glibc's, or where the
    operator chose already through ``MALLOC_ARENA_MAX`` (glibc read it at
    the start of the process).
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))
