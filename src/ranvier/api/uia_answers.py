"""The HTTP answer of a request behind user-interactive authentication
(:mod:`ranvier.core.uia`): the operation's result once the session's
stages are done (or the first result again, for a retry of a finished
session), else 401 with what is left to do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ranvier.core.accounts import Requester
from ranvier.core.uia import AuthRequired, Operation, UserInteractiveAuth
from ranvier.web import JsonResponse

__all__ = ["answer_after_uia"]


async def answer_after_uia(
    uia: UserInteractiveAuth,
    requester: Requester,
    operation: Operation,
    auth: object,
    *,
    request: Mapping[str, Any],
    perform: Callable[[], Awaitable[dict[str, Any]]],
) -> JsonResponse:
    """``perform``'s answer once ``auth`` proves ``requester``; ``request``
    holds what tells a retry of the same call from another one."""
    try:
        answer = await uia.run(
            requester.user_id,
            requester.token_hash,
            operation,
            auth,
            request=request,
            perform=perform,
        )
    except AuthRequired as required:
        return JsonResponse(required.body, status=401)
    return JsonResponse(answer)
