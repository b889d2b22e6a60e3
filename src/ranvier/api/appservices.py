"""``POST /_matrix/client/v1/appservice/{appserviceId}/ping``: an application
service has the server call its ``/_matrix/app/v1/ping``, to learn whether
the server reaches it (:class:`ranvier.core.appservices.AppServiceQueries`).

Only the service itself may ask: the request must carry that service's
``as_token`` (403 ``M_FORBIDDEN`` for any other token, a user's or another
service's). The answer is how long the call took, or the spec's errors:
``M_URL_NOT_SET`` (400), ``M_CONNECTION_FAILED`` and ``M_BAD_STATUS`` (502,
the latter with the service's ``status`` and ``body``),
``M_CONNECTION_TIMEOUT`` (504).

It also reads the ``ts`` query parameter of timestamp massaging (spec
v1.3), which the rooms routes take on ``PUT .../send`` and ``PUT
.../state``: :func:`massaged_timestamp`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.protocol.numbers import is_decimal_number
from ranvier.web import Request, Router, invalid_param

__all__ = ["add_appservice_routes", "massaged_timestamp"]

_V1: Final = "/_matrix/client/v1"


class _Auth(Protocol):
    async def get_user(self, request: Request) -> Requester: ...


def massaged_timestamp(request: Request, requester: Requester) -> int | None:
    """The ``origin_server_ts`` an application service chose for the event
    of ``request`` with ``?ts=``, or None.

    The spec gives the parameter to requests authenticated as a service
    only; for anyone else it is no parameter of the endpoint and is
    ignored, valid or not, as an unknown query parameter is: a user cannot
    date their own messages. A service's value must be one
    ``origin_server_ts`` may hold, an integer from 0 to canonical JSON's
    largest (400 ``M_INVALID_PARAM`` otherwise), in plain ASCII digits, as
    the number appears in the event. No later bound is set, as the spec
    sets none; other servers check an event's signature with keys valid at
    its ``origin_server_ts``, though, so they may refuse one dated past this
    server's key's validity.
    """
    if requester.app_service is None:
        return None
    value = request.query_value("ts")
    if value is None:
        return None
    digits = len(str(CANONICAL_INT_MAX))
    if not is_decimal_number(value) or len(value) > digits or int(value) > CANONICAL_INT_MAX:
        raise invalid_param(
            f"ts must be a timestamp in milliseconds from 0 to {CANONICAL_INT_MAX},"
            f" not {value[:40]!r}"
        )
    return int(value)


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
