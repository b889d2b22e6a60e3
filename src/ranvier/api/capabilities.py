"""What a client asks at start-up about the server: ``/capabilities`` and
TURN servers (push rules: :mod:`ranvier.api.push_rules`; third-party
protocols: :mod:`ranvier.api.third_party`).

Each is answered for what this server does: password and profile
changes, e-mail addresses only when it sends mail
(:mod:`ranvier.api.threepids`), no TURN server; and the room versions it
supports, with the default it creates rooms in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS
from ranvier.web import Request, Router

__all__ = ["add_capability_routes"]


def _capabilities(*, login_token_enabled: bool, threepid_changes: bool) -> dict[str, Any]:
    return {
        "m.change_password": {"enabled": True},
        "m.room_versions": {
            "default": DEFAULT_ROOM_VERSION.identifier,
            "available": dict.fromkeys(SUPPORTED_ROOM_VERSIONS, "stable"),
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.3pid_changes": {"enabled": threepid_changes},
        "m.get_login_token": {"enabled": login_token_enabled},
        # Every field may be changed, displayname and avatar_url included.
        "m.profile_fields": {"enabled": True},
    }


def add_capability_routes(
    router: Router,
    *,
    auth: Auth,
    login_token_enabled: bool = False,
    threepid_changes: bool = False,
) -> None:
    """Serve ``/capabilities`` and ``/voip/turnServer``.

    ``login_token_enabled``: whether users may make login tokens
    (:mod:`ranvier.api.login_tokens`), which ``m.get_login_token`` reports;
    ``threepid_changes``: whether users may add and delete e-mail
    addresses, which ``m.3pid_changes`` reports.
    """

    async def capabilities(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        answer = _capabilities(
            login_token_enabled=login_token_enabled, threepid_changes=threepid_changes
        )
        if requester.is_admin:
            # Left out for everyone else, as the spec asks when both are false.
            answer["m.account_moderation"] = {"lock": True, "suspend": True}
        return {"capabilities": answer}

    async def turn_server(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/capabilities", capabilities)
        router.add("GET", f"{prefix}/voip/turnServer", turn_server)
