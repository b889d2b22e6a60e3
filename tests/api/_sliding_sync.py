"""Calling the sliding sync endpoint as a client does, for the sliding sync
tests here and in tests/replication."""

from __future__ import annotations

from typing import Any

import httpx
from _client import SharedRoom

from ranvier.api.sliding_sync import SLIDING_SYNC_PATH
from ranvier.testing.homeserver import TestUser


async def slide_call(
    http: httpx.AsyncClient,
    user: TestUser,
    body: dict[str, Any],
    *,
    pos: str | None = None,
    timeout_ms: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """``(status, answer)`` of one request."""
    params = {}
    if pos is not None:
        params["pos"] = pos
    if timeout_ms is not None:
        params["timeout"] = str(timeout_ms)
    response = await http.post(
        SLIDING_SYNC_PATH,
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {user.access_token}"},
    )
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


async def slide(
    http: httpx.AsyncClient,
    user: TestUser,
    body: dict[str, Any],
    *,
    pos: str | None = None,
    timeout_ms: int | None = None,
) -> dict[str, Any]:
    """The answer of one request, which must succeed."""
    status, answer = await slide_call(http, user, body, pos=pos, timeout_ms=timeout_ms)
    assert status == 200, answer
    assert isinstance(answer["pos"], str)
    return answer


def all_rooms(
    *,
    ranges: list[list[int]] | None = None,
    timeline_limit: int = 5,
    required_state: list[list[str]] | None = None,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A list config as Element X sends one."""
    config: dict[str, Any] = {
        "timeline_limit": timeline_limit,
        "required_state": required_state if required_state is not None else [],
    }
    if ranges is not None:
        config["ranges"] = ranges
    if filters is not None:
        config["filters"] = filters
    return config


def bodies(room: dict[str, Any]) -> list[str]:
    """The message bodies of a room's timeline, oldest first."""
    return [
        event["content"]["body"]
        for event in room.get("timeline", [])
        if event["type"] == "m.room.message"
    ]


async def say(env: SharedRoom, user: TestUser, room_id: str, *texts: str) -> None:
    """``user`` sends each of ``texts`` to ``room_id``, in order."""
    for text in texts:
        await env.hs.server.send_event(
            user.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": text}
        )
