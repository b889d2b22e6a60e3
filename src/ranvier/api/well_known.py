"""The ``/.well-known/matrix/*`` files, for a server that serves them itself.

The spec has clients and servers fetch these from the server name's own
host (``https://example.org/.well-known/matrix/client``), which is often a
web server of the domain, not the homeserver. An operator whose homeserver
answers on that host (or who proxies the paths to it) configures them in
``[well_known]`` (:class:`ranvier.config.WellKnownConfig`); until then each
answers 404 ``M_NOT_FOUND``, the spec's "nothing to say", so a client or a
server falls back to its defaults rather than being sent somewhere wrong.

The client files are served on client listeners (with the CORS headers the
spec asks of ``/.well-known/matrix/client``, which every client answer
carries); the server file on those and on federation listeners, as the
host that answers it may be either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.config import WellKnownConfig
from ranvier.errors import MatrixError
from ranvier.web import JsonResponse, Request, Router

__all__ = ["add_client_well_known_routes", "add_server_well_known_route"]

_PREFIX: Final = "/.well-known/matrix"
#: The answers change only with the configuration; an hour is what
#: clients and servers would otherwise cache a missing file for at most.
_CACHE: Final = (("Cache-Control", "max-age=3600"),)


def _nothing_configured(name: str) -> MatrixError:
    return MatrixError(
        f"this server has no /.well-known/matrix/{name} configured",
        errcode="M_NOT_FOUND",
        http_status=404,
    )


def _answer(body: Mapping[str, Any]) -> JsonResponse:
    return JsonResponse(body, headers=_CACHE)


def add_client_well_known_routes(router: Router, config: WellKnownConfig) -> None:
    """Serve ``/.well-known/matrix/client`` and ``/support``, which need no access token."""

    async def client(request: Request) -> JsonResponse:
        if config.client_base_url is None:
            raise _nothing_configured("client")
        body: dict[str, Any] = {**config.client_extra}
        body["m.homeserver"] = {"base_url": config.client_base_url}
        if config.identity_server_base_url is not None:
            body["m.identity_server"] = {"base_url": config.identity_server_base_url}
        return _answer(body)

    async def support(request: Request) -> JsonResponse:
        if not config.support_contacts and config.support_page is None:
            raise _nothing_configured("support")
        body: dict[str, Any] = {}
        if config.support_contacts:
            body["contacts"] = [
                {
                    name: value
                    for name, value in (
                        ("role", contact.role),
                        ("matrix_id", contact.matrix_id),
                        ("email_address", contact.email_address),
                    )
                    if value is not None
                }
                for contact in config.support_contacts
            ]
        if config.support_page is not None:
            body["support_page"] = config.support_page
        return _answer(body)

    router.add("GET", f"{_PREFIX}/client", client)
    router.add("GET", f"{_PREFIX}/support", support)


def add_server_well_known_route(router: Router, config: WellKnownConfig) -> None:
    """Serve ``/.well-known/matrix/server``, delegating federation to ``config.server``."""

    async def server(request: Request) -> JsonResponse:
        if config.server is None:
            raise _nothing_configured("server")
        return _answer({"m.server": config.server})

    router.add("GET", f"{_PREFIX}/server", server)
