"""Third-party identifiers: e-mail addresses, when the server sends mail.

Without ``[email]`` the server sends no mail, so it can neither check
that a user owns an address nor reset a password through one, and
``/capabilities`` says ``m.3pid_changes`` is off. Clients still ask:
``GET /account/3pid`` lists no identifiers, and every ``requestToken``
endpoint is refused, so a client can say why rather than meet an unknown
endpoint: adding an identifier with 400 ``M_THREEPID_MEDIUM_NOT_SUPPORTED``
(the code spec v1.13 gives a server that takes no addresses of the
medium), registration and password reset with 403 ``M_THREEPID_DENIED``
(the only refusal their definitions name). So are adding an identifier (no validation
session can exist) and binding one at an identity server (the server talks
to none). Deleting or unbinding one leaves the account as it is, without
it, and answers ``no-support``: the spec's answer when the server cannot
tell an identity server to forget it.

With ``[email]`` (:mod:`ranvier.core.threepids`) the e-mail endpoints
work: ``/account/3pid/email/requestToken`` and
``/account/password/email/requestToken`` mail a token and answer its
``sid`` with ``submit_url``, where the token is submitted as JSON; the
mail's link leads to the same path, which then answers an HTML page.
``/account/3pid/add`` (after user-interactive authentication) puts the validated address on
the account, ``GET /account/3pid`` lists it, ``/account/3pid/delete``
takes it off; ``/register/email/requestToken`` validates an address to
register with (:mod:`ranvier.api.account`). Phone numbers and identity
servers stay refused as above. Each ``requestToken`` is rate limited per
client address (the route's category) and per e-mail address (here).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.account import json_object, optional_str
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.api.html_pages import html_page
from ranvier.api.ratelimit import RateLimiter
from ranvier.api.uia_answers import answer_after_uia
from ranvier.core.email_validation import SUBMIT_TOKEN_PATH, canonical_email
from ranvier.core.threepids import Threepids
from ranvier.core.uia import ADD_THREEPID, UserInteractiveAuth
from ranvier.errors import BadJsonError, MatrixError
from ranvier.web import Handler, JsonResponse, Request, Router, StreamResponse

__all__ = ["add_threepid_routes"]

#: Where a client asks the server to send a validation token, other than
#: to add an identifier to its account.
_REQUEST_TOKEN_PATHS = tuple(
    f"/{base}/{medium}/requestToken"
    for base in ("register", "account/password")
    for medium in ("email", "msisdn")
)
_RESET_TOKEN_PATH: Final = "/account/password/email/requestToken"
_REGISTER_TOKEN_PATH: Final = "/register/email/requestToken"
#: The names the adding endpoints' refusals give each medium.
_MEDIUM_NAMES: Final = {"email": "e-mail addresses", "msisdn": "phone numbers"}
_NEXT_LINK: Final = re.compile(r"https?://[^\s/?#]+[^\s]*")


_MEDIA = ("email", "msisdn")


def _check_identifier(body: Mapping[str, Any]) -> None:
    """A delete or unbind request's identifier: a known medium, an address."""
    for key in ("medium", "address"):
        if body.get(key) is None:
            raise MatrixError(f"'{key}' is required", errcode="M_MISSING_PARAM", http_status=400)
        optional_str(body, key)
    if body["medium"] not in _MEDIA:
        raise MatrixError(
            f"'medium' must be one of {', '.join(_MEDIA)}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    optional_str(body, "id_server")


def _required(body: Mapping[str, Any], key: str) -> str:
    value = optional_str(body, key)
    if value is None:
        raise MatrixError(f"'{key}' is required", errcode="M_MISSING_PARAM", http_status=400)
    return value


def add_threepid_routes(
    router: Router,
    *,
    auth: Auth,
    threepids: Threepids | None = None,
    uia: UserInteractiveAuth | None = None,
    limiter: RateLimiter | None = None,
    register_by_email: bool = False,
) -> None:
    """Serve ``GET /account/3pid`` and the rest (see the module's doc):
    refused but for delete and unbind without ``threepids``; with it (and
    ``uia``, which adding needs), the e-mail endpoints, registration's
    only with ``register_by_email`` (registration open, without tokens).
    ``limiter`` counts ``requestToken`` per e-mail address."""
    by_email: set[str] = set()
    if threepids is not None:
        by_email = (
            {_RESET_TOKEN_PATH, _REGISTER_TOKEN_PATH} if register_by_email else {_RESET_TOKEN_PATH}
        )

    async def no_threepids(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        return {"threepids": []}

    async def request_token(request: Request) -> Mapping[str, Any]:
        raise MatrixError(
            "this server does not use e-mail addresses or phone numbers",
            errcode="M_THREEPID_DENIED",
            http_status=403,
        )

    def refuse_medium(medium: str) -> Handler:
        async def request_add_token(request: Request) -> Mapping[str, Any]:
            raise MatrixError(
                f"this server does not add {_MEDIUM_NAMES[medium]} to accounts",
                errcode="M_THREEPID_MEDIUM_NOT_SUPPORTED",
                http_status=400,
            )

        return request_add_token

    async def refuse_identifier(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        raise MatrixError(
            "this server keeps no e-mail addresses or phone numbers and uses no identity server",
            errcode="M_THREEPID_DENIED",
            http_status=403,
        )

    async def forget_identifier(request: Request) -> Mapping[str, Any]:
        await auth.get_user(request)
        _check_identifier(json_object(request))
        return {"id_server_unbind_result": "no-support"}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/account/3pid/bind", refuse_identifier)
        router.add("POST", f"{prefix}/account/3pid/unbind", forget_identifier)
        router.add("POST", f"{prefix}/account/3pid/msisdn/requestToken", refuse_medium("msisdn"))
        for path in _REQUEST_TOKEN_PATHS:
            if path not in by_email:
                router.add("POST", prefix + path, request_token)
        if threepids is None:
            router.add("GET", f"{prefix}/account/3pid", no_threepids)
            router.add("POST", f"{prefix}/account/3pid/add", refuse_identifier)
            router.add("POST", f"{prefix}/account/3pid/delete", forget_identifier)
            router.add("POST", f"{prefix}/account/3pid/email/requestToken", refuse_medium("email"))
    if threepids is not None:
        assert uia is not None, "adding an address asks for the password"
        _add_email_routes(
            router,
            auth=auth,
            threepids=threepids,
            uia=uia,
            limiter=limiter,
            register_by_email=register_by_email,
        )


def _add_email_routes(
    router: Router,
    *,
    auth: Auth,
    threepids: Threepids,
    uia: UserInteractiveAuth,
    limiter: RateLimiter | None,
    register_by_email: bool,
) -> None:
    def token_request(body: Mapping[str, Any]) -> tuple[str, str, int, str | None]:
        """A ``requestToken`` body: address (canonical), secret, attempt, next link."""
        client_secret = _required(body, "client_secret")
        address = canonical_email(_required(body, "email"))
        if "send_attempt" not in body:
            raise MatrixError(
                "'send_attempt' is required", errcode="M_MISSING_PARAM", http_status=400
            )
        send_attempt = body["send_attempt"]
        if isinstance(send_attempt, bool) or not isinstance(send_attempt, int):
            raise BadJsonError("'send_attempt' must be an integer")
        next_link = optional_str(body, "next_link")
        if next_link is not None and not _NEXT_LINK.fullmatch(next_link):
            raise MatrixError(
                "'next_link' must be an http:// or https:// URL",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        # Only an identity server would use these, and none is.
        optional_str(body, "id_server")
        optional_str(body, "id_access_token")
        if limiter is not None and limiter.limits("threepid_validation"):
            limiter.check("threepid_validation", f"email:{address}")
        return address, client_secret, send_attempt, next_link

    async def request_add_token(request: Request) -> Mapping[str, Any]:
        sid = await threepids.request_add_token(*token_request(json_object(request)))
        return {"sid": sid, "submit_url": threepids.submit_url}

    async def request_register_token(request: Request) -> Mapping[str, Any]:
        sid = await threepids.request_register_token(*token_request(json_object(request)))
        return {"sid": sid, "submit_url": threepids.submit_url}

    async def request_reset_token(request: Request) -> Mapping[str, Any]:
        sid = await threepids.request_reset_token(*token_request(json_object(request)))
        return {"sid": sid, "submit_url": threepids.submit_url}

    async def submit_token_json(request: Request) -> Mapping[str, Any]:
        body = json_object(request)
        await threepids.submit_token(
            _required(body, "sid"), _required(body, "client_secret"), _required(body, "token")
        )
        return {"success": True}

    async def submit_token_page(request: Request) -> StreamResponse:
        values = [request.query_value(name) for name in ("sid", "client_secret", "token")]
        sid, client_secret, token = values
        if sid is None or client_secret is None or token is None:
            return html_page(400, "Link incomplete", "<p>Open the whole link from the mail.</p>")
        try:
            next_link = await threepids.submit_token(sid, client_secret, token)
        except MatrixError as exc:
            return html_page(exc.http_status, "Not confirmed", f"<p>{html.escape(exc.message)}</p>")
        more = "<p>You can go back to your client now.</p>"
        if next_link is not None:
            link = html.escape(next_link, quote=True)
            more = f'<p><a href="{link}">Continue</a></p>'
        return html_page(
            200, "Address confirmed", f"<p>Your e-mail address is confirmed.</p>\n{more}"
        )

    async def list_threepids(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return {
            "threepids": [
                {
                    "medium": threepid.medium,
                    "address": threepid.address,
                    "validated_at": threepid.validated_at,
                    "added_at": threepid.added_at,
                }
                for threepid in await threepids.threepids_of(requester.user_id)
            ]
        }

    async def add_threepid(request: Request) -> JsonResponse:
        requester = await auth.get_user(request)
        body = json_object(request)
        sid, client_secret = _required(body, "sid"), _required(body, "client_secret")

        async def perform() -> dict[str, Any]:
            await threepids.add(requester.user_id, sid, client_secret)
            return {}

        return await answer_after_uia(
            uia, requester, ADD_THREEPID, body.get("auth"), request={"sid": sid}, perform=perform
        )

    async def delete_threepid(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        _check_identifier(body)
        await threepids.delete(requester.user_id, body["medium"], body["address"])
        return {"id_server_unbind_result": "no-support"}

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/account/3pid", list_threepids)
        router.add("POST", f"{prefix}/account/3pid/add", add_threepid)
        router.add("POST", f"{prefix}/account/3pid/delete", delete_threepid)
        router.add("POST", f"{prefix}/account/3pid/email/requestToken", request_add_token)
        router.add("POST", prefix + _RESET_TOKEN_PATH, request_reset_token)
        if register_by_email:
            router.add("POST", prefix + _REGISTER_TOKEN_PATH, request_register_token)
    router.add("POST", SUBMIT_TOKEN_PATH, submit_token_json)
    router.add("GET", SUBMIT_TOKEN_PATH, submit_token_page)
