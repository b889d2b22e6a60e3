"""A remote server our federation_sender worker backs off from, for the
tests that wake the worker before its backoff is over: the remote joins a
room of ours, goes down while we send, and must get what it missed once
the worker is woken."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import trio
from _client_api import V3, auth
from _deployment import Deployment

from ranvier.config import Config
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

# An hour: a test that passes has not waited for it.
RETRY_SECONDS = 3600


def retry_interval_ms(deployment: Deployment, destination: str) -> int | None:
    """The backoff stored for ``destination``, if any."""
    with closing(sqlite3.connect(deployment.database)) as conn:
        row = conn.execute(
            "SELECT retry_interval_ms FROM destinations WHERE destination = ?", (destination,)
        ).fetchone()
    return None if row is None else int(row[0])


async def room_with_remote_member(
    deployment: Deployment,
    http: httpx.AsyncClient,
    creator: dict[str, str],
    remote_directory: Path,
    remote_config: Config,
    *,
    resynced: bool,
) -> tuple[str, str]:
    """A public room ``creator`` makes, joined by bob of the remote, which
    is then down again: (room ID, bob's user ID). With ``resynced`` the
    remote holds the room's full state before it stops, so that it has
    nothing to ask of us when it starts again."""
    created = await http.post(
        f"{V3}/createRoom", json={"preset": "public_chat"}, headers=auth(creator)
    )
    assert created.status_code == 200, created.text
    room_id: str = created.json()["room_id"]
    async with open_test_homeserver(remote_directory, config=remote_config) as remote:
        bob = await remote.register_user("bob")
        await remote.server.join_room(bob.user_id, room_id, [deployment.server_name])
        if resynced:
            with trio.fail_after(30):
                await remote.server.wait_for_full_state(room_id)
    return room_id, bob.user_id


async def _stored_backoff_once(
    deployment: Deployment, destination: str, done: Callable[[int | None], bool]
) -> int | None:
    # The sender writes its backoff after the attempt that set or cleared
    # it, so a test that saw the attempt's effect polls for the write.
    for _ in range(600):
        interval = retry_interval_ms(deployment, destination)
        if done(interval):
            break
        await trio.sleep(0.05)
    return retry_interval_ms(deployment, destination)


async def backed_off_ms(deployment: Deployment, destination: str) -> int:
    """The backoff the worker stores once it fails to deliver to ``destination``."""
    interval = await _stored_backoff_once(deployment, destination, lambda ms: ms is not None)
    assert interval is not None, "the worker never failed to deliver"
    return interval


async def backoff_cleared(deployment: Deployment, destination: str) -> None:
    """Until the stored backoff of ``destination`` is gone; fails if it stays."""
    interval = await _stored_backoff_once(deployment, destination, lambda ms: ms is None)
    assert interval is None, f"the backoff of {destination} is still stored ({interval} ms)"


async def wait_delivered(remote: TestHomeserver, event_id: str) -> None:
    """Until the remote holds ``event_id``; fails if it never does."""
    for _ in range(600):
        if await remote.server.storage.get_events([event_id]):
            break
        await trio.sleep(0.05)
    assert list(await remote.server.storage.get_events([event_id])) == [event_id]
