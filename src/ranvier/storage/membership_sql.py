"""The SQL that reads a member event's membership from its stored JSON.

Several reads ask which users are joined (room members, admin listings,
the users whose device lists we follow or keep): each reads
``content.membership`` of the member events in a room's current state, and
each must read it alike, so that no two disagree on an odd event whose
membership is not a string.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MEMBERSHIP"]

#: The ``content.membership`` of the event aliased ``e`` when it is a
#: string, else NULL.
MEMBERSHIP: Final = (
    "CASE WHEN json_type(CAST(e.json AS TEXT), '$.content.membership') = 'text'"
    " THEN json_extract(CAST(e.json AS TEXT), '$.content.membership') END"
)
