"""Device display names between ranvier and a real Synapse: with
``[federation] allow_device_name_lookup_over_federation`` on, a Synapse
user sharing a room sees the names of ranvier's users' devices (Synapse
reads them from ``GET /user/devices`` and ``m.device_list_update``), a
rename included; off, Synapse is never told them.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from ranvier.config import Config
from ranvier.core.devices import Devices
from ranvier.server import HomeServer

from ._checks import device_keys, eventually, localpart
from ._synapse import SynapseProcess, SynapseUser

NAME = "Bob's phone"
RENAMED = "Bob's work laptop"


@pytest.fixture(params=[True, False], ids=["shared", "withheld"])
def ranvier_config(ranvier_config: Config, request: pytest.FixtureRequest) -> Config:
    federation = msgspec.structs.replace(
        ranvier_config.federation, allow_device_name_lookup_over_federation=request.param
    )
    return msgspec.structs.replace(ranvier_config, federation=federation)


async def _shown(zed: SynapseUser, user_id: str, device_id: str) -> dict[str, Any]:
    asked = await zed.request(
        "POST", "/_matrix/client/v3/keys/query", body={"device_keys": {user_id: []}}
    )
    shown: dict[str, Any] = asked["device_keys"].get(user_id, {}).get(device_id, {})
    return shown


async def test_synapse_users_see_ranvier_device_names_only_when_shared(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    shared = ranvier.config.federation.allow_device_name_lookup_over_federation
    zed = await synapse.register(synapse_http, localpart("zed"))
    room_id = await zed.create_room(preset="public_chat", name="Names, on Synapse")
    bob = await ranvier.accounts.register(localpart("bob"), None, device_display_name=NAME)
    assert bob.device_id is not None
    keys = device_keys(bob.user_id, bob.device_id)[0]
    await ranvier.e2e_keys.upload(bob.user_id, bob.device_id, {"device_keys": keys})
    await ranvier.join_room(bob.user_id, room_id, [synapse.server_name])

    async def followed() -> bool:
        shown = await _shown(zed, bob.user_id, bob.device_id)
        return shown.get("keys") == keys["keys"]

    # Synapse follows Bob's list from his join: fetched with /user/devices.
    await eventually(followed, "Bob's keys at Synapse")
    shown = await _shown(zed, bob.user_id, bob.device_id)
    assert shown.get("unsigned", {}).get("device_display_name") == (NAME if shared else None)

    since = (await zed.request("GET", "/_matrix/client/v3/sync", params={"timeout": "0"}))[
        "next_batch"
    ]
    devices = Devices(
        store=ranvier.storage.client_data,
        accounts=ranvier.accounts,
        on_renamed=ranvier.e2e_keys.device_renamed,
    )
    await devices.rename(bob.user_id, bob.device_id, RENAMED)
    changed: list[str] = []

    async def listed() -> bool:
        synced = await zed.request(
            "GET", "/_matrix/client/v3/sync", params={"timeout": "0", "since": since}
        )
        changed.extend(synced.get("device_lists", {}).get("changed", []))
        return bob.user_id in changed

    # The rename's m.device_list_update has been taken in by Synapse.
    await eventually(listed, "Bob's rename in Zed's device_lists.changed")
    if shared:

        async def renamed() -> bool:
            shown = await _shown(zed, bob.user_id, bob.device_id)
            return bool(shown.get("unsigned", {}).get("device_display_name") == RENAMED)

        await eventually(renamed, "Bob's new device name at Synapse")
    else:
        shown = await _shown(zed, bob.user_id, bob.device_id)
        assert shown.get("keys") == keys["keys"]
        assert "device_display_name" not in shown.get("unsigned", {})
