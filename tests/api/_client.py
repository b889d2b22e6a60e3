"""A client of a test homeserver's client API, and the one-server set-ups
several API tests share."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
import trio.testing

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

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

    async def log_in(self, user: str, password: str, **extra: Any) -> TestUser:
        """A password login of ``user`` (a localpart or user ID); ``extra``
        goes into the body (``device_id``, ``initial_device_display_name``)."""
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            **extra,
        }
        answer = await self.ok(None, "POST", "/login", body)
        return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])

    async def create_room(self, user: TestUser, **body: Any) -> str:
        answer = await self.ok(user, "POST", "/createRoom", body)
        room_id: str = answer["room_id"]
        return room_id

    async def pages(
        self,
        user: TestUser,
        room_id: str,
        token: str | None,
        *,
        limit: int,
        direction: str = "b",
    ) -> list[list[dict[str, Any]]]:
        """The chunks ``/messages`` answers paging from ``token`` (the
        room's end or start, for None) in ``direction`` until a page has no
        ``end``."""
        pages = []
        for _ in range(100):
            params: dict[str, Any] = {"dir": direction, "limit": limit}
            if token is not None:
                params["from"] = token
            page = await self.ok(user, "GET", f"/rooms/{q(room_id)}/messages", params=params)
            pages.append(page["chunk"])
            if "end" not in page:
                return pages
            token = page["end"]
        raise AssertionError(f"paging {room_id} never came to an end")

    async def state(self, user: TestUser, room_id: str) -> dict[tuple[str, str], Any]:
        events = await self.ok(user, "GET", f"/rooms/{q(room_id)}/state")
        return {(event["type"], event["state_key"]): event for event in events}


@dataclass
class OneServer:
    """A server, its client and two of its users."""

    hs: TestHomeserver
    client: Client
    alice: TestUser
    bob: TestUser

    async def sync(self, user: TestUser, **params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.client.ok(user, "GET", "/sync", params=params)
        return answer

    async def woken_sync(
        self,
        user: TestUser,
        since: str,
        *,
        quiet: Callable[[], Awaitable[object]],
        wake: Callable[[], Awaitable[object]],
    ) -> dict[str, Any]:
        """The answer to ``user``'s long-poll from ``since``, checked to sleep
        on through what ``quiet`` does and answered once ``wake`` has acted."""
        answers: list[dict[str, Any]] = []

        async def poll() -> None:
            answers.append(await self.sync(user, since=since, timeout=60_000))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                while self.hs.server.stream_notifier.waiting == 0:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                await quiet()
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert answers == []
                await wake()
        (answer,) = answers
        return answer


@dataclass
class SharedRoom(OneServer):
    """Alice's public room that Bob has joined, and Carol, who has not."""

    carol: TestUser
    room_id: str


@dataclass
class WithAdmin(OneServer):
    """Alice and Bob, and an admin of the server."""

    admin: TestUser


@asynccontextmanager
async def open_with_admin(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    """A :class:`WithAdmin` on a server under ``tmp_path``."""
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        yield WithAdmin(
            hs,
            Client(hs, http),
            await hs.register_user("alice"),
            await hs.register_user("bob"),
            await hs.register_user("admin", admin=True),
        )


_Room = TypeVar("_Room", bound=SharedRoom)


@asynccontextmanager
async def open_shared_room(
    tmp_path: Path, env_type: type[_Room], *, name: str | None = None
) -> AsyncIterator[_Room]:
    """A :class:`SharedRoom` (of ``env_type``, which may add helpers; named
    ``name`` when given) on a server under ``tmp_path``, its client allowing
    long-polls of up to 30 s."""
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        carol = await hs.register_user("carol")
        named = {} if name is None else {"name": name}
        room_id = await client.create_room(alice, preset="public_chat", **named)
        await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        yield env_type(hs, client, alice, bob, carol, room_id)
