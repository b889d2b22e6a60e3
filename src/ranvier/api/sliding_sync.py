"""``POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync``:
simplified sliding sync (MSC4186), the sync Element X uses.

``pos``, ``timeout`` and ``set_presence`` are read from the query, as the
unstable endpoint has them, or from the body, where the MSC later moved
them; the body is read by :mod:`ranvier.core.sliding_sync_config` and
answered by :mod:`ranvier.core.sliding_sync`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.core.sliding_sync import SlidingSyncHandler
from ranvier.core.sliding_sync_config import parse_request
from ranvier.web import Request, Router

from .query_params import integer_param, invalid_param

__all__ = ["SLIDING_SYNC_PATH", "add_sliding_sync_route"]

SLIDING_SYNC_PATH: Final = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
_PRESENCE_STATES: Final = frozenset({"online", "offline", "unavailable"})


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def add_sliding_sync_route(
    router: Router, *, auth: _Auth, sliding_sync: SlidingSyncHandler
) -> None:
    """Serve the sliding sync endpoint; it needs an access token."""

    async def post_sync(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = parse_request({} if request.content is None else request.content)
        presence = request.query_value("set_presence") or body.set_presence
        if presence is not None and presence not in _PRESENCE_STATES:
            raise invalid_param(
                f"set_presence must be online, offline or unavailable, not {presence[:40]!r}"
            )
        timeout = integer_param(request, "timeout")
        pos = request.query_value("pos")
        return await sliding_sync.sync(
            requester,
            body,
            pos=pos if pos is not None else body.pos,
            timeout_ms=(timeout if timeout is not None else body.timeout_ms) or 0,
            set_presence=presence or "online",
        )

    router.add("POST", SLIDING_SYNC_PATH, post_sync)
