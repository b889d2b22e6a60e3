"""What the interop tests wait for and check, shared by every file.

What a test waits for happens in another process (Synapse, or ranvier's
federation with it), so it is polled with a deadline, not awaited as an
event. One Synapse serves the whole run, so users' localparts come from
one counter for every file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.storage import Storage

from ._synapse import SynapseUser

#: How long anything crossing between the servers may take: generous, as
#: the limit is reached only by a failure, and two servers on a slow
#: machine with two cores may take a while.
WAIT_SECONDS: Final = 60.0
_users = itertools.count(1)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` holds, looking every 50 ms for at most a minute."""
    with trio.move_on_after(WAIT_SECONDS):
        while True:
            if await check():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"gave up after {WAIT_SECONDS:.0f} s waiting for {what}")


def localpart(name: str) -> str:
    """A localpart no other test of the run (in any file) has used."""
    return f"{name}{os.getpid()}x{next(_users)}"


async def in_dag(storage: Storage, *event_ids: str) -> bool:
    """Whether ranvier has every one of the events, accepted, in the room's DAG."""
    rows = await storage.get_events(event_ids)
    for event_id in event_ids:
        row = rows.get(event_id)
        if row is None or row.outlier:
            return False
        assert row.rejected_reason is None, (event_id, row.rejected_reason)
        assert not row.soft_failed, event_id
    return True


async def on_synapse(user: SynapseUser, room_id: str, *event_ids: str) -> bool:
    """Whether Synapse shows ``user`` every one of the events."""
    for event_id in event_ids:
        if await user.event(room_id, event_id) is None:
            return False
    return True


def device_keys(user_id: str, device_id: str) -> tuple[dict[str, Any], SigningKey]:
    """A new device's keys, signed by its own ed25519 key, and that key
    (to sign the device's one-time keys with)."""
    key = SigningKey(os.urandom(32), device_id)
    device = {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{device_id}": "Y3VydmU" + device_id,
            f"ed25519:{device_id}": encode_verify_key_base64(key.verify_key),
        },
    }
    return sign_json(device, user_id, key), key
