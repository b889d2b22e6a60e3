"""ranvier: a Matrix homeserver core for Trio."""

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

__all__ = [
    "BadJsonError",
    "EventTooLargeError",
    "InvalidSignatureError",
    "LimitExceededError",
    "MatrixError",
    "PartialStateConflictError",
    "UnsupportedRoomVersionError",
    "__version__",
]
