"""core.remote_device_lists on real storage: the display names another
server gives its users' devices, in ``GET /user/devices`` and in
``m.device_list_update``, are kept with the list and shown in key query
answers as ``unsigned.device_display_name``; a name too long, or not a
string, is not kept, and the device is kept without one."""

from __future__ import annotations

from typing import Any

from ranvier.core.remote_device_lists import (
    MAX_DEVICE_NAME_LENGTH,
    RemoteDeviceLists,
    cached_answer,
)
from ranvier.storage import Storage

CAROL = "@carol:remote.example"
LONGEST = "n" * MAX_DEVICE_NAME_LENGTH
TOO_LONG = "n" * (MAX_DEVICE_NAME_LENGTH + 1)


def _keys(device_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": CAROL,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{device_id}": "key" + device_id},
        "signatures": {CAROL: {f"ed25519:{device_id}": "sig"}},
        **extra,
    }


class _Remote:
    """Carol's server's ``GET /user/devices`` answer."""

    async def user_devices(self, server: str, user_id: str) -> dict[str, Any]:
        assert (server, user_id) == ("remote.example", CAROL)
        return {
            "user_id": CAROL,
            "stream_id": 5,
            "devices": [
                # A name in the keys' unsigned part is not the device's name.
                {
                    "device_id": "PHONE",
                    "device_display_name": "Carol's phone",
                    "keys": _keys("PHONE", unsigned={"device_display_name": TOO_LONG, "x": 1}),
                },
                {"device_id": "LONGEST", "device_display_name": LONGEST, "keys": _keys("LONGEST")},
                {"device_id": "LONG", "device_display_name": TOO_LONG, "keys": _keys("LONG")},
                {"device_id": "ODD", "device_display_name": 7, "keys": _keys("ODD")},
                {"device_id": "NONE", "keys": _keys("NONE")},
            ],
        }


def _shown(answer: dict[str, Any]) -> dict[str, Any]:
    """Each device's unsigned part in a key query answer, None when it has none."""
    return {
        device_id: keys.get("unsigned") for device_id, keys in answer["device_keys"][CAROL].items()
    }


async def test_names_from_a_fetched_list_and_updates_are_kept_and_shown(
    storage: Storage,
) -> None:
    lists = RemoteDeviceLists(
        server_name="here.test", store=storage.remote_device_lists, remote=_Remote()
    )
    listed = await lists.fill("remote.example", CAROL, position=0, timeout_s=5)
    assert listed is not None
    expected = {
        "PHONE": {"x": 1, "device_display_name": "Carol's phone"},
        "LONGEST": {"device_display_name": LONGEST},
        "LONG": None,
        "ODD": None,
        "NONE": None,
    }
    assert _shown(cached_answer(CAROL, listed, [])) == expected
    found = await storage.remote_device_lists.entry(CAROL)
    assert found is not None
    kept, stale = found
    assert not stale
    assert _shown(cached_answer(CAROL, kept, [])) == expected
    assert kept.display_names == {"PHONE": "Carol's phone", "LONGEST": LONGEST}

    # Updates: a rename, a name too long (the device stays, unnamed), and
    # a new device with a name.
    updates = [
        ("LONG", "Carol's laptop"),
        ("PHONE", TOO_LONG),
        ("TABLET", "Carol's tablet"),
    ]
    for stream_id, (device_id, name) in enumerate(updates, start=6):
        await lists.on_device_list_update(
            CAROL,
            {
                "user_id": CAROL,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": [stream_id - 1],
                "device_display_name": name,
                "keys": _keys(device_id),
            },
        )
    found = await storage.remote_device_lists.entry(CAROL)
    assert found is not None
    kept, stale = found
    assert not stale
    assert _shown(cached_answer(CAROL, kept, [])) == {
        "PHONE": None,
        "LONGEST": {"device_display_name": LONGEST},
        "LONG": {"device_display_name": "Carol's laptop"},
        "ODD": None,
        "NONE": None,
        "TABLET": {"device_display_name": "Carol's tablet"},
    }
    # Only the devices asked about.
    assert _shown(cached_answer(CAROL, kept, ["TABLET"])) == {
        "TABLET": {"device_display_name": "Carol's tablet"}
    }
