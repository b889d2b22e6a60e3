"""The leaving server's side of ``make_leave`` and ``send_leave`` (v2), for
:class:`~ranvier.core.room_leaves.RoomLeaves`: how a user of ours declines
an invite to a room no user of ours is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.federation.refusals import refusal_error, segment
from ranvier.federation.transport.client import FederationError, FederationHttpClient

__all__ = ["FederationLeaveClient"]


class FederationLeaveClient:
    """``GET /v1/make_leave`` and ``PUT /v2/send_leave`` over ``http``."""

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def make_leave(self, destination: str, room_id: str, user_id: str) -> Any:
        path = f"/_matrix/federation/v1/make_leave/{segment(room_id)}/{segment(user_id)}"
        try:
            return await self._http.get_json(destination, path)
        except FederationError as exc:
            raise refusal_error(exc) from None

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> None:
        path = f"/_matrix/federation/v2/send_leave/{segment(room_id)}/{segment(event_id)}"
        try:
            await self._http.request("PUT", destination, path, content=dict(event))
        except FederationError as exc:
            raise refusal_error(exc) from None
