"""Synapse's admin API for server notices: ``POST
/_synapse/admin/v1/send_server_notice`` and ``PUT
.../send_server_notice/{txnId}``, for server admins.

The body is ``{"user_id", "content"}``, with ``type`` (``m.room.message``
unless given) and ``state_key`` optional; the answer is ``{"event_id"}``.
A ``PUT`` repeated with the same transaction ID by the same device sends
once and answers with the first event, as a client's ``/send`` does. With
notices off, a request is answered 400 as Synapse answers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.admin_common import ADMIN_V1, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.core.client_txns import ClientTransactions, TxnOwner
from ranvier.core.server_notices import ServerNotices
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["SEND_SERVER_NOTICE_PATH", "add_admin_server_notice_routes"]

SEND_SERVER_NOTICE_PATH: Final = f"{ADMIN_V1}/send_server_notice"


def _missing(key: str) -> MatrixError:
    return MatrixError(f"Missing params: ['{key}']", errcode="M_MISSING_PARAM", http_status=400)


def _bad_json(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_JSON", http_status=400)


class _Notice:
    """A request's notice, checked whole before anything is sent."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        for key in ("user_id", "content"):
            if key not in body:
                raise _missing(key)
        user_id, content = body["user_id"], body["content"]
        if type(user_id) is not str:
            raise _bad_json("'user_id' must be a string")
        if not isinstance(content, dict):
            raise _bad_json("'content' must be a JSON object")
        event_type = body.get("type", "m.room.message")
        if type(event_type) is not str or not event_type:
            raise _bad_json("'type' must be a non-empty string")
        state_key = body.get("state_key")
        if state_key is not None and type(state_key) is not str:
            raise _bad_json("'state_key' must be a string")
        self.user_id: str = user_id
        self.content: dict[str, Any] = content
        self.event_type: str = event_type
        self.state_key: str | None = state_key

    async def send(self, notices: ServerNotices) -> str:
        return await notices.send(
            self.user_id, self.content, event_type=self.event_type, state_key=self.state_key
        )


def add_admin_server_notice_routes(
    router: Router,
    *,
    auth: Auth,
    notices: ServerNotices | None,
    transactions: ClientTransactions,
) -> None:
    """Serve sending notices; ``notices`` None when they are off."""

    def enabled() -> ServerNotices:
        if notices is None:
            raise MatrixError(
                "Server notices are not enabled on this server",
                errcode="M_UNKNOWN",
                http_status=400,
            )
        return notices

    async def post(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        notice = _Notice(body_object(request))
        return {"event_id": await notice.send(enabled())}

    async def put(request: Request) -> Mapping[str, Any]:
        requester = await require_admin(auth, request)
        notice = _Notice(body_object(request))
        sending = enabled()
        scope = f"{SEND_SERVER_NOTICE_PATH}/{request.path_params['txn_id']}"
        event_id = await transactions.run(
            TxnOwner.of(requester),
            scope,
            # The room is not known before the notice is sent: the
            # transaction is recorded once it is, in a write of its own.
            "",
            lambda: notice.send(sending),
        )
        return {"event_id": event_id}

    router.add("POST", SEND_SERVER_NOTICE_PATH, post)
    router.add("PUT", f"{SEND_SERVER_NOTICE_PATH}/{{txn_id}}", put)
