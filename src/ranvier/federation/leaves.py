"""The leaving server's side of ``make_leave`` and ``send_leave`` (v2), for
:class:`~ranvier.core.room_leaves.RoomLeaves`: how a user of ours declines
an invite to a room no user of ours is in.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from ranvier.errors import MatrixError
from ranvier.federation.transport.client import (
    FederationError,
    FederationHttpClient,
    FederationRequestError,
)

__all__ = ["FederationLeaveClient"]


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _as_matrix_error(exc: FederationError) -> MatrixError:
    if isinstance(exc, FederationRequestError):
        return MatrixError(
            f"{exc.destination} refused: {exc.error or exc}",
            errcode=exc.errcode or "M_UNKNOWN",
            http_status=exc.status,
        )
    return MatrixError(str(exc), errcode="M_UNKNOWN", http_status=502)


class FederationLeaveClient:
    """``GET /v1/make_leave`` and ``PUT /v2/send_leave`` over ``http``."""

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def make_leave(self, destination: str, room_id: str, user_id: str) -> Any:
        path = f"/_matrix/federation/v1/make_leave/{_segment(room_id)}/{_segment(user_id)}"
        try:
            return await self._http.get_json(destination, path)
        except FederationError as exc:
            raise _as_matrix_error(exc) from None

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> None:
        path = f"/_matrix/federation/v2/send_leave/{_segment(room_id)}/{_segment(event_id)}"
        try:
            await self._http.request("PUT", destination, path, content=dict(event))
        except FederationError as exc:
            raise _as_matrix_error(exc) from None
