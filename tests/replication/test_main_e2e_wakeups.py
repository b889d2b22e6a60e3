"""A main process and a client_reader as real processes: a /sync long-poll
on the main process wakes for a to-device message, account data, a receipt
and a key change written through the worker, and stops taking a token
logged out through it.

The worker's writes run on the main process's storage actor, but only the
worker's handlers know whom they concern; the main process learns it by
reading its own stream positions back after each replicated write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from _client_api import V3, auth, device_keys, main_and_client_reader, share_a_room, sync

# Far beyond what the test waits for a wake-up: a poll that only ended at
# its timeout fails the test.
_POLL_MS = 120_000
_WAIT_SECONDS = 60


async def test_a_long_poll_on_the_main_process_wakes_for_writes_made_through_a_worker(
    tmp_path: Path,
) -> None:
    async with main_and_client_reader(tmp_path) as (worker, main):
        await _run(worker, main)


async def _woken_by(
    main: httpx.AsyncClient,
    user: dict[str, str],
    since: str,
    write: Callable[[], Awaitable[httpx.Response]],
) -> dict[str, Any]:
    """The answer of ``user``'s long-poll on the main process, started
    before ``write`` and required to end well before its timeout.
    """
    woken: list[dict[str, Any]] = []

    async def long_poll() -> None:
        woken.append(await sync(main, user, since, timeout_ms=_POLL_MS))

    with trio.fail_after(_WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            written = await write()
            assert written.status_code == 200, written.text
    return woken[0]


async def _run(worker: httpx.AsyncClient, main: httpx.AsyncClient) -> None:
    alice, bob, room_id = await share_a_room(worker, main)
    sent = await worker.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/m1",
        json={"msgtype": "m.text", "body": "hello"},
        headers=auth(alice),
    )
    assert sent.status_code == 200, sent.text
    event_id = sent.json()["event_id"]
    since = (await sync(main, bob, None))["next_batch"]
    since = (await sync(main, bob, since))["next_batch"]

    # A to-device message Alice sends Bob through the worker.
    message = {"messages": {bob["user_id"]: {bob["device_id"]: {"hello": "bob"}}}}
    woken = await _woken_by(
        main,
        bob,
        since,
        lambda: worker.put(f"{V3}/sendToDevice/m.test/t1", json=message, headers=auth(alice)),
    )
    assert woken["to_device"]["events"] == [
        {"type": "m.test", "sender": alice["user_id"], "content": {"hello": "bob"}}
    ]
    since = woken["next_batch"]

    # Bob's own account data, set through the worker.
    woken = await _woken_by(
        main,
        bob,
        since,
        lambda: worker.put(
            f"{V3}/user/{bob['user_id']}/account_data/m.test.data",
            json={"colour": "green"},
            headers=auth(bob),
        ),
    )
    assert woken["account_data"]["events"] == [
        {"type": "m.test.data", "content": {"colour": "green"}}
    ]
    since = woken["next_batch"]

    # Alice's read receipt in the room they share, sent through the worker.
    woken = await _woken_by(
        main,
        bob,
        since,
        lambda: worker.post(
            f"{V3}/rooms/{room_id}/receipt/m.read/{event_id}", json={}, headers=auth(alice)
        ),
    )
    receipts = woken["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert [receipt["type"] for receipt in receipts] == ["m.receipt"]
    assert alice["user_id"] in receipts[0]["content"][event_id]["m.read"]
    since = woken["next_batch"]

    # Alice's new keys, uploaded through the worker: Bob shares her room.
    upload = {"device_keys": device_keys(alice)}
    woken = await _woken_by(
        main,
        bob,
        since,
        lambda: worker.post(f"{V3}/keys/upload", json=upload, headers=auth(alice)),
    )
    assert woken["device_lists"]["changed"] == [alice["user_id"]]

    # Bob logs out through the worker: the main process, which has his
    # token cached from the polls above, no longer takes it.
    logged_out = await worker.post(f"{V3}/logout", json={}, headers=auth(bob))
    assert logged_out.status_code == 200, logged_out.text
    refused = await main.get(f"{V3}/account/whoami", headers=auth(bob))
    assert refused.status_code == 401, refused.text
    assert refused.json()["errcode"] == "M_UNKNOWN_TOKEN"
