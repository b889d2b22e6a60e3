"""What the membership handshakes (join, invite, knock, leave) send as path
segments, and how another server's refusal reaches the client that asked:
with that server's errcode and status, so that a client sees why it was
turned away; a server that gave no usable answer is a 502.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from ranvier.errors import MatrixError
from ranvier.federation.transport.client import FederationError, FederationRequestError

__all__ = ["refusal_error", "segment"]


def segment(value: str) -> str:
    """``value`` quoted whole, so a ``/`` in an ID stays inside its segment."""
    return urllib.parse.quote(value, safe="")


def refusal_error(exc: FederationError, *, with_room_version: bool = False) -> MatrixError:
    """``exc`` as the error to answer with.

    ``with_room_version`` keeps a refusal's ``room_version`` (a join's
    ``M_INCOMPATIBLE_ROOM_VERSION`` names the version the client lacks).
    """
    if isinstance(exc, FederationRequestError):
        extra: dict[str, Any] = {}
        if (
            with_room_version
            and isinstance(exc.body, dict)
            and isinstance(exc.body.get("room_version"), str)
        ):
            extra["room_version"] = exc.body["room_version"]
        return MatrixError(
            f"{exc.destination} refused: {exc.error or exc}",
            errcode=exc.errcode or "M_UNKNOWN",
            http_status=exc.status,
            **extra,
        )
    return MatrixError(str(exc), errcode="M_UNKNOWN", http_status=502)
