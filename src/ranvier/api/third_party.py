"""Third-party lookups, ``/thirdparty/*``: the protocols the application
services bridge, and the portal rooms and users they map to
(:class:`ranvier.core.third_party.ThirdPartyLookups`).

Any user may ask. A forward lookup's query parameters are the protocol's
fields and are passed on to the services as they came, but for the
access token, which is this server's business alone. A protocol no
service declares is 404 ``M_NOT_FOUND``, and so is a forward lookup that
finds nothing, as the spec has it; a reverse lookup that finds nothing is
an empty list. A reverse lookup's parameter must be a room alias or a
user ID (400 ``M_INVALID_PARAM``): there is nothing to ask about another
string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.third_party import Kind
from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.web import Handler, Request, Router, invalid_param

__all__ = ["add_third_party_routes"]


class Lookups(Protocol):
    """:class:`ranvier.core.third_party.ThirdPartyLookups`."""

    async def protocols(self) -> dict[str, dict[str, Any]]: ...

    async def protocol(self, protocol: str) -> dict[str, Any]: ...

    async def lookup(
        self, kind: Kind, protocol: str, fields: list[tuple[str, str]]
    ) -> list[dict[str, Any]]: ...

    async def reverse_lookup(self, kind: Kind, matrix_id: str) -> list[dict[str, Any]]: ...


def _is_matrix_id(kind: Kind, value: str) -> bool:
    if kind == "user":
        return is_valid_user_id(value)
    return value.startswith("#") and is_valid_user_id("@" + value[1:])


def add_third_party_routes(router: Router, *, auth: Auth, lookups: Lookups) -> None:
    """Serve ``/thirdparty/protocols``, ``/protocol``, ``/location`` and ``/user``."""

    async def protocols(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return await lookups.protocols()

    async def protocol(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return await lookups.protocol(request.path_params["protocol"])

    def lookup(kind: Kind) -> Handler:
        async def handler(request: Request) -> list[dict[str, Any]]:
            await auth.get_user(request)
            fields = [
                (name, value)
                for name, values in request.query.items()
                if name != "access_token"
                for value in values
            ]
            return await lookups.lookup(kind, request.path_params["protocol"], fields)

        return handler

    def reverse_lookup(kind: Kind, param: str) -> Handler:
        async def handler(request: Request) -> list[dict[str, Any]]:
            await auth.get_user(request)
            value = request.query_value(param)
            if not value:
                raise MatrixError(
                    f"the query parameter {param!r} is required",
                    errcode="M_MISSING_PARAM",
                    http_status=400,
                )
            if not _is_matrix_id(kind, value):
                what = "a user ID" if kind == "user" else "a room alias"
                raise invalid_param(f"{param} must be {what}, not {value[:100]!r}")
            return await lookups.reverse_lookup(kind, value)

        return handler

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/thirdparty/protocols", protocols)
        router.add("GET", f"{prefix}/thirdparty/protocol/{{protocol}}", protocol)
        router.add("GET", f"{prefix}/thirdparty/location/{{protocol}}", lookup("location"))
        router.add("GET", f"{prefix}/thirdparty/user/{{protocol}}", lookup("user"))
        router.add("GET", f"{prefix}/thirdparty/location", reverse_lookup("location", "alias"))
        router.add("GET", f"{prefix}/thirdparty/user", reverse_lookup("user", "userid"))
