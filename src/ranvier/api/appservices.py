"""``POST /_matrix/client/v1/appservice/{appserviceId}/ping``: an application
service has the server call its ``/_matrix/app/v1/ping``, to learn whether
the server reaches it (:class:`ranvier.core.appservices.AppServiceQueries`).

Only the service itself may ask: the request must carry that service's
``as_token`` (403 ``M_FORBIDDEN`` for any other token, a user's or another
service's). The answer is how long the call took, or the spec's errors:
``M_URL_NOT_SET`` (400), ``M_CONNECTION_FAILED`` and ``M_BAD_STATUS`` (502,
the latter with the service's ``status`` and ``body``),
``M_CONNECTION_TIMEOUT`` (504).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import Request, Router

__all__ = ["add_appservice_routes"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


class Pinger(Protocol):
    """:class:`ranvier.core.appservices.AppServiceQueries`."""

    async def ping(self, service_id: str, transaction_id: str | None) -> int: ...


def add_appservice_routes(router: Router, *, auth: _Auth, pinger: Pinger) -> None:
    """Serve the ping."""

    async def ping(request: Request) -> Mapping[str, Any]:
        service_id = request.path_params["appservice_id"]
        requester = await auth.get_user(request)
        if requester.app_service != service_id:
            raise MatrixError(
                f"only application service {service_id}'s as_token may ping it",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        body = request.content
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadJsonError("the request body must be a JSON object")
        transaction_id = body.get("transaction_id")
        if transaction_id is not None and not isinstance(transaction_id, str):
            raise BadJsonError("'transaction_id' must be a string")
        return {"duration_ms": await pinger.ping(service_id, transaction_id)}

    router.add("POST", f"{_V1}/appservice/{{appservice_id}}/ping", ping)
