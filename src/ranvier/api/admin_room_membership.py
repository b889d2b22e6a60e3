"""``POST /_synapse/admin/v1/join/{roomIdOrAlias}`` and
``POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin`` at
Synapse's paths (:class:`ranvier.core.admin_room_membership.AdminRoomMembership`).
Admins only. The join takes ``server_name`` query parameters, servers to
join another server's room through, as the client API's join does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_room_membership import AdminRoomMembership
from ranvier.web import Request, Router

__all__ = ["add_admin_room_membership_routes"]


def add_admin_room_membership_routes(
    router: Router, *, auth: Auth, membership: AdminRoomMembership
) -> None:
    """Serve the admin join and make-room-admin endpoints."""

    async def join(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await membership.join(
            admin.user_id,
            request.path_params["room_id_or_alias"],
            body_object(request),
            servers=request.query.get("server_name", ()),
        )

    async def make_room_admin(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await membership.make_room_admin(
            admin.user_id, request.path_params["room_id_or_alias"], body_object(request)
        )

    router.add("POST", f"{ADMIN_V1}/join/{{room_id_or_alias}}", join)
    router.add("POST", f"{ADMIN_V1}/rooms/{{room_id_or_alias}}/make_room_admin", make_room_admin)
