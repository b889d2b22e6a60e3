"""Signing outgoing federation requests: an ``httpx`` auth that adds X-Matrix.

The signature covers the request as it goes on the wire: the method, the
URL's path and query exactly as httpx encodes them, and the JSON body as
sent. So the header is computed from the finished ``httpx.Request``, after
httpx has encoded the URL and body, not from the arguments the caller gave.

``destination`` is the server name of the receiver, which after delegation
(``.well-known``, SRV) is not the host connected to; so it is given, not
taken from the URL.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx
import msgspec

from ranvier.protocol.signing import SigningKeyLike
from ranvier.protocol.x_matrix import format_authorization, sign_request

__all__ = ["XMatrixAuth"]


class XMatrixAuth(httpx.Auth):
    """Signs every request as ``origin``, addressed to ``destination``.

    Use it per request (``client.get(url, auth=...)``) or per client. A
    request body must be JSON, as every federation body is; anything else
    raises ValueError, since the receiver could not check its signature.
    """

    requires_request_body = True

    def __init__(self, *, origin: str, destination: str, signing_key: SigningKeyLike) -> None:
        self.origin = origin
        self.destination = destination
        self.signing_key = signing_key

    def authorization_for(self, request: httpx.Request) -> str:
        """The Authorization header value for ``request``."""
        content = None
        if request.content:
            try:
                content = msgspec.json.decode(request.content)
            except msgspec.DecodeError as exc:
                raise ValueError(f"a federation request body must be JSON: {exc}") from None
        authorization = sign_request(
            method=request.method,
            uri=request.url.raw_path.decode("ascii"),
            origin=self.origin,
            destination=self.destination,
            signing_key=self.signing_key,
            content=content,
        )
        return format_authorization(authorization)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx's hook: add the header, send once."""
        request.headers["Authorization"] = self.authorization_for(request)
        yield request
