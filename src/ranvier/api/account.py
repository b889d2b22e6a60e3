"""Registration, login, logout and ``whoami``.

Registration goes through user-interactive authentication with one flow of
one stage, ``m.login.dummy``: the spec's way for a server with open
registration to say "no proof needed". A request without ``auth`` learns
the flows (401); the same request with ``{"type": "m.login.dummy"}``
registers. Registration is closed unless the operator opened it; accounts
can always be made with ``ranvier register-user`` or the shared-secret
endpoint (:mod:`ranvier.api.admin`).

An application service registers users of its namespace with its
``as_token`` and ``type: m.login.application_service`` (no password, no
authentication stages, whether or not registration is open), and logs them
in the same way; nobody else may register a name in a service's exclusive
namespace (400 ``M_EXCLUSIVE``).

With ``requires_token`` set as well, the flow is two stages,
``m.login.registration_token`` then ``m.login.dummy``
(:mod:`ranvier.core.registration_tokens`), and
``GET /_matrix/client/v1/register/m.login.registration_token/validity``
tells a client whether its token would do.

A registration's session is kept (:mod:`ranvier.core.uia`): the account
is made with a claim on it, in one write, so a retry in a session that
registered answers the same user ID with a new login (or none, with
``inhibit_login``) and never makes a second account.

A client that asks for a refresh token (``refresh_token: true``) gets one
with an access token that expires, and exchanges it at ``/refresh``
(:mod:`ranvier.core.refresh_tokens`).

When the server sends mail (``[email]``), a second flow of one stage,
``m.login.email.identity``, registers with an e-mail address validated
through ``/register/email/requestToken``: the account is created with the
address on it (:mod:`ranvier.core.threepids`).

With ``[registration] allow_guest_access``, ``kind=guest`` makes a guest
account with no credentials (:mod:`ranvier.core.guests`); without it that
kind is refused with the spec's 403 ``M_GUEST_ACCESS_FORBIDDEN``. A guest
becomes a full account with the same user ID through the ordinary
registration, giving its ``guest_access_token``, its localpart as
``username`` and a password, while registration is open; all-digit
usernames are kept for guests and refused to everyone else. The upgrade
claims its session as a registration does, so a retry in it, with the
same token, answers the same user ID.

Each route is served under ``/_matrix/client/v3`` and, for older clients,
under ``/_matrix/client/r0``, where these endpoints had the same shape.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeGuard

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth, access_token_of
from ranvier.core.accounts import Accounts, Login, NewAccount, NewDevice, Registration
from ranvier.core.appservices import AppService, AppServices, exclusive_error
from ranvier.core.email_validation import EMAIL, canonical_email
from ranvier.core.guests import is_guest_localpart
from ranvier.core.login_tokens import LoginTokens
from ranvier.core.registration_tokens import REGISTRATION_TOKEN, RegistrationTokens
from ranvier.core.uia import UserInteractiveAuth
from ranvier.errors import BadJsonError, MatrixError
from ranvier.storage.accounts import SessionRegisteredError, UserInUseError
from ranvier.web import JsonResponse, Request, Router

__all__ = [
    "EMAIL_IDENTITY",
    "add_account_routes",
    "json_object",
    "optional_bool",
    "optional_str",
    "threepid_creds",
]

_DUMMY: Final = "m.login.dummy"
_PASSWORD: Final = "m.login.password"
_APP_SERVICE: Final = "m.login.application_service"
_TOKEN: Final = "m.login.token"
_SSO: Final = "m.login.sso"
EMAIL_IDENTITY: Final = "m.login.email.identity"
_TOKEN_VALIDITY: Final = f"/_matrix/client/v1/register/{REGISTRATION_TOKEN}/validity"


def json_object(request: Request) -> dict[str, Any]:
    """The request body, which must be a JSON object."""
    if not isinstance(request.content, dict):
        raise MatrixError(
            "the request body must be a JSON object", errcode="M_NOT_JSON", http_status=400
        )
    return request.content


def optional_str(body: Mapping[str, Any], key: str) -> str | None:
    """``body[key]`` if it is a string, None if absent or null."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadJsonError(f"'{key}' must be a string")
    return value


