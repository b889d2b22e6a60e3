"""E2eKeys's questions to other servers, with a stand-in for them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from ranvier.core.e2e_keys import E2eKeys
from ranvier.core.notifier import StreamNotifier
from ranvier.storage import Storage

HERE = "here.example"


class _Servers:
    """``fast`` answers once ``slow`` has been asked; ``slow`` never does."""

    def __init__(self) -> None:
        self.slow_asked = trio.Event()

    async def query_keys(self, server: str, device_keys: Mapping[str, list[str]]) -> dict[str, Any]:
        if server == "slow.example":
            self.slow_asked.set()
            await trio.sleep_forever()
        await self.slow_asked.wait()
        return {
            "device_keys": {
                user: {
                    "DEV": {"user_id": user, "device_id": "DEV", "from": server},
                    # Named for another device, or another user: left out.
                    "OTHER": {"user_id": user, "device_id": "DEV"},
                    "THIRD": {"user_id": "@someone:else.example", "device_id": "THIRD"},
                }
                for user in device_keys
            },
            "master_keys": {user: {"user_id": "@someone:else.example"} for user in device_keys},
        }

    async def claim_keys(
        self, server: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        if server == "slow.example":
            self.slow_asked.set()
            await trio.sleep_forever()
        await self.slow_asked.wait()
        return {
            "one_time_keys": {
                user: {"DEV": {"k:1": "key"}, "UNASKED": {"k:2": "key"}} for user in one_time_keys
            }
        }


class _Nobody:
    async def joined_rooms(self, user_id: str) -> list[str]:
        return []

    async def users_sharing_a_room(self, user_id: str, candidates: object) -> set[str]:
        return set()

    async def get_current_membership_event_ids(self, user_id: str) -> dict[str, str]:
        return {}


async def _refuse(user_id: str, auth: object) -> None:
    raise AssertionError("no password is asked here")


async def test_other_servers_are_asked_at_once_each_within_the_timeout(storage: Storage) -> None:
    nobody = _Nobody()
    keys = E2eKeys(
        server_name=HERE,
        store=storage.e2e_keys,
        notifier=StreamNotifier(),
        rooms=nobody,
        shared=nobody,
        memberships=nobody,
        reauthenticate=_refuse,
        remote=_Servers(),
    )
    # Asked one after the other, the fast server (first by name) would wait
    # for the slow one to be asked, and time out.
    with trio.fail_after(5):
        found = await keys.query(
            "@me:here.example",
            {"device_keys": {"@a:fast.example": [], "@b:slow.example": []}, "timeout": 200},
        )
    assert found["device_keys"] == {
        "@a:fast.example": {
            "DEV": {"user_id": "@a:fast.example", "device_id": "DEV", "from": "fast.example"}
        }
    }
    assert found["master_keys"] == {}
    assert set(found["failures"]) == {"slow.example"}
    keys.remote = _Servers()
    with trio.fail_after(5):
        claimed = await keys.claim(
            {
                "one_time_keys": {"@a:fast.example": {"DEV": "k"}, "@b:slow.example": {"D": "k"}},
                "timeout": 200,
            }
        )
    assert claimed["one_time_keys"] == {"@a:fast.example": {"DEV": {"k:1": "key"}}}
    assert set(claimed["failures"]) == {"slow.example"}
