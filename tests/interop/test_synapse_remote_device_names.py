"""Device display names from a real Synapse that shares them
(``allow_device_name_lookup_over_federation``): ranvier keeps them with
the device list of a Synapse user it shares a room with, read from
Synapse's ``GET /user/devices`` and its ``m.device_list_update`` on a
rename, and shows them in its users' ``/keys/query`` answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ranvier.server import HomeServer
from ranvier.testing.network import Pki

from ._checks import device_keys, eventually, localpart
from ._synapse import SynapseProcess, start_synapse, synapse_python

NAME = "Zed's phone"
RENAMED = "Zed's work laptop"
LAST = "Zed's old laptop"


@pytest.fixture
async def naming_synapse(tmp_path: Path, interop_pki: Pki) -> AsyncIterator[SynapseProcess]:
    """A Synapse of this test's own that shares its devices' names."""
    started = await trio.to_thread.run_sync(
        lambda: start_synapse(
            synapse_python(),
            tmp_path / "synapse",
            interop_pki,
            cache_factor=0.5,
            extra_config={"allow_device_name_lookup_over_federation": True},
        )
    )
    try:
        yield started
    finally:
        await trio.to_thread.run_sync(started.stop)


async def test_ranvier_shows_the_device_names_synapse_shares(
    naming_synapse: SynapseProcess, ranvier: HomeServer
) -> None:
    synapse = naming_synapse
    async with httpx.AsyncClient(verify=synapse.client_context(), timeout=30) as http:
        zed = await synapse.register(http, localpart("zed"))
        device_id = (await zed.request("GET", "/_matrix/client/v3/account/whoami"))["device_id"]
        devices = f"/_matrix/client/v3/devices/{device_id}"
        await zed.request("PUT", devices, body={"display_name": NAME})
        keys = device_keys(zed.user_id, device_id)[0]
        await zed.request("POST", "/_matrix/client/v3/keys/upload", body={"device_keys": keys})
        room_id = await zed.create_room(preset="public_chat", name="Names, from Synapse")
        bob = await ranvier.accounts.register(localpart("bob"), None)
        await ranvier.join_room(bob.user_id, room_id, [synapse.server_name])

        async def shown() -> dict[str, Any]:
            asked = await ranvier.e2e_keys.query(bob.user_id, {"device_keys": {zed.user_id: []}})
            found: dict[str, Any] = asked["device_keys"].get(zed.user_id, {}).get(device_id, {})
            return found

        async def kept_names() -> dict[str, str] | None:
            found = await ranvier.storage.remote_device_lists.entry(zed.user_id)
            return None if found is None or found[1] else found[0].display_names

        async def named_and_kept() -> bool:
            name = (await shown()).get("unsigned", {}).get("device_display_name")
            return name == NAME and await kept_names() == {device_id: NAME}

        # Fetched with GET /user/devices at a query once ranvier holds Zed's
        # membership (until then Synapse is asked each time), and kept.
        await eventually(named_and_kept, "Zed's device name kept at ranvier")
        assert (await shown())["keys"] == keys["keys"]

        # The first update Synapse sends here links to no update ranvier
        # heard of (its prev_id), so the kept list goes stale and is fetched
        # again at the next query, with the new name.
        await zed.request("PUT", devices, body={"display_name": RENAMED})

        async def renamed() -> bool:
            name = (await shown()).get("unsigned", {}).get("device_display_name")
            return name == RENAMED and await kept_names() == {device_id: RENAMED}

        await eventually(renamed, "Zed's rename kept at ranvier")

        # The next follows it, and is applied to the kept list as it comes,
        # with no query.
        await zed.request("PUT", devices, body={"display_name": LAST})

        async def renamed_again() -> bool:
            return await kept_names() == {device_id: LAST}

        await eventually(renamed_again, "Zed's second rename kept at ranvier")
        assert (await shown())["unsigned"] == {"device_display_name": LAST}
