"""The SQL that reads a member event's membership from its stored JSON.

Several reads ask which users are joined (room members, admin listings,
the users whose device lists we follow or keep): each reads
``content.membership`` of the member events in a room's current state, and
each must read it alike, so that no two disagree on an odd event whose
membership is not a string.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MEMBERSHIP", "membership_of"]


def membership_of(alias: str) -> str:
    """The ``content.membership`` of the event aliased ``alias`` when it is
    a string, else NULL."""
    json = f"CAST({alias}.json AS TEXT)"
    return (
        f"CASE WHEN json_type({json}, '$.content.membership') = 'text'"
        f" THEN json_extract({json}, '$.content.membership') END"
    )


#: :func:`membership_of` the event aliased ``e``, as most reads name it.
MEMBERSHIP: Final = membership_of("e")
