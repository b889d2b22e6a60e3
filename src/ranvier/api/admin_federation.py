"""The federation destinations admin API at Synapse's paths
(``/_synapse/admin/v1/federation/destinations``): the list, one
destination, its rooms, and ``reset_connection``
(:class:`ranvier.core.admin_federation.AdminFederation`). Admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.admin_common import ADMIN_V1, body_object, page_params, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_federation import AdminFederation, DestinationListRequest
from ranvier.web import Request, Router

__all__ = ["DESTINATIONS_PATH", "add_admin_federation_routes"]

DESTINATIONS_PATH: Final = f"{ADMIN_V1}/federation/destinations"


def add_admin_federation_routes(router: Router, *, auth: Auth, federation: AdminFederation) -> None:
    """Serve the federation destinations admin endpoints."""

    async def list_destinations(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        offset, limit, backwards = page_params(request)
        return await federation.list_destinations(
            DestinationListRequest(
                offset=offset,
                limit=limit,
                backwards=backwards,
                order_by=request.query_value("order_by") or "destination",
                name_contains=request.query_value("destination") or None,
            )
        )

    async def get_destination(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await federation.destination(request.path_params["destination"])

    async def destination_rooms(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        offset, limit, backwards = page_params(request)
        return await federation.destination_rooms(
            request.path_params["destination"], offset=offset, limit=limit, backwards=backwards
        )

    async def reset_connection(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        body_object(request)
        return await federation.reset_connection(request.path_params["destination"])

    router.add("GET", DESTINATIONS_PATH, list_destinations)
    router.add("GET", f"{DESTINATIONS_PATH}/{{destination}}", get_destination)
    router.add("GET", f"{DESTINATIONS_PATH}/{{destination}}/rooms", destination_rooms)
    router.add("POST", f"{DESTINATIONS_PATH}/{{destination}}/reset_connection", reset_connection)
