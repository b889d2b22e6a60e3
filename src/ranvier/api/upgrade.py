"""``POST /rooms/{roomId}/upgrade``: a room replaced by a new one of another
room version (:mod:`ranvier.core.upgrade` decides who may, and does it).

The body is ``{"new_version": ..., "additional_creators": [...]?}``; a body
of another shape is 400 ``M_BAD_JSON``, and the answer is
``{"replacement_room": new_room_id}``. A shadow-banned user's upgrade is
checked and answered, and nothing is made (:mod:`ranvier.core.shadow_bans`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.shadow_bans import NO_DELAY, ShadowBans
from ranvier.core.suspension import refuse_if_suspended
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["add_upgrade_routes"]


class RoomUpgrades(Protocol):
    """:class:`ranvier.core.upgrade.RoomUpgrader`."""

    async def upgrade(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        *,
        additional_creators: Sequence[str] | None = None,
    ) -> str: ...

    async def rehearse(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        *,
        additional_creators: Sequence[str] | None = None,
    ) -> str: ...


def _bad_json(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_JSON", http_status=400)


def add_upgrade_routes(
    router: Router,
    *,
    auth: Auth,
    upgrades: RoomUpgrades,
    shadow_bans: ShadowBans | None = None,
) -> None:
    """Serve ``POST /rooms/{roomId}/upgrade``; ``shadow_bans`` paces the
    answers faked for shadow-banned users (not at all without it)."""
    paced = shadow_bans or ShadowBans(delay_seconds=NO_DELAY)

    async def upgrade(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        refuse_if_suspended(requester, "create_room")
        body = json_object(request)
        new_version = body.get("new_version")
        if type(new_version) is not str:
            raise _bad_json("new_version must be given, as a string")
        additional = body.get("additional_creators")
        if additional is not None and not isinstance(additional, list):
            raise _bad_json("additional_creators must be an array of user IDs")
        if requester.shadow_banned:
            replacement = await upgrades.rehearse(
                requester.user_id,
                request.path_params["room_id"],
                new_version,
                additional_creators=additional,
            )
            await paced.pause()
            return {"replacement_room": replacement}
        replacement = await upgrades.upgrade(
            requester.user_id,
            request.path_params["room_id"],
            new_version,
            additional_creators=additional,
        )
        return {"replacement_room": replacement}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/rooms/{{room_id}}/upgrade", upgrade)
