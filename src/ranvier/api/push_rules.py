"""Push rules: ``/pushrules/`` and ``/pushrules/global/{kind}/{ruleId}``
with its ``enabled`` and ``actions``; see :mod:`ranvier.core.push_rules`.

``global`` is the only scope the spec has, so it is part of the paths: any
other scope is an endpoint this server does not have (404
``M_UNRECOGNIZED``), as is an attribute other than ``enabled`` and
``actions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.push_rules import PushRules
from ranvier.web import Request, Router

__all__ = ["add_push_rule_routes"]


def add_push_rule_routes(router: Router, *, auth: Auth, push_rules: PushRules) -> None:
    """Serve reading and changing a user's push rules."""

    async def all_rules(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return {"global": await push_rules.rule_set(requester.user_id)}

    async def global_rules(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await push_rules.rule_set(requester.user_id)

    async def get_rule(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        return await push_rules.rule(requester.user_id, params["kind"], params["rule_id"])

    async def get_enabled(request: Request) -> Mapping[str, Any]:
        rule = await get_rule(request)
        return {"enabled": rule["enabled"]}

    async def get_actions(request: Request) -> Mapping[str, Any]:
        rule = await get_rule(request)
        return {"actions": rule["actions"]}

    async def put_rule(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await push_rules.put_rule(
            requester.user_id,
            params["kind"],
            params["rule_id"],
            json_object(request),
            before=request.query_value("before"),
            after=request.query_value("after"),
        )
        return {}

    async def delete_rule(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await push_rules.delete_rule(requester.user_id, params["kind"], params["rule_id"])
        return {}

    async def put_enabled(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await push_rules.set_enabled(
            requester.user_id, params["kind"], params["rule_id"], json_object(request)
        )
        return {}

    async def put_actions(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        params = request.path_params
        await push_rules.set_actions(
            requester.user_id, params["kind"], params["rule_id"], json_object(request)
        )
        return {}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/pushrules", all_rules)
        router.add("GET", f"{prefix}/pushrules/global", global_rules)
        rule = f"{prefix}/pushrules/global/{{kind}}/{{rule_id}}"
        router.add("GET", rule, get_rule)
        router.add("PUT", rule, put_rule)
        router.add("DELETE", rule, delete_rule)
        router.add("GET", f"{rule}/enabled", get_enabled)
        router.add("PUT", f"{rule}/enabled", put_enabled)
        router.add("GET", f"{rule}/actions", get_actions)
        router.add("PUT", f"{rule}/actions", put_actions)
