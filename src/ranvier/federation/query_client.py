"""Asking another server one of its ``/_matrix/federation/v1/query/*``
endpoints, for the clients of :mod:`ranvier.federation.directory` and
:mod:`ranvier.federation.profiles`.

A query is about something of the asked server's own (an alias, a user), so
its 404 means that thing does not exist there and is passed on as
``M_NOT_FOUND``. A query whose endpoint lets the server decline to answer
(``/query/profile`` since v1.12, MSC4170) passes its 403 on as
``M_FORBIDDEN``: the other server chose not to say, which is no fault of
its. Any other failure, or an answer that cannot be used, is the other
server's fault and becomes a 502.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.errors import MatrixError
from ranvier.federation.transport.client import (
    FederationError,
    FederationHttpClient,
    FederationRequestError,
)

__all__ = ["query_server", "unusable_answer"]


async def query_server(
    client: FederationHttpClient,
    server_name: str,
    path: str,
    query: Mapping[str, Any],
    *,
    what: str,
    not_found: str,
    forbidden: str | None = None,
    max_response_bytes: int | None = None,
) -> bytes:
    """The body of ``server_name``'s answer to ``GET path?query``.

    Raises ``M_NOT_FOUND`` (404) saying ``not_found`` when the server has no
    such thing, ``M_FORBIDDEN`` (403) saying ``forbidden`` when it declines
    to answer and ``forbidden`` is given, and :func:`unusable_answer` about
    ``what`` when it fails otherwise.
    """
    try:
        response = await client.request(
            "GET", server_name, path, query=query, max_response_bytes=max_response_bytes
        )
    except FederationRequestError as exc:
        if exc.status == 404:
            raise MatrixError(not_found, errcode="M_NOT_FOUND", http_status=404) from None
        if exc.status == 403 and forbidden is not None:
            raise MatrixError(forbidden, errcode="M_FORBIDDEN", http_status=403) from None
        raise unusable_answer(server_name, what, str(exc)) from None
    except FederationError as exc:
        raise unusable_answer(server_name, what, str(exc)) from None
    return response.body


def unusable_answer(server_name: str, what: str, message: str) -> MatrixError:
    """The 502 for a server that gave no usable ``what`` (``message`` says why)."""
    return MatrixError(
        f"{server_name} gave no usable {what}: {message}", errcode="M_UNKNOWN", http_status=502
    )
