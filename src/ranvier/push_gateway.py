"""Requests to push gateways: the Push Gateway API's ``POST /_matrix/push/v1/notify``.

A gateway is an ordinary HTTPS service of an app's developer, not a Matrix
server: requests are not signed, and certificates are checked against the
system's CAs (or ``ca_file``). What its answer means for the notification
is :class:`~ranvier.core.push_sender.PushSender`'s to decide; this module
only sorts answers into those three kinds: accepted (with the pushkeys it
rejected), refused for good (4xx but 429), or failed (anything else, to be
tried again).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec

from ranvier.core.push_sender import PushGatewayError, PushRefusedError
from ranvier.outbound_http import LazyHttpClient, capped_body
from ranvier.protocol.untrusted_json import decode_untrusted_json

__all__ = ["HttpPushGateway"]

#: Gateways answer with a small JSON object; anything longer is not one.
_MAX_ANSWER_BYTES: Final = 64 * 1024


class _Answer(msgspec.Struct):
    rejected: list[str] = []


class HttpPushGateway:
    """Sends notifications over HTTPS with one pooled client; close it with :meth:`aclose`."""

    def __init__(self, *, ca_file: Path | None = None, timeout: float = 10.0) -> None:
        self._lazy = LazyHttpClient(timeout=timeout, ca_file=ca_file)

    @property
    def _http(self) -> httpx.AsyncClient:
        return self._lazy.client

    async def aclose(self) -> None:
        await self._lazy.aclose()

    async def notify(self, url: str, notification: Mapping[str, Any]) -> list[str]:
        body = msgspec.json.encode({"notification": notification})
        try:
            async with self._http.stream(
                "POST", url, content=body, headers={"content-type": "application/json"}
            ) as response:
                answer = await capped_body(response, _MAX_ANSWER_BYTES)
                if answer is None:
                    raise PushGatewayError(f"{url} answered with over {_MAX_ANSWER_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise PushGatewayError(f"{url}: {exc!r}") from exc
        status = response.status_code
        if 400 <= status < 500 and status != 429:
            raise PushRefusedError(f"{url} answered {status}")
        if status != 200:
            raise PushGatewayError(f"{url} answered {status}")
        try:
            return decode_untrusted_json(answer, type=_Answer).rejected
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Delivered; only the list of rejected keys is unreadable.
            return []