def threepid_creds(auth: Mapping[str, Any]) -> tuple[str, str]:
    """The ``sid`` and ``client_secret`` of an ``m.login.email.identity``
    stage's ``threepid_creds``."""
    creds = auth.get("threepid_creds")
    if not isinstance(creds, dict):
        raise BadJsonError("'threepid_creds' must be an object with sid and client_secret")
    sid, client_secret = optional_str(creds, "sid"), optional_str(creds, "client_secret")
    if sid is None or client_secret is None:
        raise MatrixError(
            "'threepid_creds' needs sid and client_secret",
            errcode="M_MISSING_PARAM",
            http_status=400,
        )
    return sid, client_secret


class EmailRegistration(Protocol):
    """:class:`ranvier.core.threepids.Threepids`."""

    def registering(
        self, sid: str, client_secret: str
    ) -> Callable[[NewAccount, NewDevice | None], Awaitable[None]]: ...


def optional_bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """``body[key]`` if it is a boolean, ``default`` if absent or null."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadJsonError(f"'{key}' must be true or false")
    return value


def _required_str(body: Mapping[str, Any], key: str) -> str:
    value = optional_str(body, key)
    if value is None:
        raise BadJsonError(f"'{key}' is required")
    return value


async def check_username_available(
    accounts: Accounts, services: AppServices, request: Request
) -> None:
    """The checks of ``GET /register/available`` (and the admin API's
    ``username_available``) on the ``username`` query parameter: 400
    ``M_MISSING_PARAM``, ``M_INVALID_USERNAME``, ``M_USER_IN_USE``, or
    ``M_EXCLUSIVE`` for a name an application service holds.
    """
    username = request.query_value("username")
    if username is None:
        raise MatrixError(
            "the 'username' query parameter is required",
            errcode="M_MISSING_PARAM",
            http_status=400,
        )
    _check_not_guest_shaped(username.lower())
    user_id = await accounts.check_username_available(username.lower())
    services.check_user_registration(user_id, None)


def _check_not_guest_shaped(localpart: str) -> None:
    """Refuse an all-digit username: that shape is kept for guests'
    generated IDs (:mod:`ranvier.core.guests`), as in Synapse."""
    if is_guest_localpart(localpart):
        raise MatrixError(
            f"the username {localpart!r} is all digits, which are kept for guest accounts",
            errcode="M_INVALID_USERNAME",
            http_status=400,
        )


def add_account_routes(
    router: Router,
    *,
    accounts: Accounts,
    auth: Auth,
    registration_enabled: bool,
    app_services: AppServices | None = None,
    registration_tokens: RegistrationTokens | None = None,
    login_tokens: LoginTokens | None = None,
    get_login_token: bool = True,
    identity_providers: Sequence[Mapping[str, str]] = (),
    email_owner: Callable[[str], Awaitable[str | None]] | None = None,
    email_registration: EmailRegistration | None = None,
    allow_guests: bool = False,
    uia: UserInteractiveAuth | None = None,
) -> None:
    """Serve registration, login, logout and ``whoami``.

    ``registration_enabled`` opens ``/register`` to anyone; when False it
    answers 403 and ``/register/available`` too. ``registration_tokens``,
    when given with it, makes registering take a token. ``login_tokens``
    offers ``m.login.token`` logins, made at ``/login/get_token`` when
    ``get_login_token``, and by single sign-on through ``identity_providers``
    (``id`` and ``name`` each), which ``m.login.sso`` lists.
    ``email_owner`` (whose account an e-mail address is on) lets a password
    login name the user by an address (``m.id.thirdparty``).
    ``email_registration`` offers registering with a validated address.
    ``allow_guests`` serves ``kind=guest``. ``uia`` keeps registration's
    sessions, so that a retry makes no second account.
    """
    tokens = registration_tokens if registration_enabled else None
    flows: list[dict[str, list[str]]] = [{"stages": [_DUMMY]}]
    if email_registration is not None:
        flows.append({"stages": [EMAIL_IDENTITY]})
    server_name = accounts.server_name
    services = app_services if app_services is not None else AppServices()

    def calling_service(request: Request) -> AppService:
        """The service whose ``as_token`` the request carries; 401 otherwise."""
        token = access_token_of(request)
        if token is None:
            raise MatrixError(
                f"{_APP_SERVICE} needs the application service's as_token",
                errcode="M_MISSING_TOKEN",
                http_status=401,
            )
        service = services.by_as_token(token)
        if service is None:
            raise MatrixError(
                "the access token is not an application service's as_token",
                errcode="M_UNKNOWN_TOKEN",
                http_status=401,
            )
        return service

    def check_open() -> None:
        if not registration_enabled:
            raise MatrixError(
                "registration is closed on this server", errcode="M_FORBIDDEN", http_status=403
            )

    async def register(request: Request) -> JsonResponse | Mapping[str, Any]:
        kind = request.query_value("kind") or "user"
        if kind == "guest":
            return await register_guest(request)
        if kind != "user":
            raise MatrixError(
                f"unknown kind of account {kind!r} (user or guest)",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        body = json_object(request)
        if body.get("type") == _APP_SERVICE:
            return await register_for_service(calling_service(request), body)
        check_open()
        username = optional_str(body, "username")
        # Checked before authentication, used once it is done.
        for key in ("password", "device_id", "initial_device_display_name"):
            optional_str(body, key)
        optional_bool(body, "inhibit_login")
        optional_bool(body, "refresh_token")
        localpart = None if username is None else username.lower()
        guest_token = optional_str(body, "guest_access_token")
        auth_dict = body.get("auth")
        if auth_dict is not None and not isinstance(auth_dict, dict):
            raise BadJsonError("'auth' must be an object")
        session = None if auth_dict is None else optional_str(auth_dict, "session")
        stage = None if auth_dict is None else optional_str(auth_dict, "type")
        if guest_token is not None:
            return await upgrade_guest(body, guest_token, localpart, session, stage)
        again = await again_in_session(session, body, localpart)
        if again is not None:
            return again
        try:
            return await register_user(body, auth_dict, session, stage, localpart)
        except UserInUseError:
            # A retry racing the request that registered in its session.
            again = await again_in_session(session, body, localpart)
            if again is None:
                raise
            return again

    async def register_user(
        body: Mapping[str, Any],
        auth_dict: Mapping[str, Any] | None,
        session: str | None,
        stage: str | None,
        localpart: str | None,
    ) -> JsonResponse | Mapping[str, Any]:
        if localpart is not None:
            # Before authentication, so that a taken name is known at once.
            _check_not_guest_shaped(localpart)
            user_id = await accounts.check_username_available(localpart)
            services.check_user_registration(user_id, None)
        if tokens is not None:
            return await register_with_token(body, auth_dict, session, stage, localpart)
        if stage is None:
            return JsonResponse(
                {
                    "flows": flows,
                    "params": {},
                    "session": await open_session(session),
                    "completed": [],
                },
                status=401,
            )
        if stage == EMAIL_IDENTITY and email_registration is not None:
            assert auth_dict is not None
            sid, client_secret = threepid_creds(auth_dict)
            create = email_registration.registering(sid, client_secret)
            return await register_account(body, localpart, session, create=create)
        if stage != _DUMMY:
            offered = " or ".join(stage for flow in flows for stage in flow["stages"])
            raise MatrixError(
                f"unknown authentication type {stage!r} (this server offers {offered})",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        return await register_account(body, localpart, session)

    async def open_session(session: str | None) -> str:
        if uia is None:
            return session or secrets.token_urlsafe(16)
        return await uia.open_registration(session)

    async def registered_again(
        user_id: str, body: Mapping[str, Any], localpart: str | None
    ) -> dict[str, Any]:
        """The answer to a retry in a session that registered ``user_id``:
        that user, logged in anew unless the retry inhibits it."""
        if localpart is not None and accounts.user_id_for(localpart) != user_id:
            raise MatrixError(
                f"this session registered {user_id} already: start a new session"
                " to register another user",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        if optional_bool(body, "inhibit_login"):
            return _registered(Registration(user_id), server_name)
        login = await accounts.login_as(
            user_id,
            device_id=optional_str(body, "device_id"),
            device_display_name=optional_str(body, "initial_device_display_name"),
            refresh=optional_bool(body, "refresh_token"),
        )
        return _registered(
            Registration(
                user_id,
                login.device_id,
                login.access_token,
                login.refresh_token,
                login.expires_in_ms,
            ),
            server_name,
        )

    async def register_guest(request: Request) -> dict[str, Any]:
        if not allow_guests:
            raise MatrixError(
                "guest accounts are not offered here",
                errcode="M_GUEST_ACCESS_FORBIDDEN",
                http_status=403,
            )
        # The spec has every field of the body ignored but this one, and
        # the device ID picked by the server.
        body = request.content if isinstance(request.content, dict) else {}
        name = body.get("initial_device_display_name")
        registration = await accounts.register(
            None,
            None,
            guest=True,
            device_display_name=name if isinstance(name, str) else None,
        )
        return _registered(registration, server_name)

    async def upgrade_guest(
        body: Mapping[str, Any],
        guest_token: str,
        localpart: str | None,
        session: str | None,
        stage: str | None,
    ) -> JsonResponse | Mapping[str, Any]:
        """A guest becoming a full account, checked before authentication so
        that a wrong token or name is known at once."""
        if tokens is not None:
            raise MatrixError(
                "guest accounts cannot be upgraded while registering takes a registration token",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        guest = await accounts.get_requester(guest_token)
        made = None if session is None or uia is None else await uia.registered_in(session)
        if guest is not None and made is not None:
            if made != guest.user_id:
                raise MatrixError(
                    f"this session registered {made} already: start a new session"
                    " to upgrade another guest",
                    errcode="M_INVALID_PARAM",
                    http_status=400,
                )
            # A retry in the session that upgraded this very guest: its
            # token is a full account's now, and the client lost the answer.
            return await registered_again(made, body, localpart)
        if guest is None or not guest.guest:
            raise MatrixError(
                "'guest_access_token' is not a guest account's access token",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if localpart is None:
            raise MatrixError(
                "upgrading a guest needs 'username': the guest's localpart",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        if accounts.user_id_for(localpart) != guest.user_id:
            raise MatrixError(
                f"'username' must be the guest's own localpart ({guest.user_id})",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        services.check_user_registration(guest.user_id, None)
        password = optional_str(body, "password")
        if password is None:
            raise MatrixError(
                "upgrading a guest needs a 'password'", errcode="M_MISSING_PARAM", http_status=400
            )
        if stage is None:
            return JsonResponse(
                {
                    "flows": [{"stages": [_DUMMY]}],
                    "params": {},
                    "session": await open_session(session),
                    "completed": [],
                },
                status=401,
            )
        if stage != _DUMMY:
            raise MatrixError(
                f"unknown authentication type {stage!r} (upgrading a guest takes {_DUMMY})",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        # Claimed in the upgrade's write, as a registration's session is,
        # so that a retry in it is answered as a registration's retry is.
        claim = None if uia is None else await uia.registration_claim(session)
        try:
            registration = await accounts.upgrade_guest(
                guest.user_id,
                password,
                login=not optional_bool(body, "inhibit_login"),
                device_id=optional_str(body, "device_id"),
                device_display_name=optional_str(body, "initial_device_display_name"),
                refresh=optional_bool(body, "refresh_token"),
                session=claim,
            )
        except MatrixError as refused:
            return await answered_before(refused, session, body, localpart)
        return _registered(registration, server_name)

    async def answered_before(
        refused: MatrixError, session: str | None, body: Mapping[str, Any], localpart: str | None
    ) -> dict[str, Any]:
        """The answer to a request whose session registered first, in
        another request: that account, logged in again. Raises ``refused``
        when it is anything else (on a worker the error arrives as a plain
        MatrixError with its errcode).
        """
        if refused.errcode != SessionRegisteredError.errcode:
            raise refused
        again = await again_in_session(session, body, localpart)
        if again is None:
            raise refused
        return again

    async def again_in_session(
        session: str | None, body: Mapping[str, Any], localpart: str | None
    ) -> dict[str, Any] | None:
        """The answer to a retry in ``session`` if it registered an account
        already (:func:`registered_again`); None if it registered none."""
        if session is None or uia is None:
            return None
        made = await uia.registered_in(session)
        return None if made is None else await registered_again(made, body, localpart)

    async def register_with_token(
        body: Mapping[str, Any],
        auth_dict: Mapping[str, Any] | None,
        session: str | None,
        stage: str | None,
        localpart: str | None,
    ) -> JsonResponse | Mapping[str, Any]:
        assert tokens is not None
        if stage is None:
            challenge = await tokens.challenge(await open_session(session))
            return JsonResponse(challenge, status=401)
        if stage == REGISTRATION_TOKEN:
            assert auth_dict is not None
            return JsonResponse(await tokens.take_use(session, auth_dict), status=401)
        if stage != _DUMMY:
            raise MatrixError(
                f"unknown authentication type {stage!r}"
                f" (this server offers {REGISTRATION_TOKEN}, then {_DUMMY})",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        held = await tokens.check_use_held(session)
        return await register_account(body, localpart, held, token_session=held)

    async def register_account(
        body: Mapping[str, Any],
        localpart: str | None,
        session: str | None,
        *,
        token_session: str | None = None,
        create: Callable[[NewAccount, NewDevice | None], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        if token_session is not None:
            assert tokens is not None
            create = tokens.completing(token_session)
        claim = None if uia is None else await uia.registration_claim(session)
        try:
            registration = await accounts.register(
                localpart,
                optional_str(body, "password"),
                login=not optional_bool(body, "inhibit_login"),
                device_id=optional_str(body, "device_id"),
                device_display_name=optional_str(body, "initial_device_display_name"),
                create=create,
                refresh=optional_bool(body, "refresh_token"),
                session=claim,
            )
        except MatrixError as refused:
            return await answered_before(refused, session, body, localpart)
        return _registered(registration, server_name)

    async def token_validity(request: Request) -> Mapping[str, Any]:
        if tokens is None:
            raise MatrixError(
                "registration with a token is not enabled on this server",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        token = request.query_value("token")
        if token is None:
            raise MatrixError(
                "the 'token' query parameter is required",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        return {"valid": await tokens.is_valid(token)}

    async def register_for_service(service: AppService, body: Mapping[str, Any]) -> dict[str, Any]:
        username = optional_str(body, "username")
        if username is None:
            raise MatrixError(
                "'username' is required to register a user of an application service",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        localpart = username.lower()
        services.check_user_registration(accounts.user_id_for(localpart), service)
        registration = await accounts.register(
            localpart,
            None,
            login=not optional_bool(body, "inhibit_login"),
            device_id=optional_str(body, "device_id"),
            device_display_name=optional_str(body, "initial_device_display_name"),
            refresh=optional_bool(body, "refresh_token"),
        )
        return _registered(registration, server_name)

    async def register_available(request: Request) -> Mapping[str, Any]:
        check_open()
        await check_username_available(accounts, services, request)
        return {"available": True}

    async def login_flows(request: Request) -> Mapping[str, Any]:
        flows: list[dict[str, Any]] = [{"type": _PASSWORD}]
        if services:
            flows.append({"type": _APP_SERVICE})
        if login_tokens is not None:
            flows.append({"type": _TOKEN, "get_login_token": get_login_token})
        if identity_providers:
            flows.append({"type": _SSO, "identity_providers": list(identity_providers)})
        return {"flows": flows}

    async def login(request: Request) -> Mapping[str, Any]:
        body = json_object(request)
        login_type = _required_str(body, "type")
        if login_type == _APP_SERVICE and services:
            return await login_for_service(calling_service(request), body)
        if login_type == _TOKEN and login_tokens is not None:
            result = await login_tokens.log_in(
                _required_str(body, "token"),
                device_id=optional_str(body, "device_id"),
                device_display_name=optional_str(body, "initial_device_display_name"),
                refresh=optional_bool(body, "refresh_token"),
            )
            return _logged_in(result, server_name)
        if login_type != _PASSWORD:
            raise MatrixError(
                f"unknown login type {login_type!r} (this server offers {_PASSWORD})",
                errcode="M_UNKNOWN",
                http_status=400,
            )
        identifier = _login_identifier(body)
        user: str | None
        if email_owner is not None and _is_thirdparty(identifier):
            user = await email_owner(_email_address(identifier))
        else:
            user = _login_user(body)
        password = _required_str(body, "password")
        result = await accounts.login_with_password(
            user,
            password,
            device_id=optional_str(body, "device_id"),
            device_display_name=optional_str(body, "initial_device_display_name"),
            refresh=optional_bool(body, "refresh_token"),
        )
        return _logged_in(result, server_name)

    async def login_for_service(service: AppService, body: Mapping[str, Any]) -> dict[str, Any]:
        user = _login_user(body)
        user_id = accounts.local_user_id(user)
        if user_id is None or not service.owns_user(user_id):
            raise exclusive_error(
                f"{user} is outside the users namespace of application service {service.id}"
            )
        result = await accounts.login_as(
            user_id,
            device_id=optional_str(body, "device_id"),
            device_display_name=optional_str(body, "initial_device_display_name"),
            refresh=optional_bool(body, "refresh_token"),
        )
        return _logged_in(result, server_name)

    async def refresh(request: Request) -> Mapping[str, Any]:
        refreshed = await accounts.refresh(_required_str(json_object(request), "refresh_token"))
        return {
            "access_token": refreshed.access_token,
            "refresh_token": refreshed.refresh_token,
            "expires_in_ms": refreshed.expires_in_ms,
        }

    async def logout(request: Request) -> Mapping[str, Any]:
        # The spec leaves logging out open to a locked account.
        requester = await auth.get_user(request, allow_locked=True)
        await accounts.logout(requester)
        return {}

    async def logout_all(request: Request) -> Mapping[str, Any]:
        # The spec leaves logging out open to a locked account.
        requester = await auth.get_user(request, allow_locked=True)
        await accounts.logout_all(requester.user_id)
        return {}

    async def whoami(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        if not requester.device_id:
            # A service acting with no device: the spec leaves device_id out.
            return {"user_id": requester.user_id, "is_guest": requester.guest}
        return {
            "user_id": requester.user_id,
            "device_id": requester.device_id,
            "is_guest": requester.guest,
        }

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/register", register)
        router.add("GET", f"{prefix}/register/available", register_available)
        router.add("GET", f"{prefix}/login", login_flows)
        router.add("POST", f"{prefix}/login", login)
        router.add("POST", f"{prefix}/refresh", refresh)
        router.add("POST", f"{prefix}/logout", logout)
        router.add("POST", f"{prefix}/logout/all", logout_all)
        router.add("GET", f"{prefix}/account/whoami", whoami)
    router.add("GET", _TOKEN_VALIDITY, token_validity)


def _registered(registration: Registration, server_name: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"user_id": registration.user_id, "home_server": server_name}
    if registration.access_token is not None:
        answer["access_token"] = registration.access_token
        answer["device_id"] = registration.device_id
    if registration.refresh_token is not None:
        answer["refresh_token"] = registration.refresh_token
        answer["expires_in_ms"] = registration.expires_in_ms
    return answer


def _login_identifier(body: Mapping[str, Any]) -> object:
    """The login's ``identifier``; for a body naming its user by the
    deprecated top-level ``medium`` and ``address`` instead (the spec still
    lists them, as it lists ``user``), the ``m.id.thirdparty`` identifier
    they stand for."""
    identifier = body.get("identifier")
    if identifier is None and "user" not in body and "medium" in body:
        return {
            "type": "m.id.thirdparty",
            "medium": body["medium"],
            "address": body.get("address"),
        }
    return identifier


def _login_user(body: Mapping[str, Any]) -> str:
    """Who a password login is for: ``identifier`` (``m.id.user``), or the
    deprecated top-level ``user``.
    """
    identifier = _login_identifier(body)
    if identifier is None:
        user = optional_str(body, "user")
        if user is None:
            raise BadJsonError("'identifier' is required")
        return user
    if not isinstance(identifier, dict):
        raise BadJsonError("'identifier' must be an object")
    kind = _required_str(identifier, "type")
    if kind != "m.id.user":
        raise MatrixError(
            f"unsupported identifier type {kind!r} (this server knows m.id.user)",
            errcode="M_UNKNOWN",
            http_status=400,
        )
    return _required_str(identifier, "user")


def _is_thirdparty(identifier: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(identifier, dict) and identifier.get("type") == "m.id.thirdparty"


def _email_address(identifier: Mapping[str, Any]) -> str:
    """The canonical address an ``m.id.thirdparty`` identifier names."""
    medium = _required_str(identifier, "medium")
    if medium != EMAIL:
        raise MatrixError(
            f"unsupported medium {medium!r} (this server knows {EMAIL})",
            errcode="M_UNKNOWN",
            http_status=400,
        )
    return canonical_email(_required_str(identifier, "address"))


def _logged_in(login: Login, server_name: str) -> dict[str, Any]:
    """The answer to a successful ``/login``."""
    answer: dict[str, Any] = {
        "user_id": login.user_id,
        "access_token": login.access_token,
        "device_id": login.device_id,
        "home_server": server_name,
    }
    if login.refresh_token is not None:
        answer["refresh_token"] = login.refresh_token
        answer["expires_in_ms"] = login.expires_in_ms
    return answer
