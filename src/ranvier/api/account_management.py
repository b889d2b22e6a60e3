"""Changing the password (``/account/password``) and deactivating the
account (``/account/deactivate``).

Both ask the user to prove who they are again through user-interactive
authentication, as deleting a device does (:mod:`ranvier.core.uia`): a
request without ``auth`` is answered 401 with the flows and a session; a
wrong password 401 again, with ``M_FORBIDDEN``. A retry in a session whose
request succeeded gets the same answer, the change not made again; a
deactivation's retry too, though the deactivation logged out the token it
carries. Identity servers are not used here, so a deactivation unbinds
nothing from them and says so (``no-support``).

When the server sends mail, a user who forgot their password changes it
without an access token: the one stage is ``m.login.email.identity``,
whose ``threepid_creds`` name a session validated through
``/account/password/email/requestToken`` (:mod:`ranvier.core.threepids`).
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from ranvier.api.account import (
    EMAIL_IDENTITY,
    json_object,
    optional_bool,
    optional_str,
    threepid_creds,
)
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth, access_token_of
from ranvier.api.uia_answers import answer_after_uia
from ranvier.core.accounts import Requester, hash_access_token
from ranvier.core.uia import CHANGE_PASSWORD, DEACTIVATE, UserInteractiveAuth
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_account_management_routes"]


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
    uia: UserInteractiveAuth,
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

        async def perform() -> dict[str, Any]:
            await accounts.change_password(requester, new_password, logout_devices=logout_devices)
            return {}

        return await answer_after_uia(
            uia,
            requester,
            CHANGE_PASSWORD,
            body.get("auth"),
            # The new password is a secret: it is not kept to tell retries apart.
            request={"logout_devices": logout_devices},
            perform=perform,
        )

    async def deactivate(request: Request) -> JsonResponse:
        try:
            requester = await auth.get_user(request)
        except MatrixError as refused:
            answer = await _answer_of_retry(request, refused)
            if answer is None:
                raise
            return JsonResponse(answer)
        body = json_object(request)
        # No identity server is told; the field is still checked for its type.
        erase = optional_bool(body, "erase", default=False)
        optional_str(body, "id_server")

        # An application service's users have no password or other secret
        # interactive authentication could ask for: the service's own token
        # is the proof, as it is for deleting their devices.
        async def perform() -> dict[str, Any]:
            await deactivation.deactivate(requester.user_id, erase=erase)
            return {"id_server_unbind_result": "no-support"}

        if requester.app_service is not None:
            return JsonResponse(await perform())
        return await answer_after_uia(
            uia, requester, DEACTIVATE, body.get("auth"), request={"erase": erase}, perform=perform
        )

    async def _answer_of_retry(request: Request, refused: MatrixError) -> dict[str, Any] | None:
        """The first answer of a deactivation retried with the token it
        logged out, if this is one."""
        token = access_token_of(request)
        body = request.content
        if refused.errcode != "M_UNKNOWN_TOKEN" or token is None or not isinstance(body, dict):
            return None
        erase = body.get("erase", False)
        return await uia.answer_after_logout(
            hash_access_token(token),
            DEACTIVATE,
            body.get("auth"),
            {"erase": erase if isinstance(erase, bool) else False},
        )

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
