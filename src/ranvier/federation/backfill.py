"""``GET /_matrix/federation/v1/backfill/{roomId}``, asked of another server:
the events before some we hold, for :class:`ranvier.core.backfill.Backfiller`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import msgspec

from ranvier.errors import MatrixError
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.protocol.untrusted_json import decode_untrusted_json

__all__ = ["FederationBackfillClient"]


class _Transaction(msgspec.Struct):
    pdus: list[msgspec.Raw]


class FederationBackfillClient:
    """Asks other servers for a room's history over ``http``.

    Events are handed on as the bytes the remote sent, for ingestion to
    check. A failed request, or an answer without a ``pdus`` list, raises
    :class:`~ranvier.errors.MatrixError` (502, the remote's fault).
    """

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def backfill(
        self, destination: str, room_id: str, event_ids: Sequence[str], limit: int
    ) -> list[bytes]:
        path = f"/_matrix/federation/v1/backfill/{urllib.parse.quote(room_id, safe='')}"
        query = {"v": list(event_ids), "limit": str(limit)}
        try:
            response = await self._http.request("GET", destination, path, query=query)
        except FederationError as exc:
            raise MatrixError(str(exc), errcode="M_UNKNOWN", http_status=502) from exc
        try:
            # Events stay msgspec.Raw, each checked as it is parsed.
            answer = decode_untrusted_json(response.body, type=_Transaction, check_nesting=False)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MatrixError(
                f"{destination} answered GET {path} with no usable transaction: {exc}",
                errcode="M_UNKNOWN",
                http_status=502,
            ) from None
        return [bytes(event) for event in answer.pdus]
