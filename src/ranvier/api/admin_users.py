"""The user admin API at Synapse's paths: accounts listed, shown, created
or changed, deactivated, given a new password, made admins or not, logged
in as, and their devices and rooms (:class:`ranvier.core.admin_users.AdminUsers`),
accounts shadow-banned (:mod:`ranvier.core.shadow_bans`), and accounts
locked and suspended (:mod:`ranvier.api.account_moderation`).
Admins only (:func:`ranvier.api.admin_common.require_admin`), but for the
client-server API's own ``/admin/whois/{userId}``, which a user may also ask
about themselves (the spec leaves it to the server whom to answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import check_username_available
from ranvier.api.account_moderation import add_account_moderation_routes
from ranvier.api.admin_common import ADMIN_V1, ADMIN_V2, body_object, page_params, require_admin
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.api.query_params import flag_param
from ranvier.core.accounts import Accounts
from ranvier.core.admin_users import AdminUsers, UserListRequest
from ranvier.core.appservices import AppServices
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_admin_user_routes", "add_username_available_route"]


def add_admin_user_routes(router: Router, *, auth: Auth, users: AdminUsers) -> None:
    """Serve the user admin endpoints."""

    async def list_users(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        offset, limit, backwards = page_params(request)
        guests = flag_param(request, "guests")
        return await users.list_users(
            UserListRequest(
                offset=offset,
                limit=limit,
                order_by=request.query_value("order_by") or "name",
                backwards=backwards,
                name=request.query_value("name") or None,
                user_id=request.query_value("user_id") or None,
                deactivated=flag_param(request, "deactivated") is True,
                guests=guests is not False,
                admins=flag_param(request, "admins"),
                locked=flag_param(request, "locked") is True,
            )
        )

    def _user_id(request: Request) -> str:
        user_id = request.path_params["user_id"]
        users.check_local(user_id)
        return user_id

    async def get_user(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await users.get_user(_user_id(request))

    async def put_user(request: Request) -> Mapping[str, Any] | JsonResponse:
        admin = await require_admin(auth, request)
        created, answer = await users.put_user(
            admin.user_id, _user_id(request), body_object(request)
        )
        return JsonResponse(answer, status=201) if created else answer

    async def deactivate(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await users.deactivate(_user_id(request), body_object(request))

    async def reset_password(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        await users.reset_password(_user_id(request), body_object(request))
        return {}

    async def login_as(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        token = await users.login_as(admin.user_id, _user_id(request), body_object(request))
        return {"access_token": token}

    async def get_admin(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return {"admin": await users.is_admin(_user_id(request))}

    async def put_admin(request: Request) -> Mapping[str, Any]:
        requester = await require_admin(auth, request)
        user_id = _user_id(request)
        admin = body_object(request).get("admin")
        if not isinstance(admin, bool):
            raise BadJsonError("'admin' must be true or false")
        await users.set_admin(requester.user_id, user_id, admin)
        return {}

    async def whois(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await users.whois(_user_id(request))

    async def joined_rooms(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await users.joined_rooms(_user_id(request))

    async def shadow_ban(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        await users.set_shadow_banned(request.path_params["user_id"], True)
        return {}

    async def lift_shadow_ban(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        await users.set_shadow_banned(request.path_params["user_id"], False)
        return {}

    async def client_whois(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        if not requester.is_admin and requester.user_id != request.path_params["user_id"]:
            raise MatrixError(
                "only server admins may look up another user",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        return _without_unknowns(await users.whois(_user_id(request)))

    router.add("GET", f"{ADMIN_V2}/users", list_users)
    router.add("GET", f"{ADMIN_V2}/users/{{user_id}}", get_user)
    router.add("PUT", f"{ADMIN_V2}/users/{{user_id}}", put_user)
    router.add("POST", f"{ADMIN_V1}/deactivate/{{user_id}}", deactivate)
    router.add("POST", f"{ADMIN_V1}/reset_password/{{user_id}}", reset_password)
    router.add("POST", f"{ADMIN_V1}/users/{{user_id}}/login", login_as)
    router.add("GET", f"{ADMIN_V1}/users/{{user_id}}/admin", get_admin)
    router.add("PUT", f"{ADMIN_V1}/users/{{user_id}}/admin", put_admin)
    router.add("GET", f"{ADMIN_V1}/whois/{{user_id}}", whois)
    router.add("GET", f"{ADMIN_V1}/users/{{user_id}}/joined_rooms", joined_rooms)
    router.add("POST", f"{ADMIN_V1}/users/{{user_id}}/shadow_ban", shadow_ban)
    router.add("DELETE", f"{ADMIN_V1}/users/{{user_id}}/shadow_ban", lift_shadow_ban)
    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/admin/whois/{{user_id}}", client_whois)
    add_account_moderation_routes(router, auth=auth, users=users)


def add_username_available_route(
    router: Router, *, auth: Auth, accounts: Accounts, app_services: AppServices
) -> None:
    """Serve ``GET /_synapse/admin/v1/username_available``: the client
    API's ``/register/available``, open to admins whether registration is
    or not."""

    async def username_available(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        await check_username_available(accounts, app_services, request)
        return {"available": True}

    router.add("GET", f"{ADMIN_V1}/username_available", username_available)


def _without_unknowns(whois: Mapping[str, Any]) -> dict[str, Any]:
    """``whois`` with the connections' unrecorded values left out: the
    spec types them as strings and integers, never null."""
    return {
        "user_id": whois["user_id"],
        "devices": {
            device_id: {
                "sessions": [
                    {
                        "connections": [
                            {key: value for key, value in connection.items() if value is not None}
                            for connection in session["connections"]
                        ]
                    }
                    for session in device["sessions"]
                ]
            }
            for device_id, device in whois["devices"].items()
        },
    }
