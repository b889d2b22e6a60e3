"""The query parameters that several client-server routes read alike
(``limit``, ``dir``, ``filter``, true-or-false flags): one reading, so that
each route refuses the same bad value with the same 400 ``M_INVALID_PARAM``.
Integers and flags are read as the federation API reads them, by
:mod:`ranvier.web`; ``dir`` and ``filter`` are the client API's own.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ranvier.core.filters import RoomEventFilter, parse_room_event_filter
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.web import Request, flag_param, integer_param, invalid_param

__all__ = [
    "direction_param",
    "flag_param",
    "integer_param",
    "invalid_param",
    "room_event_filter_param",
]


def direction_param(request: Request) -> Literal["b", "f"]:
    """``dir``: ``b`` (the default) or ``f``."""
    direction = request.query_value("dir") or "b"
    if direction not in ("b", "f"):
        raise invalid_param(f"dir must be b or f, not {direction[:40]!r}")
    return "b" if direction == "b" else "f"


def room_event_filter_param(request: Request) -> RoomEventFilter | None:
    """``filter``, a JSON ``RoomEventFilter``, or None when absent."""
    raw = request.query_value("filter")
    if raw is None:
        return None
    try:
        content = decode_untrusted_json(raw)
    except msgspec.DecodeError as exc:
        raise invalid_param(f"the filter parameter is not valid JSON: {exc}") from None
    return parse_room_event_filter(content)
