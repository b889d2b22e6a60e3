"""What the replication endpoints look like on the wire: paths, the body
type, and errors as status and errcode.

An error the main process meets running a write is answered so that the
worker raises what the write would have raised in one process:

* :class:`~ranvier.errors.PartialStateConflictError`: 409 with the errcode
  :data:`PARTIAL_STATE_CONFLICT`. Only that errcode becomes the conflict
  again on the worker: any other 409 stays an error of its own.
* :class:`~ranvier.errors.StaleRunError`: 409 with :data:`STALE_RUN`.
* :class:`~ranvier.errors.PartialStateEventsRemainError`: 409 with
  :data:`PARTIAL_STATE_EVENTS_REMAIN` and the room's ID.
* :class:`~ranvier.errors.RoomGoneError`: 404 with :data:`ROOM_GONE` and
  the room's ID, so work on the worker that drops a purged room's write
  catches it by class; a client is still answered its 404 ``M_NOT_FOUND``.
* :class:`~ranvier.storage.accounts.UserInUseError`: its errcode and the
  user ID, so the worker can catch it by class.
* any other :class:`~ranvier.errors.MatrixError`: its errcode, status,
  message and extra fields.
* anything else: 500 ``M_UNKNOWN``, which the worker retries.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ranvier.errors import (
    MatrixError,
    PartialStateConflictError,
    PartialStateEventsRemainError,
    RoomGoneError,
    StaleRunError,
)
from ranvier.storage.accounts import UserInUseError

__all__ = [
    "BODY_TYPE",
    "CONTROL",
    "EPHEMERAL",
    "FED_SEND_EVENTS",
    "HEARD_FROM",
    "PARTIAL_STATE_CONFLICT",
    "PARTIAL_STATE_EVENTS_REMAIN",
    "PREFIX",
    "RESYNC",
    "ROOM_GONE",
    "SEND_EVENT",
    "STALE_RUN",
    "STREAM",
    "WRITE",
    "error_answer",
    "error_from_answer",
]

PREFIX: Final = "/_ranvier/replication/"
FED_SEND_EVENTS: Final = PREFIX + "fed_send_events/{txn_id}"
SEND_EVENT: Final = PREFIX + "send_event/{event_id}/{txn_id}"
WRITE: Final = PREFIX + "write/{operation}/{txn_id}"
#: Requests that are not writes: the stream of positions, resync requests,
#: typing and presence changes, servers heard from.
CONTROL: Final = PREFIX + "control/"
STREAM: Final = CONTROL + "stream"
RESYNC: Final = CONTROL + "resync/{room_id}"
EPHEMERAL: Final = CONTROL + "ephemeral/{kind}"
HEARD_FROM: Final = CONTROL + "heard_from"

#: Request and success bodies: msgspec's MessagePack, which carries bytes
#: (an event's JSON) as they are. Error bodies are Matrix's JSON.
BODY_TYPE: Final = "application/msgpack"

PARTIAL_STATE_CONFLICT: Final = "RANVIER_PARTIAL_STATE_CONFLICT"
PARTIAL_STATE_EVENTS_REMAIN: Final = "RANVIER_PARTIAL_STATE_EVENTS_REMAIN"
ROOM_GONE: Final = "RANVIER_ROOM_GONE"
STALE_RUN: Final = "RANVIER_STALE_RUN"


def error_answer(error: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` for an error a write raised on the main process."""
    if isinstance(error, PartialStateConflictError):
        return 409, {"errcode": PARTIAL_STATE_CONFLICT, "error": str(error)}
    if isinstance(error, StaleRunError):
        return 409, {"errcode": STALE_RUN, "error": str(error)}
    if isinstance(error, PartialStateEventsRemainError):
        return 409, {
            "errcode": PARTIAL_STATE_EVENTS_REMAIN,
            "error": str(error),
            "room_id": error.room_id,
        }
    if isinstance(error, RoomGoneError):
        return error.http_status, {
            "errcode": ROOM_GONE,
            "error": str(error),
            "room_id": error.room_id,
        }
    if isinstance(error, UserInUseError):
        return error.http_status, {**error.to_json(), "user_id": error.user_id}
    if isinstance(error, MatrixError):
        return error.http_status, error.to_json()
    return 500, {
        "errcode": "M_UNKNOWN",
        "error": f"the write failed on the main process: {type(error).__name__}: {error}",
    }


def error_from_answer(status: int, body: bytes) -> Exception:
    """The error to raise on the worker for an error answer of the main process."""
    try:
        content = msgspec.json.decode(body)
    except msgspec.DecodeError:
        content = None
    if not isinstance(content, dict):
        content = {}
    errcode = content.get("errcode")
    message = content.get("error")
    if not isinstance(errcode, str):
        errcode = "M_UNKNOWN"
    if not isinstance(message, str):
        message = f"the main process answered {status} without a Matrix error"
    room_id = content.get("room_id")
    user_id = content.get("user_id")
    if status == 409 and errcode == PARTIAL_STATE_CONFLICT:
        return PartialStateConflictError(message)
    if status == 409 and errcode == STALE_RUN:
        return StaleRunError(message)
    if status == 409 and errcode == PARTIAL_STATE_EVENTS_REMAIN and isinstance(room_id, str):
        return PartialStateEventsRemainError(room_id)
    if status == 404 and errcode == ROOM_GONE and isinstance(room_id, str):
        return RoomGoneError(room_id)
    if errcode == UserInUseError.errcode and isinstance(user_id, str):
        return UserInUseError(user_id)
    extra = {key: value for key, value in content.items() if key not in ("errcode", "error")}
    return MatrixError(message, errcode=errcode, http_status=status, **extra)
