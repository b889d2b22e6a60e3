"""Changing the password (``/account/password``) and deactivating the
account (``/account/deactivate``).

Both ask for the password again through user-interactive authentication,
the same ``m.login.password`` stage as deleting a device
(:meth:`ranvier.core.devices.Devices.authenticate`): a request without
``auth`` is answered 401 with the flows and a session; a wrong password 401
again, with ``M_FORBIDDEN``. Identity servers are not used here, so a
deactivation unbinds nothing from them and says so (``no-support``).

When the server sends mail, a user who forgot their password changes it
without an access token: the one stage is ``m.login.email.identity``,
whose ``threepid_creds`` name a session validated through
``/account/password/email/requestToken`` (:mod:`ranvier.core.threepids`).
"""

from __future__ import annotations

import secrets
from typing import Protocol

from ranvier.api.account import (
    EMAIL_IDENTITY,
    json_object,
    optional_bool,
    optional_str,
    threepid_creds,
)
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth, access_token_of
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


class PasswordReset(Protocol):
    """:class:`ranvier.core.threepids.Threepids`."""

    async def reset_password(
        self, sid: str, client_secret: str, new_password: str, *, logout_devices: bool
    ) -> str: ...


class Deactivator(Protocol):
    """:class:`ranvier.core.deactivation.Deactivation`."""

    async def deactivate(self, user_id: str, *, erase: bool = False) -> None: ...


def add_account_management_routes(
    router: Router,
    *,
    auth: Auth,
    uia: PasswordCheck,
    accounts: PasswordChanger,
    deactivation: Deactivator,
    reset: PasswordReset | None = None,
) -> None:
    """Serve ``/account/password`` and ``/account/deactivate``; with
    ``reset``, ``/account/password`` without an access token too."""

    async def change_password(request: Request) -> JsonResponse:
        if reset is not None and access_token_of(request) is None:
            return await reset_password(reset, request)
        requester = await auth.get_user(request)
        body = json_object(request)
        new_password = _new_password(body)
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
        # No identity server is told; the field is still checked for its type.
        erase = optional_bool(body, "erase", default=False)
        optional_str(body, "id_server")
        # An application service's users have no password or other secret
        # interactive authentication could ask for: the service's own token
        # is the proof, as it is for deleting their devices.
        if requester.app_service is None:
            try:
                await uia.authenticate(requester.user_id, body.get("auth"))
            except AuthRequired as required:
                return JsonResponse(required.body, status=401)
        await deactivation.deactivate(requester.user_id, erase=erase)
        return JsonResponse({"id_server_unbind_result": "no-support"})

    async def reset_password(reset: PasswordReset, request: Request) -> JsonResponse:
        body = json_object(request)
        new_password = _new_password(body)
        logout_devices = optional_bool(body, "logout_devices", default=True)
        auth_dict = body.get("auth")
        if auth_dict is None:
            flows = {"flows": [{"stages": [EMAIL_IDENTITY]}], "params": {}}
            return JsonResponse({**flows, "session": secrets.token_urlsafe(16)}, status=401)
        if not isinstance(auth_dict, dict):
            raise BadJsonError("'auth' must be an object")
        stage = optional_str(auth_dict, "type")
        if stage != EMAIL_IDENTITY:
            raise MatrixError(
                f"unknown authentication type {stage!r} (without an access token this"
                f" server offers {EMAIL_IDENTITY})",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        sid, client_secret = threepid_creds(auth_dict)
        await reset.reset_password(sid, client_secret, new_password, logout_devices=logout_devices)
        return JsonResponse({})

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/account/password", change_password)
        router.add("POST", f"{prefix}/account/deactivate", deactivate)


def _new_password(body: dict[str, object]) -> str:
    new_password = body.get("new_password")
    if new_password is None:
        raise MatrixError("'new_password' is required", errcode="M_MISSING_PARAM", http_status=400)
    if not isinstance(new_password, str):
        raise BadJsonError("'new_password' must be a string")
    return new_password
