"""ranvier: a Matrix homeserver core for Trio.

The server's names (:func:`open_homeserver`, :class:`HomeServer`, the
configuration) are imported on first use: they bring in the HTTP server,
TLS and storage, which a program using only :mod:`ranvier.protocol` should
not have to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ranvier.errors import (
    BadJsonError,
    EventTooLargeError,
    InvalidSignatureError,
    LimitExceededError,
    MatrixError,
    PartialStateConflictError,
    UnsupportedRoomVersionError,
)

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from ranvier.config import Config, ConfigError, load_config
    from ranvier.core.event_stream import StreamedEvent
    from ranvier.malloc import limit_malloc_arenas
    from ranvier.server import HomeServer, open_homeserver

__all__ = [
    "BadJsonError",
    "Config",
    "ConfigError",
    "EventTooLargeError",
    "HomeServer",
    "InvalidSignatureError",
    "LimitExceededError",
    "MatrixError",
    "PartialStateConflictError",
    "StreamedEvent",
    "UnsupportedRoomVersionError",
    "__version__",
    "limit_malloc_arenas",
    "load_config",
    "open_homeserver",
]

_LAZY = {
    "Config": "ranvier.config",
    "ConfigError": "ranvier.config",
    "load_config": "ranvier.config",
    "limit_malloc_arenas": "ranvier.malloc",
    "HomeServer": "ranvier.server",
    "open_homeserver": "ranvier.server",
    "StreamedEvent": "ranvier.core.event_stream",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ranvier' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
