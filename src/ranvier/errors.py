"""Errors that cross layers.

Every layer of ranvier (protocol, core, storage, federation, the APIs) may
import this module and nothing it imports comes from ranvier, so an error
raised deep in storage can be caught by name in a request handler without an
import cycle.

A :class:`MatrixError` carries what the specification needs to answer a
request with it: an ``errcode``, a human-readable message and the HTTP status.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BadJsonError",
    "EventTooLargeError",
    "InvalidSignatureError",
    "LimitExceededError",
    "MatrixError",
    "PartialStateConflictError",
    "PartialStateEventsRemainError",
    "RoomGoneError",
    "StaleRunError",
    "StorageUnavailableError",
    "UnsupportedRoomVersionError",
]


class MatrixError(Exception):
    """An error that the Matrix APIs can answer with: errcode, message, status."""

    errcode: str = "M_UNKNOWN"
    http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        errcode: str | None = None,
        http_status: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if errcode is not None:
            self.errcode = errcode
        if http_status is not None:
            self.http_status = http_status
        # Extra fields defined by the spec for some errcodes (for example
        # ``retry_after_ms`` on M_LIMIT_EXCEEDED) go into the response body.
        self.extra: dict[str, Any] = extra

    def to_json(self) -> dict[str, Any]:
        """The body of an error response, as the spec shapes it."""
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.message}
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.errcode}, {self.message!r})"


class BadJsonError(MatrixError):
    """JSON that is not valid, not canonical, or not shaped as required."""

    errcode = "M_BAD_JSON"
    http_status = 400


class EventTooLargeError(MatrixError):
    """An event or one of its fields over the spec's size limits."""

    errcode = "M_TOO_LARGE"
    http_status = 413


class InvalidSignatureError(MatrixError):
    """A signature that is missing, made with an unknown key, or wrong."""

    errcode = "M_UNAUTHORIZED"
    http_status = 401


class AuthError(MatrixError):
    """An event that the authorization rules reject.

    ``rule`` names the rule that failed with a stable dotted name (for example
    ``member.join.banned``), so logs, metrics and tests can tell rejections
    apart without parsing the message; rule numbers shift between room
    versions, names do not.
    """

    errcode = "M_FORBIDDEN"
    http_status = 403

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rule}, {self.message!r})"


class UnsupportedRoomVersionError(MatrixError):
    """A room version that ranvier does not know, or knows and refuses."""

    errcode = "M_UNSUPPORTED_ROOM_VERSION"
    http_status = 400


class LimitExceededError(MatrixError):
    """Too many requests: the client should retry after ``retry_after_ms``."""

    errcode = "M_LIMIT_EXCEEDED"
    http_status = 429

    def __init__(self, message: str = "Too many requests", *, retry_after_ms: int) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


class PartialStateConflictError(Exception):
    """An event's context was computed while its room had partial state, and
    the room's partial state was cleared before the event could be written.

    It is not a :class:`MatrixError` on purpose: it never reaches a client or
    a remote server as itself. The caller recomputes the event's context and
    tries again; a client that hits it twice sees :class:`LimitExceededError`.
    """

    def __init__(self, message: str = "the room's partial state changed under this write") -> None:
        super().__init__(message)


class PartialStateEventsRemainError(Exception):
    """A room's partial state was to be cleared while some of its events still
    have partial state.

    The foreign key between partial-state events and their room fails this
    way round too. The un-partial-state task catches it by name (it cannot
    import storage), finishes the events that remain, and clears again.
    """

    def __init__(self, room_id: str) -> None:
        super().__init__(f"{room_id} still has events with partial state")
        self.room_id = room_id


class StaleRunError(Exception):
    """A run of events was judged against storage as a write of its room
    left it, and storage has changed since, or holds one of the events, or
    an event or a redaction naming one: the write is refused whole.

    Ingestion judges a room's events against what it knows of the room
    from its own last write, without reading it again; the write checks
    that knowledge in its own transaction and refuses with this when it no
    longer holds. Like :class:`PartialStateConflictError` it never reaches
    a client or a remote server: the run reads the room and is judged again.
    """

    def __init__(self, message: str = "the room changed since the run's knowledge of it") -> None:
        super().__init__(message)


class RoomGoneError(MatrixError):
    """A write of a room that is not stored here, by work that found it
    stored when it began: the room was purged since.

    Storage raises it inside the write's own transaction (nothing of it is
    kept), so work in flight on a room during its purge cannot bring rows
    of it back. Callers drop what they were doing; a client or a remote
    server is answered 404.
    """

    errcode = "M_NOT_FOUND"
    http_status = 404

    def __init__(self, room_id: str) -> None:
        super().__init__(f"{room_id} is not stored here (any more): it was purged")
        self.room_id = room_id


class StorageUnavailableError(MatrixError):
    """The storage actor is not running: it was stopped, or it failed on a
    fatal database error. Every layer may meet it, so it lives here.
    """

    errcode = "M_UNKNOWN"
    http_status = 503
