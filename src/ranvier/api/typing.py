"""``PUT /rooms/{roomId}/typing/{userId}``. See :mod:`ranvier.core.typing`;
a shadow-banned user's typing is checked, answered and dropped
(:mod:`ranvier.core.shadow_bans`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.shadow_bans import NO_DELAY, ShadowBans
from ranvier.core.typing import TypingNotices
from ranvier.errors import BadJsonError
from ranvier.web import Request, Router

__all__ = ["add_typing_routes"]


def add_typing_routes(
    router: Router,
    *,
    auth: Auth,
    typing: TypingNotices,
    shadow_bans: ShadowBans | None = None,
) -> None:
    """Serve ``PUT /rooms/{roomId}/typing/{userId}``; ``shadow_bans`` paces
    the answers faked for shadow-banned users (not at all without it)."""
    paced = shadow_bans or ShadowBans(delay_seconds=NO_DELAY)

    async def put_typing(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        is_typing = body.get("typing")
        if not isinstance(is_typing, bool):
            raise BadJsonError("'typing' is required, and must be true or false")
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)):
            raise BadJsonError("'timeout' must be an integer number of milliseconds")
        params = request.path_params
        if requester.shadow_banned:
            await typing.check_typing(
                requester.user_id, params["user_id"], params["room_id"], timeout_ms=timeout
            )
            await paced.pause()
            return {}
        await typing.set_typing(
            requester.user_id,
            params["user_id"],
            params["room_id"],
            typing=is_typing,
            timeout_ms=timeout,
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("PUT", f"{prefix}/rooms/{{room_id}}/typing/{{user_id}}", put_typing)
