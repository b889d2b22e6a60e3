"""A power levels event redacted after it was used, in a room a real
Synapse hosts: ranvier judges the events after the redaction as Synapse
does, by the redacted levels.

Redaction drops a power levels event's ``notifications`` in every room
version. Carol, of Synapse, may change the levels but not the notification
level of 20 above her 10; once Alice has redacted the levels, Synapse lets
her set it, since the levels she changes have none. ranvier, which Bob's
join put in the room, must take Carol's change as Synapse did: read whole,
the redacted levels would refuse it there, and the two servers would hold
different power levels from then on.
"""

from __future__ import annotations

import itertools
import urllib.parse
from typing import Any

import httpx
import pytest

from ranvier.server import HomeServer

from ._checks import eventually, localpart
from ._synapse import SynapseClientError, SynapseProcess, SynapseUser

_POWER_LEVELS = "m.room.power_levels"
_txns = itertools.count(1)


async def _redact(user: SynapseUser, room_id: str, event_id: str) -> str:
    room, target = (urllib.parse.quote(part, safe="") for part in (room_id, event_id))
    path = f"/_matrix/client/v3/rooms/{room}/redact/{target}/redacted-auth-{next(_txns)}"
    answer = await user.request("PUT", path, body={})
    redaction: str = answer["event_id"]
    return redaction


async def _stored(hs: HomeServer, event_id: str) -> bool:
    row = await hs.storage.get_event(event_id)
    return row is not None and not row.outlier


@pytest.mark.parametrize("version", ["6", "10", "11"])
async def test_a_change_synapse_allows_by_redacted_power_levels_is_accepted_here(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer, version: str
) -> None:
    alice = await synapse.register(synapse_http, localpart("alice"))
    carol = await synapse.register(synapse_http, localpart("carol"))
    room_id = await alice.create_room(preset="public_chat", room_version=version)
    await carol.join(room_id, synapse.server_name)
    bob = (await ranvier.accounts.register(localpart("bob"), None)).user_id
    await ranvier.join_room(bob, room_id, [synapse.server_name])

    levels: dict[str, Any] = {
        "users": {alice.user_id: 100, carol.user_id: 10},
        "events": {_POWER_LEVELS: 10},
        "state_default": 50,
        "notifications": {"room": 20},
    }
    lowered = {**levels, "notifications": {"room": 5}}
    whole = await alice.send_state(room_id, _POWER_LEVELS, levels)
    with pytest.raises(SynapseClientError) as refused:
        await carol.send_state(room_id, _POWER_LEVELS, lowered)
    assert refused.value.status == 403

    redaction = await _redact(alice, room_id, whole)
    change = await carol.send_state(room_id, _POWER_LEVELS, lowered)
    assert (await alice.state_ids(room_id))[(_POWER_LEVELS, "")] == change
    await eventually(lambda: _stored(ranvier, change), "Carol's change on ranvier")
    for event_id in (whole, redaction, change):
        row = await ranvier.storage.get_event(event_id)
        assert row is not None
        assert (row.rejected_reason, row.soft_failed) == (None, False), event_id
    current = await ranvier.storage.get_current_state_ids(room_id)
    assert current[(_POWER_LEVELS, "")] == change
