"""Access tokens on client requests: who is asking.

A handler that acts for a user starts with ``requester = await
auth.get_user(request)``; a request without a valid token never gets past
that line. The token comes from ``Authorization: Bearer <token>``, or from
the ``access_token`` query parameter, which the spec deprecates but still
allows.

An application service's ``as_token`` acts as the service's sender, or as
the user its ``user_id`` query parameter names: one of the service's
namespace that is registered here (403 ``M_FORBIDDEN`` otherwise, as the
spec's identity assertion has it, and 403 ``M_USER_DEACTIVATED`` once
deactivated), and with the device its ``device_id`` query parameter names
(spec v1.17): one of that user's, 400 ``M_UNKNOWN_DEVICE`` otherwise.
Without it the service acts with no device.

A locked account (client-server API, "Account locking") is refused with 401
``M_USER_LOCKED`` and ``soft_logout`` on every request but logging out,
which asks :meth:`Auth.get_user` with ``allow_locked``. Its tokens stay:
unlocking brings the same sessions back. The flag comes with the token's
lookup, cached with it; an admin's lock or unlock drops the user's cached
tokens in this process and, through replication, in the others
(:meth:`ranvier.core.accounts.Accounts.forget_tokens_of`).

A guest account's token (:mod:`ranvier.core.guests`) is refused with 403
``M_GUEST_ACCESS_FORBIDDEN`` on every route but those of
:data:`ranvier.api.guest_routes.GUEST_ROUTES`: the one check, here, where
the guest flag arrives with the token's lookup, on every process that
serves the client API.
"""

from __future__ import annotations

from typing import Final, Protocol

from ranvier.api.guest_routes import guest_may_call
from ranvier.core.accounts import AccountFlags, Requester, hash_access_token, locked_error
from ranvier.core.appservices import AppService, AppServices
from ranvier.core.guests import guest_access_forbidden
from ranvier.errors import MatrixError
from ranvier.web import Request

__all__ = ["Auth", "RequesterSource", "access_token_of"]

_BEARER: Final = "bearer "


class RequesterSource(Protocol):
    """Whose an access token is (:class:`ranvier.core.accounts.Accounts`)."""

    async def get_requester(self, access_token: str) -> Requester | None: ...

    async def account_flags(self, user_id: str) -> AccountFlags | None: ...

    async def has_device(self, user_id: str, device_id: str) -> bool: ...


def access_token_of(request: Request) -> str | None:
    """The access token ``request`` carries, or None.

    The header wins over the query parameter. A header with another scheme
    (``Basic ...``) carries no token.
    """
    for name, value in request.headers:
        if name == "authorization":
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip() or None
            return None
    return request.query_value("access_token") or None


class Auth:
    """Turns the access token of a client request into a :class:`Requester`."""

    def __init__(self, accounts: RequesterSource, app_services: AppServices | None = None) -> None:
        self._accounts = accounts
        self._app_services = app_services if app_services is not None else AppServices()

    async def get_user(self, request: Request, *, allow_locked: bool = False) -> Requester:
        """The user and device the request's access token belongs to.

        Raises 401 ``M_USER_LOCKED`` for a locked account unless
        ``allow_locked`` (logging out, which the spec leaves open to it).

        Raises 401 ``M_MISSING_TOKEN`` when there is no token and 401
        ``M_UNKNOWN_TOKEN`` (``soft_logout`` false: the client must log in
        afresh) when it belongs to nobody; an expired one is ``M_UNKNOWN_TOKEN``
        with ``soft_logout`` true, raised by the accounts
        (:mod:`ranvier.core.refresh_tokens`).
        """
        token = access_token_of(request)
        if token is None:
            raise MatrixError(
                "the request has no access token", errcode="M_MISSING_TOKEN", http_status=401
            )
        service = self._app_services.by_as_token(token)
        if service is not None:
            requester = await self._app_service_requester(service, token, request)
        else:
            requester = await self._user_requester(token)
        if requester.locked and not allow_locked:
            raise locked_error()
        if requester.guest:
            path = request.uri.partition("?")[0]
            if not guest_may_call(request.method, path):
                raise guest_access_forbidden(f"guest accounts may not use {request.method} {path}")
        return requester

    async def _user_requester(self, token: str) -> Requester:
        requester = await self._accounts.get_requester(token)
        if requester is None:
            raise MatrixError(
                "the access token is not known: it was logged out, or never issued",
                errcode="M_UNKNOWN_TOKEN",
                http_status=401,
                soft_logout=False,
            )
        return requester

    def app_service_of(self, request: Request) -> AppService | None:
        """The application service whose ``as_token`` ``request`` carries, if any."""
        token = access_token_of(request)
        return None if token is None else self._app_services.by_as_token(token)

    async def _app_service_requester(
        self, service: AppService, token: str, request: Request
    ) -> Requester:
        """The user a service acts as, with that account's lock, suspension
        and shadow ban.

        A lock or suspension is of the account, whoever holds its keys: the
        spec refuses the account's use while locked, not one kind of token,
        and a service acting as a suspended user would otherwise carry on
        the very activity suspended; a shadow ban likewise. So a user of the service's namespace is
        read afresh on each request (no cache to go stale). The service's
        own sender is not: its standing is the registration the admin wrote,
        and its requests are the service's whole traffic.
        """
        user_id = request.query_value("user_id") or service.sender
        flags = AccountFlags(locked=False, suspended=False)
        if user_id != service.sender:
            if not service.owns_user(user_id):
                raise MatrixError(
                    f"application service {service.id} cannot act as {user_id}:"
                    " it is outside the service's users namespace",
                    errcode="M_FORBIDDEN",
                    http_status=403,
                )
            found = await self._accounts.account_flags(user_id)
            if found is None:
                raise MatrixError(
                    f"application service {service.id} has not registered {user_id}",
                    errcode="M_FORBIDDEN",
                    http_status=403,
                )
            if found.deactivated:
                # The account's own tokens went with it; the service's
                # token does not bring it back to act.
                raise MatrixError(
                    f"{user_id} has been deactivated",
                    errcode="M_USER_DEACTIVATED",
                    http_status=403,
                )
            flags = found
        device_id = request.query_value("device_id") or ""
        if device_id and not await self._accounts.has_device(user_id, device_id):
            raise MatrixError(
                f"{user_id} has no device {device_id}",
                errcode="M_UNKNOWN_DEVICE",
                http_status=400,
            )
        return Requester(
            user_id,
            device_id,
            False,
            hash_access_token(token),
            app_service=service.id,
            rate_limited=service.registration.rate_limited and user_id != service.sender,
            locked=flags.locked,
            suspended=flags.suspended,
            shadow_banned=flags.shadow_banned,
        )
