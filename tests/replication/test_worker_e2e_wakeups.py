"""A main process and a client_reader as real processes: a /sync long-poll
on the worker wakes for a to-device message and for a key change that the
main process handled, carried by the replication stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from _client_api import V3, auth, device_keys, main_and_client_reader, share_a_room, sync

# Far beyond what the test waits for a wake-up: a poll that only ended at
# its timeout fails the test.
_POLL_MS = 120_000
_WAIT_SECONDS = 60


async def test_a_long_poll_on_a_worker_wakes_for_messages_and_keys_the_main_process_took(
    tmp_path: Path,
) -> None:
    async with main_and_client_reader(tmp_path) as (worker, main):
        await _run(worker, main)


async def _run(worker: httpx.AsyncClient, main: httpx.AsyncClient) -> None:
    alice, bob, _ = await share_a_room(worker, main)
    since = (await sync(worker, alice, None))["next_batch"]
    # Settle past Bob's join, which the worker may hear of a little later.
    since = (await sync(worker, alice, since))["next_batch"]

    # A to-device message Bob sends through the main process.
    woken: list[dict[str, Any]] = []

    async def long_poll() -> None:
        woken.append(await sync(worker, alice, since, timeout_ms=_POLL_MS))

    message = {"messages": {alice["user_id"]: {alice["device_id"]: {"hello": "alice"}}}}
    with trio.fail_after(_WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            sent = await main.put(f"{V3}/sendToDevice/m.test/t1", json=message, headers=auth(bob))
            assert sent.status_code == 200, sent.text
    assert woken[0]["to_device"]["events"] == [
        {"type": "m.test", "sender": bob["user_id"], "content": {"hello": "alice"}}
    ]
    since = woken[0]["next_batch"]

    # Bob's new keys, uploaded through the main process: Alice shares a room.
    woken.clear()
    upload = {"device_keys": device_keys(bob)}
    with trio.fail_after(_WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            uploaded = await main.post(f"{V3}/keys/upload", json=upload, headers=auth(bob))
            assert uploaded.status_code == 200, uploaded.text
    assert woken[0]["device_lists"]["changed"] == [bob["user_id"]]
    assert woken[0]["to_device"]["events"] == []
