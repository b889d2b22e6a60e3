"""Calls to the admin API (``/_synapse/admin/...``) of a test homeserver,
as an admin, as another user or with no token."""

from __future__ import annotations

from typing import Any

import httpx

from ranvier.testing.homeserver import TestUser

ADMIN = "/_synapse/admin"


async def admin_call(
    http: httpx.AsyncClient,
    user: TestUser | None,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: Any = None,
) -> tuple[int, Any]:
    """``(status, decoded JSON)`` of one request to ``ADMIN + path``."""
    headers = {} if user is None else {"Authorization": f"Bearer {user.access_token}"}
    response = await http.request(method, ADMIN + path, json=body, params=params, headers=headers)
    return response.status_code, response.json()


async def admin_ok(
    http: httpx.AsyncClient, user: TestUser, method: str, path: str, body: Any = None, **kw: Any
) -> Any:
    status, answer = await admin_call(http, user, method, path, body, **kw)
    assert status == 200, (method, path, status, answer)
    return answer


async def admin_refused(
    http: httpx.AsyncClient,
    user: TestUser | None,
    method: str,
    path: str,
    body: Any = None,
    *,
    status: int,
    errcode: str,
    **kw: Any,
) -> str:
    """Checks the refusal; returns its message."""
    got, answer = await admin_call(http, user, method, path, body, **kw)
    assert (got, answer.get("errcode")) == (status, errcode), (method, path, got, answer)
    message = answer.get("error")
    assert isinstance(message, str)
    assert message
    return message
