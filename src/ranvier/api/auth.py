"""Access tokens on client requests: who is asking.

A handler that acts for a user starts with ``requester = await
auth.get_user(request)``; a request without a valid token never gets past
that line. The token comes from ``Authorization: Bearer <token>``, or from
the ``access_token`` query parameter, which the spec deprecates but still
allows.
"""

from __future__ import annotations

from typing import Final, Protocol

from ranvier.core.accounts import Requester
from ranvier.errors import MatrixError
from ranvier.web import Request

__all__ = ["Auth", "RequesterSource", "access_token_of"]

_BEARER: Final = "bearer "


class RequesterSource(Protocol):
    """Whose an access token is (:class:`ranvier.core.accounts.Accounts`)."""

    async def get_requester(self, access_token: str) -> Requester | None: ...


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

    def __init__(self, accounts: RequesterSource) -> None:
        self._accounts = accounts

    async def get_user(self, request: Request) -> Requester:
        """The user and device the request's access token belongs to.

        Raises 401 ``M_MISSING_TOKEN`` when there is no token and 401
        ``M_UNKNOWN_TOKEN`` (``soft_logout`` false: the client must log in
        afresh) when it belongs to nobody.
        """
        token = access_token_of(request)
        if token is None:
            raise MatrixError(
                "the request has no access token", errcode="M_MISSING_TOKEN", http_status=401
            )
        requester = await self._accounts.get_requester(token)
        if requester is None:
            raise MatrixError(
                "the access token is not known: it was logged out, or never issued",
                errcode="M_UNKNOWN_TOKEN",
                http_status=401,
                soft_logout=False,
            )
        return requester
