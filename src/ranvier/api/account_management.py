"""Changing the password (``/account/password``) and deactivating the
account (``/account/deactivate``).

Both ask for the password again through user-interactive authentication,
the same ``m.login.password`` stage as deleting a device
(:meth:`ranvier.core.devices.Devices.authenticate`): a request without
``auth`` is answered 401 with the flows and a session; a wrong password 401
again, with ``M_FORBIDDEN``. Identity servers are not used here, so a
deactivation unbinds nothing from them and says so (``no-support``).
"""

from __future__ import annotations

from typing import Protocol

from ranvier.api.account import json_object, optional_bool, optional_str
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.accounts import Requester
from ranvier.core.devices import AuthRequired
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_account_management_routes"]


class PasswordCheck(Protocol):
    """User-interactive authentication with the password
    (:class:`ranvier.core.devices.Devices`)."""

    async def authenticate(self, user_id: str, auth: object) -> None: ...


class PasswordChanger(Protocol):
    """:class:`ranvier.core.accounts.Accounts`."""

    async def change_password(
        self, requester: Requester, new_password: str, *, logout_devices: bool
    ) -> None: ...


class Deactivator(Protocol):
    """:class:`ranvier.core.deactivation.Deactivation`."""

    async def deactivate(self, user_id: str) -> None: ...


def add_account_management_routes(
    router: Router,
    *,
    auth: Auth,
    uia: PasswordCheck,
    accounts: PasswordChanger,
    deactivation: Deactivator,
) -> None:
    """Serve ``/account/password`` and ``/account/deactivate``."""

    async def change_password(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request)
        new_password = body.get("new_password")
        if new_password is None:
            raise MatrixError(
                "'new_password' is required", errcode="M_MISSING_PARAM", http_status=400
            )
        if not isinstance(new_password, str):
            raise BadJsonError("'new_password' must be a string")
        logout_devices = optional_bool(body, "logout_devices", default=True)
        try:
            await uia.authenticate(requester.user_id, body.get("auth"))
        except AuthRequired as required:
            return JsonResponse(required.body, status=401)
        await accounts.change_password(requester, new_password, logout_devices=logout_devices)
        return JsonResponse({})

    async def deactivate(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request)
        # Nothing is erased beyond what deactivation clears, and no identity
        # server is told; both are still checked for their types.
        optional_bool(body, "erase")
        optional_str(body, "id_server")
        try:
            await uia.authenticate(requester.user_id, body.get("auth"))
        except AuthRequired as required:
            return JsonResponse(required.body, status=401)
        await deactivation.deactivate(requester.user_id)
        return JsonResponse({"id_server_unbind_result": "no-support"})

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/account/password", change_password)
        router.add("POST", f"{prefix}/account/deactivate", deactivate)
