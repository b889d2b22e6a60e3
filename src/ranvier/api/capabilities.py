"""What a client asks at start-up about the server: ``/capabilities``, push
rules, TURN servers and third-party protocols.

Each is answered for what this server does: no password change, no
third-party identifiers, no TURN server, no bridges; profile changes are
allowed, and the room versions are those it supports, with the default it
creates rooms in. Push rules are the spec's predefined set; changing them
is refused with 400 ``M_UNRECOGNIZED`` (rules of a user's own are not kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.push_rules import default_push_rules
from ranvier.errors import MatrixError
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS
from ranvier.web import Request, Router

__all__ = ["add_capability_routes"]

_KINDS: Final = ("override", "content", "room", "sender", "underride")


def _capabilities() -> dict[str, Any]:
    return {
        "m.change_password": {"enabled": False},
        "m.room_versions": {
            "default": DEFAULT_ROOM_VERSION.identifier,
            "available": dict.fromkeys(SUPPORTED_ROOM_VERSIONS, "stable"),
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.3pid_changes": {"enabled": False},
        "m.get_login_token": {"enabled": False},
    }


def _unknown_rule(what: str) -> MatrixError:
    return MatrixError(f"no push rule {what}", errcode="M_NOT_FOUND", http_status=404)


def add_capability_routes(router: Router, *, auth: Auth) -> None:
    """Serve ``/capabilities``, ``/pushrules``, ``/voip/turnServer`` and
    ``/thirdparty/protocols``.
    """

    async def capabilities(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {"capabilities": _capabilities()}

    async def push_rules(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return {"global": default_push_rules(requester.user_id)}

    async def push_rules_scope(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        scope = request.path_params["scope"]
        if scope != "global":
            raise _unknown_rule(f"scope {scope!r}")
        return default_push_rules(requester.user_id)

    async def push_rule(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        rules = default_push_rules(requester.user_id)
        if params["scope"] != "global" or params["kind"] not in _KINDS:
            raise _unknown_rule(f"{params['scope']}/{params['kind']}")
        for rule in rules[params["kind"]]:
            if rule["rule_id"] == params["rule_id"]:
                attribute = params.get("attribute")
                if attribute is None:
                    return dict(rule)
                if attribute == "enabled":
                    return {"enabled": rule["enabled"]}
                if attribute == "actions":
                    return {"actions": rule["actions"]}
                raise _unknown_rule(f"attribute {attribute!r}")
        raise _unknown_rule(params["rule_id"])

    async def change_push_rule(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        raise MatrixError(
            "push rules cannot be changed on this server; the predefined rules apply",
            errcode="M_UNRECOGNIZED",
            http_status=400,
        )

    async def turn_server(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {}

    async def protocols(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/capabilities", capabilities)
        router.add("GET", f"{prefix}/pushrules", push_rules)
        router.add("GET", f"{prefix}/pushrules/{{scope}}", push_rules_scope)
        rule = f"{prefix}/pushrules/{{scope}}/{{kind}}/{{rule_id}}"
        router.add("GET", rule, push_rule)
        router.add("GET", f"{rule}/{{attribute}}", push_rule)
        router.add("PUT", rule, change_push_rule)
        router.add("DELETE", rule, change_push_rule)
        router.add("PUT", f"{rule}/{{attribute}}", change_push_rule)
        router.add("GET", f"{prefix}/voip/turnServer", turn_server)
        router.add("GET", f"{prefix}/thirdparty/protocols", protocols)
