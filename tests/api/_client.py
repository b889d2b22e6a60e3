"""A client of a test homeserver's client API, for the rooms and directory tests."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from ranvier.testing.homeserver import TestHomeserver, TestUser

V3 = "/_matrix/client/v3"


def q(segment: str) -> str:
    """A path segment percent-encoded: room IDs, aliases, event IDs."""
    return urllib.parse.quote(segment, safe="")


@dataclass
class Client:
    """One server's client API, called as any of its users (or none)."""

    hs: TestHomeserver
    http: httpx.AsyncClient

    async def call(
        self,
        user: TestUser | None,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        params: Any = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        """``(status, decoded JSON)`` of one request to ``V3 + path``."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            headers["Authorization"] = f"Bearer {user.access_token}"
        content = raw
        if body is not None:
            content = httpx.Request("POST", "/", json=body).content
        response = await self.http.request(
            method, V3 + path, content=content, params=params, headers=headers
        )
        return response.status_code, response.json()

    async def ok(
        self, user: TestUser | None, method: str, path: str, body: Any = None, **kw: Any
    ) -> Any:
        status, answer = await self.call(user, method, path, body, **kw)
        assert status == 200, (method, path, status, answer)
        return answer

    async def refused(
        self,
        user: TestUser | None,
        method: str,
        path: str,
        body: Any = None,
        *,
        status: int,
        errcode: str,
        **kw: Any,
    ) -> None:
        got, answer = await self.call(user, method, path, body, **kw)
        assert (got, answer.get("errcode")) == (status, errcode), (method, path, answer)
        assert isinstance(answer.get("error"), str)
        assert answer["error"]

    async def create_room(self, user: TestUser, **body: Any) -> str:
        answer = await self.ok(user, "POST", "/createRoom", body)
        room_id: str = answer["room_id"]
        return room_id

    async def state(self, user: TestUser, room_id: str) -> dict[tuple[str, str], Any]:
        events = await self.ok(user, "GET", f"/rooms/{q(room_id)}/state")
        return {(event["type"], event["state_key"]): event for event in events}
