"""End-to-end encryption keys: ``/keys/upload``, ``/keys/query``,
``/keys/claim``, ``/keys/changes``, ``/keys/device_signing/upload`` and
``/keys/signatures/upload``. See :mod:`ranvier.core.e2e_keys`.

Cross-signing uploads that replace keys take user-interactive
authentication (:mod:`ranvier.core.uia`): the 401 answers carry the flows
and the session to send back, as deleting a device does, and a retry of an
upload done answers as the first did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.e2e_keys import E2eKeys
from ranvier.core.pagination import parse_sync_token
from ranvier.core.uia import CROSS_SIGNING, AuthRequired, Ticket, UserInteractiveAuth
from ranvier.errors import MatrixError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_key_routes"]

#: The fields of a cross-signing upload that tell one upload from another.
_KEY_FIELDS: Final = ("master_key", "self_signing_key", "user_signing_key")


class _Answered(Exception):
    """A finished session's upload retried: ``answer`` is its first answer."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__("answered already")
        self.answer = answer


def add_key_routes(router: Router, *, auth: Auth, keys: E2eKeys, uia: UserInteractiveAuth) -> None:
    """Serve the keys endpoints of the client-server API."""

    async def upload(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        if not requester.device_id:
            # An application service acting with no device, or an admin's
            # puppet token: keys kept for no device would be no one's.
            raise MatrixError(
                "keys are uploaded for a device, and this access token acts with none",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        return await keys.upload(requester.user_id, requester.device_id, json_object(request))

    async def query(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await keys.query(requester.user_id, json_object(request))

    async def claim(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return await keys.claim(json_object(request))

    async def changes(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        since, upto = request.query_value("from"), request.query_value("to")
        if since is None or upto is None:
            raise MatrixError(
                "from and to are required", errcode="M_MISSING_PARAM", http_status=400
            )
        return await keys.changes(
            requester.user_id, parse_sync_token(since), parse_sync_token(upto)
        )

    async def upload_cross_signing(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request)
        passed: list[Ticket] = []

        async def reauthenticate(user_id: str, auth_dict: object) -> None:
            ticket = await uia.check(
                user_id,
                requester.token_hash,
                CROSS_SIGNING,
                auth_dict,
                request={field: body[field] for field in _KEY_FIELDS if field in body},
            )
            if ticket.answer is not None:
                raise _Answered(ticket.answer)
            passed.append(ticket)

        try:
            answer = await keys.upload_cross_signing(
                requester.user_id,
                body,
                by_app_service=requester.app_service is not None,
                reauthenticate=reauthenticate,
            )
        except AuthRequired as required:
            return JsonResponse(required.body, status=401)
        except _Answered as answered:
            return JsonResponse(answered.answer)
        for ticket in passed:
            await ticket.done(answer)
        return JsonResponse(answer)

    async def upload_signatures(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await keys.upload_signatures(requester.user_id, json_object(request))

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/keys/upload", upload)
        router.add("POST", f"{prefix}/keys/query", query)
        router.add("POST", f"{prefix}/keys/claim", claim)
        router.add("GET", f"{prefix}/keys/changes", changes)
        router.add("POST", f"{prefix}/keys/device_signing/upload", upload_cross_signing)
        router.add("POST", f"{prefix}/keys/signatures/upload", upload_signatures)
