"""``GET /login/sso/redirect[/{idpId}]``, the identity provider's callback
(:mod:`ranvier.core.sso`), and user-interactive authentication's
``m.login.sso`` stage: ``GET /auth/m.login.sso/fallback/web?session=``.

The callback of a login does not send the browser straight to the client:
it shows a page naming the client's host and asking to go on. A login
token in a URL is a login; without the page, a link made by anyone to our
redirect with their own ``redirectUrl`` would hand them the token of
whoever clicks it.

The fallback asks first, as the spec's security considerations have it: a
page says what the client is trying to do to whose account, warns that an
unexpected request means someone else holds the account's access, and
links to the user's identity providers. It sets a cookie the callback must
see again, so that a provider's link started there cannot be finished by
another browser (whoever started it could otherwise send it to the user to
click). The callback then shows the fallback's "done" page, whose script
tells the client (``onAuthDone``, or ``authDone`` posted to the opener).
"""

from __future__ import annotations

import html
import secrets
from collections.abc import AsyncGenerator
from typing import Final

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.html_pages import NO_STORE, html_page
from ranvier.core.sso import (
    BROWSER_COOKIE,
    CALLBACK_PATH,
    SESSION_LIFETIME_SECONDS,
    SsoConfirmed,
    SsoError,
    SsoProviders,
    browser_hash,
)
from ranvier.core.uia import SSO, UserInteractiveAuth
from ranvier.errors import MatrixError
from ranvier.web import Request, Router, StreamResponse

__all__ = ["AUTH_DONE_SCRIPT", "add_sso_routes"]

#: The script the spec has the fallback page run once the stage is done.
AUTH_DONE_SCRIPT: Final = (
    "if (window.onAuthDone) {\n"
    "    window.onAuthDone();\n"
    "} else if (window.opener && window.opener.postMessage) {\n"
    '    window.opener.postMessage("authDone", "*");\n'
    "}\n"
)


def _redirect(location: str) -> StreamResponse:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b""

    return StreamResponse(302, [("location", location), NO_STORE, ("content-length", "0")], body)


def _cookie_value(request: Request, name: str) -> str | None:
    for header, value in request.headers:
        if header != "cookie":
            continue
        for part in value.split(";"):
            key, _, found = part.strip().partition("=")
            if key == name and found:
                return found
    return None


def add_sso_routes(
    router: Router, sso: SsoProviders, uia: UserInteractiveAuth | None = None
) -> None:
    """Serve the redirect endpoints and the callback; with ``uia``, the
    ``m.login.sso`` fallback."""
    secure = "; Secure" if sso.callback_url.startswith("https://") else ""

    def browser_cookie(value: str, max_age: int) -> tuple[str, str]:
        return (
            "set-cookie",
            f"{BROWSER_COOKIE}={value}; Path={CALLBACK_PATH}; Max-Age={max_age};"
            f" HttpOnly; SameSite=Lax{secure}",
        )

    async def redirect(request: Request) -> StreamResponse:
        redirect_url = request.query_value("redirectUrl")
        if redirect_url is None:
            raise MatrixError(
                "the 'redirectUrl' query parameter is required",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        location = await sso.start(request.path_params.get("idpId"), redirect_url)
        return _redirect(location)

    async def callback(request: Request) -> StreamResponse:
        params = {name: values[0] for name, values in request.query.items() if values}
        try:
            finished = await sso.finish(
                params, browser_cookie=_cookie_value(request, BROWSER_COOKIE)
            )
        except SsoError as exc:
            return html_page(exc.status, "Sign-in failed", f"<p>{html.escape(exc.message)}</p>")
        if isinstance(finished, SsoConfirmed):
            return html_page(
                200,
                "Confirmed",
                f"<p>You confirmed it is you, {html.escape(finished.user_id)}. You may close"
                " this window and go back to your client.</p>",
                script=AUTH_DONE_SCRIPT,
                headers=[browser_cookie("", 0)],
            )
        link = html.escape(finished.client_url, quote=True)
        host = html.escape(finished.client_host)
        return html_page(
            200,
            f"Continue to {finished.client_host}?",
            f"<p>You are logging in as <b>{html.escape(finished.user_id)}</b>.</p>\n"
            f"<p>Continuing gives <b>{host}</b> access to your account. Only go on if you"
            " started this login yourself, from a client you trust.</p>\n"
            f'<p><a href="{link}">Continue to {host}</a></p>',
        )

    async def fallback(request: Request) -> StreamResponse:
        assert uia is not None
        session_id = request.query_value("session")
        if not session_id:
            return html_page(
                400, "Session missing", "<p>Open this page from your client, with its session.</p>"
            )
        found = await uia.open_session(session_id)
        if found is None:
            return html_page(
                400,
                "Session unknown",
                "<p>This request is unknown, has expired or was carried out already:"
                " start again from your client.</p>",
            )
        user_id, description = found
        providers = await sso.linked_providers(user_id)
        if not providers:
            return html_page(
                403,
                "No single sign-on",
                f"<p>{html.escape(user_id)} has no identity at a single sign-on provider of"
                " this server: confirm with your password instead.</p>",
            )
        cookie = secrets.token_urlsafe(32)
        links = []
        for idp_id, name in providers:
            location = await sso.start_confirmation(idp_id, session_id, browser_hash(cookie))
            links.append(
                f'<p><a href="{html.escape(location, quote=True)}">'
                f"Confirm with {html.escape(name)}</a></p>"
            )
        return html_page(
            200,
            "Confirm it is you",
            f"<p>A client is trying to {html.escape(description)}"
            f" (<b>{html.escape(user_id)}</b>). To confirm, sign in again with your"
            " identity provider.</p>\n"
            "<p>If you did not expect this, do not go on: someone else may have access to"
            " your account.</p>\n" + "\n".join(links),
            headers=[browser_cookie(cookie, round(SESSION_LIFETIME_SECONDS))],
        )

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/login/sso/redirect", redirect)
        router.add("GET", f"{prefix}/login/sso/redirect/{{idpId}}", redirect)
        if uia is not None:
            router.add("GET", f"{prefix}/auth/{SSO}/fallback/web", fallback)
    router.add("GET", CALLBACK_PATH, callback)
