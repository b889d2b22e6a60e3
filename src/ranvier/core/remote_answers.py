"""Asking another server for keys or devices on behalf of a local request.

A client's key query or claim waits on other servers, each within the time
the request allows; a server that fails or is too slow is left out of the
answer (``failures``), never a reason to fail the whole request. So every
such call gives either the remote's answer or None, and says in the log why
it gave None.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

from ranvier.errors import MatrixError

__all__ = ["answer_within"]

_log: Final = logging.getLogger(__name__)
_T = TypeVar("_T")


async def answer_within(
    call: Callable[[], Awaitable[_T]], timeout_s: float, what: str
) -> _T | None:
    """``call()``'s answer, or None when it fails (an error answer, a
    connection or TLS failure, a malformed answer) or takes longer than
    ``timeout_s``; ``what`` names what was asked for in the log line."""
    try:
        with trio.fail_after(timeout_s):
            return await call()
    except (MatrixError, OSError, trio.TooSlowError, ValueError) as exc:
        _log.info("%s not fetched: %s", what, exc)
        return None
