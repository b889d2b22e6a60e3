"""What a user does, as presence hears of it.

Sending an event, a receipt, a read marker or a typing notice is a sign
that the user is at their client. The modules that take those
(:mod:`ranvier.core.creation`, :mod:`ranvier.core.receipts`,
:mod:`ranvier.core.typing`) tell an :class:`ActivityListener`, which
:class:`ranvier.core.presence.Presence` is; the Protocol lives here so that
none of them imports presence, which imports them.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ActivityListener"]


class ActivityListener(Protocol):
    """Hears that a local user did something just now."""

    async def user_active(self, user_id: str) -> None: ...
