"""Receipts and read markers: ``POST /rooms/{roomId}/receipt/{receiptType}/{eventId}``
and ``POST /rooms/{roomId}/read_markers``. See :mod:`ranvier.core.receipts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.receipts import Receipts
from ranvier.web import Request, Router

__all__ = ["add_receipt_routes"]


def add_receipt_routes(router: Router, *, auth: Auth, receipts: Receipts) -> None:
    """Serve the receipt and read marker endpoints."""

    async def post_receipt(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        # The body is required, but older clients send none for a plain receipt.
        body = {} if request.content is None else json_object(request)
        await receipts.post_receipt(
            requester.user_id, params["room_id"], params["receipt_type"], params["event_id"], body
        )
        return {}

    async def post_read_markers(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        await receipts.set_read_markers(
            requester.user_id, request.path_params["room_id"], json_object(request)
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add(
            "POST",
            f"{prefix}/rooms/{{room_id}}/receipt/{{receipt_type}}/{{event_id}}",
            post_receipt,
        )
        router.add("POST", f"{prefix}/rooms/{{room_id}}/read_markers", post_read_markers)
