"""Locks and suspensions across a client_reader worker: set on the main
process, they reach the tokens the worker had cached, and set through the
worker, they are written by the main process and reach its cached tokens."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
import trio
from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"
_MODERATION = "/_matrix/client/v1/admin"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def _until_errcode(client: httpx.AsyncClient, errcode: str | None) -> None:
    """Wait for the process ``client`` calls to hear of the change: the
    invalidation travels on the replication stream."""
    for _ in range(500):
        answer = await client.get(f"{_V3}/account/whoami")
        if answer.json().get("errcode") == errcode:
            return
        await trio.sleep(0.02)
    raise AssertionError(f"whoami never answered {errcode}: {answer.text}")


async def test_a_lock_set_on_the_main_process_holds_on_the_worker(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        root = await both.main.register_user("root", admin=True)
        main = TestHomeserver(both.main.server)
        async with main.client(root) as root_on_main:
            # Alice's token is looked up, and cached, on the worker first.
            assert (await both.on_worker.get(f"{_V3}/account/whoami")).status_code == 200
            locked = await root_on_main.put(
                f"{_MODERATION}/lock/{_q(both.alice.user_id)}", json={"locked": True}
            )
            assert locked.json() == {"locked": True}, locked.text
            await _until_errcode(both.on_worker, "M_USER_LOCKED")
            refused = await both.on_worker.get(f"{_V3}/sync")
            assert refused.status_code == 401
            assert refused.json()["soft_logout"] is True

            unlocked = await root_on_main.put(
                f"{_MODERATION}/lock/{_q(both.alice.user_id)}", json={"locked": False}
            )
            assert unlocked.status_code == 200, unlocked.text
            await _until_errcode(both.on_worker, None)
            assert (await both.on_worker.get(f"{_V3}/sync")).status_code == 200


async def test_moderation_set_through_the_worker_holds_on_the_main_process(
    tmp_path: Path,
) -> None:
    async with alice_on_both(tmp_path) as both:
        root = await both.main.register_user("root", admin=True)
        async with TestHomeserver(both.worker).client(root) as root_on_worker:
            assert (await both.on_main.get(f"{_V3}/account/whoami")).status_code == 200
            suspended = await root_on_worker.put(
                f"{_MODERATION}/suspend/{_q(both.alice.user_id)}", json={"suspended": True}
            )
            assert suspended.json() == {"suspended": True}, suspended.text
            for _ in range(500):
                made = await both.on_main.post(f"{_V3}/createRoom", json={})
                if made.status_code == 403:
                    break
                await trio.sleep(0.02)
            assert made.json()["errcode"] == "M_USER_SUSPENDED", made.text
            shown = await root_on_worker.get(f"{_MODERATION}/suspend/{_q(both.alice.user_id)}")
            assert shown.json() == {"suspended": True}

            locked = await root_on_worker.put(
                f"{_MODERATION}/lock/{_q(both.alice.user_id)}", json={"locked": True}
            )
            assert locked.status_code == 200, locked.text
            await _until_errcode(both.on_main, "M_USER_LOCKED")
            # Logging out stays open to her, through either process.
            assert (await both.on_worker.post(f"{_V3}/logout", json={})).status_code == 200
