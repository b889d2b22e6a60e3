"""matrix-nio from Trio tests: nio runs on asyncio (with aiohttp), and
trio-asyncio runs its coroutines inside the test's Trio loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import nio  # type: ignore[import-untyped]
import pytest
import trio_asyncio  # type: ignore[import-untyped]

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def aio(call: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Await an asyncio coroutine function from Trio."""
    result: _T = await trio_asyncio.aio_as_trio(call)(*args, **kwargs)
    return result


async def sync(client: nio.AsyncClient, *, timeout_ms: int = 0) -> nio.SyncResponse:
    """One ``/sync`` of ``client``, which must have succeeded."""
    response = await aio(client.sync, timeout=timeout_ms)
    assert isinstance(response, nio.SyncResponse), response
    return response


def invalid_responses(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What nio logged of responses that broke the spec's schemas (it then
    hands back an error response, or drops the part it could not read).
    """
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("nio") and "validating" in record.getMessage()
    ]
