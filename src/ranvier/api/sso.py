"""``GET /login/sso/redirect[/{idpId}]`` and the identity provider's
callback (:mod:`ranvier.core.sso`).

The callback does not send the browser straight to the client: it shows a
page naming the client's host and asking to go on. A login token in a URL
is a login; without the page, a link made by anyone to our redirect with
their own ``redirectUrl`` would hand them the token of whoever clicks it.
"""

from __future__ import annotations

import html
from collections.abc import AsyncGenerator

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.html_pages import NO_STORE, html_page
from ranvier.core.sso import CALLBACK_PATH, SsoError, SsoProviders
from ranvier.errors import MatrixError
from ranvier.web import Request, Router, StreamResponse

__all__ = ["add_sso_routes"]

#: The login token is in the page's link: no other site may frame it or be told it.


def _redirect(location: str) -> StreamResponse:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b""

    return StreamResponse(302, [("location", location), NO_STORE, ("content-length", "0")], body)


def add_sso_routes(router: Router, sso: SsoProviders) -> None:
    """Serve the redirect endpoints and the callback."""

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
            login = await sso.finish(params)
        except SsoError as exc:
            return html_page(exc.status, "Login failed", f"<p>{html.escape(exc.message)}</p>")
        link = html.escape(login.client_url, quote=True)
        host = html.escape(login.client_host)
        return html_page(
            200,
            f"Continue to {login.client_host}?",
            f"<p>You are logging in as <b>{html.escape(login.user_id)}</b>.</p>\n"
            f"<p>Continuing gives <b>{host}</b> access to your account. Only go on if you"
            " started this login yourself, from a client you trust.</p>\n"
            f'<p><a href="{link}">Continue to {host}</a></p>',
        )

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/login/sso/redirect", redirect)
        router.add("GET", f"{prefix}/login/sso/redirect/{{idpId}}", redirect)
    router.add("GET", CALLBACK_PATH, callback)
