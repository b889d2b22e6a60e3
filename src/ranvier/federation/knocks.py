"""The knocking server's side of ``make_knock`` and ``send_knock`` (v1), for
:class:`~ranvier.core.knocks.RoomKnocks`: how a user of ours knocks on a
room no user of ours is in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ranvier.federation.refusals import refusal_error, segment
from ranvier.federation.transport.client import FederationError, FederationHttpClient

__all__ = ["FederationKnockClient"]


class FederationKnockClient:
    """``GET /v1/make_knock`` and ``PUT /v1/send_knock`` over ``http``."""

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def make_knock(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        path = f"/_matrix/federation/v1/make_knock/{segment(room_id)}/{segment(user_id)}"
        try:
            return await self._http.get_json(destination, path, query={"ver": list(room_versions)})
        except FederationError as exc:
            raise refusal_error(exc) from None

    async def send_knock(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> Any:
        path = f"/_matrix/federation/v1/send_knock/{segment(room_id)}/{segment(event_id)}"
        try:
            return await self._http.put_json(destination, path, dict(event))
        except FederationError as exc:
            raise refusal_error(exc) from None
