"""Jump to date between ranvier and a real Synapse: each server's user asks
for an event from before their server joined the other's room, and the
answer comes over federation's ``/timestamp_to_event``."""

from __future__ import annotations

import os

import httpx
import trio

from ranvier.server import HomeServer

from ._synapse import SynapseProcess, SynapseUser


async def _synapse_event(user: SynapseUser, room_id: str, event_id: str) -> int:
    event = await user.event(room_id, event_id)
    assert event is not None, f"Synapse does not have {event_id}"
    ts: int = event["origin_server_ts"]
    return ts


async def test_ranvier_asks_synapse_for_history_from_before_it_joined(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, f"zedtime{os.getpid()}")
    room_id = await zed.create_room(preset="public_chat")
    sent = []
    for n in range(3):
        sent.append(await zed.send_message(room_id, f"old {n}"))
        # Distinct milliseconds, so that each message is the one nearest its time.
        await trio.sleep(0.01)
    middle_ts = await _synapse_event(zed, room_id, sent[1])

    bob = f"@bob:{ranvier.server_name}"
    await ranvier.join_room(bob, room_id, [synapse.server_name])
    await ranvier.wait_for_full_state(room_id)
    # None of the old messages is held here: only Synapse can say.
    assert await ranvier.storage.get_event(sent[1]) is None

    found = await ranvier.find_event_at(bob, room_id, middle_ts, "b")
    assert found == (sent[1], middle_ts)
    # The event Synapse named was fetched, checked and kept.
    assert await ranvier.storage.get_event(sent[1]) is not None


async def test_synapse_asks_ranvier_for_history_from_before_it_joined(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    alice = f"@alice:{ranvier.server_name}"
    room_id = await ranvier.create_room(alice, preset="public_chat")
    sent = []
    for n in range(3):
        body = {"msgtype": "m.text", "body": f"old {n}"}
        sent.append(await ranvier.send_event(alice, room_id, "m.room.message", body))
        await trio.sleep(0.01)
    stored = await ranvier.storage.get_event(sent[1])
    assert stored is not None

    zed = await synapse.register(synapse_http, f"zedasks{os.getpid()}")
    await zed.join(room_id, ranvier.server_name)
    await zed.joined_members(room_id)  # Until Synapse holds the room's full state.
    answer = await zed.request(
        "GET",
        f"/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
        params={"ts": str(stored.origin_server_ts), "dir": "b"},
    )
    assert answer == {"event_id": sent[1], "origin_server_ts": stored.origin_server_ts}
