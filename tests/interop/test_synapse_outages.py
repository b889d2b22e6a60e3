"""ranvier and a real Synapse when one of them goes away and comes back.

ranvier down: a Synapse user talks on and changes the topic while ranvier is
stopped; ranvier starts again on the same data directory, port and keys, and
must end with everything that was said, in order, and the new topic. Synapse
backs off a destination that failed it and catches it up as soon as that
destination is heard from again; what its catch-up leaves out, ranvier
fetches itself (``get_missing_events``).

Synapse down: a second Synapse of the test's own (the run's Synapse serves
every other test and must stay up) is stopped while a ranvier user talks on;
ranvier takes the messages, backs off, and delivers what it missed once
Synapse is back and heard from.

Nothing may arrive twice: each timeline holds each event once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.config import Config
from ranvier.server import HomeServer, open_homeserver
from ranvier.storage import Storage
from ranvier.testing.network import Pki

from ._checks import eventually, in_dag, localpart, on_synapse
from ._synapse import SynapseProcess, start_synapse, synapse_python

_WAIT_SECONDS = 60.0


async def _ranvier_timeline(storage: Storage, room_id: str) -> list[dict[str, Any]]:
    """Every event of the room's timeline on ranvier, oldest first."""
    events, more = await storage.sync.room_events(
        room_id, after=-(2**62), upto=2**62, limit=1000, backwards=False
    )
    assert not more
    # Event IDs of room versions 3 and later are hashes, not fields.
    return [{**msgspec.json.decode(event.json), "event_id": event.event_id} for event in events]


def _assert_in_order(timeline: list[dict[str, Any]], expected: Iterable[str], where: str) -> None:
    """Each event of the timeline once, and ``expected`` among them in that order."""
    ids = [event["event_id"] for event in timeline]
    repeated = sorted({event_id for event_id in ids if ids.count(event_id) > 1})
    assert not repeated, f"{where}: events in the timeline more than once: {repeated}"
    expected = list(expected)
    assert [event_id for event_id in ids if event_id in expected] == expected, where


@pytest.fixture
async def own_synapse(tmp_path: Path, interop_pki: Pki) -> AsyncIterator[SynapseProcess]:
    """A Synapse of this test's own, which it may stop and start again.

    It gives up on a transaction to a server it cannot reach after one
    retry a second later (by default it retries for minutes), so that it
    backs that server off within the test, as it would in the end.
    """
    retries = {"federation": {"max_long_retries": 1, "max_long_retry_delay": "1s"}}
    started = await trio.to_thread.run_sync(
        lambda: start_synapse(
            synapse_python(),
            tmp_path / "synapse",
            interop_pki,
            cache_factor=0.5,
            extra_config=retries,
        )
    )
    try:
        yield started
    finally:
        await trio.to_thread.run_sync(started.stop)


@pytest.fixture
async def own_synapse_http(own_synapse: SynapseProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=own_synapse.client_context(), timeout=30) as http:
        yield http


async def test_ranvier_catches_up_on_what_it_missed_while_down(
    own_synapse: SynapseProcess, own_synapse_http: httpx.AsyncClient, ranvier_config: Config
) -> None:
    synapse = own_synapse
    alice = await synapse.register(own_synapse_http, localpart("alice"))
    room_id = await alice.create_room(preset="public_chat", name="Outage of ranvier")
    bob = f"@bob:{ranvier_config.server_name}"
    async with open_homeserver(ranvier_config) as hs:
        await hs.join_room(bob, room_id, [synapse.server_name])
        with trio.move_on_after(_WAIT_SECONDS):
            await hs.wait_for_full_state(room_id)
        assert not await hs.storage.is_partial_state_room(room_id)
        before = await alice.send_message(room_id, "before the outage")
        await eventually(lambda: in_dag(hs.storage, before), "a message before the outage")

    # ranvier is down. The first event Synapse cannot deliver makes it back
    # ranvier off; the rest wait for ranvier to be heard from again.
    log_mark = synapse.log_size()
    missed = [await alice.send_message(room_id, "down 0")]

    async def synapse_gave_up() -> bool:
        return synapse.logged_since(log_mark, f"TX [{ranvier_config.server_name}] Failed to send")

    await eventually(synapse_gave_up, "Synapse failing to reach ranvier")
    missed += [await alice.send_message(room_id, f"down {n}") for n in range(1, 4)]
    topic = await alice.send_state(room_id, "m.room.topic", {"topic": "set while ranvier was down"})
    missed += [topic, await alice.send_message(room_id, "down 4")]

    async with open_homeserver(ranvier_config) as hs:
        storage = hs.storage
        assert not await in_dag(storage, missed[0])
        # Back: a message to Synapse is what tells it so.
        back = await hs.send_event(
            bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "back"}
        )
        await eventually(lambda: on_synapse(alice, room_id, back), "ranvier's message on Synapse")
        await eventually(lambda: in_dag(storage, *missed), "what ranvier missed, on ranvier")

        assert (await storage.get_current_state_ids(room_id))[("m.room.topic", "")] == topic
        timeline = await _ranvier_timeline(storage, room_id)
        _assert_in_order(timeline, [before, *missed], "ranvier's timeline")
        bodies = [event["content"].get("body") for event in timeline if event["event_id"] in missed]
        assert bodies == ["down 0", "down 1", "down 2", "down 3", None, "down 4"]
        _assert_in_order(
            list(reversed(await alice.timeline(room_id))), [before, *missed], "Synapse's timeline"
        )


async def test_ranvier_delivers_what_it_queued_while_synapse_was_down(
    own_synapse: SynapseProcess, own_synapse_http: httpx.AsyncClient, ranvier_config: Config
) -> None:
    # Left to its backoff, ranvier would try Synapse again only after ten
    # minutes: what it missed can reach it within the test only because
    # ranvier hears from it.
    federation = msgspec.structs.replace(ranvier_config.federation, destination_retry_seconds=600)
    async with open_homeserver(
        msgspec.structs.replace(ranvier_config, federation=federation)
    ) as hs:
        await _outage_of_synapse(own_synapse, own_synapse_http, hs)


async def _outage_of_synapse(
    remote: SynapseProcess, http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    dave = await remote.register(http, localpart("dave"))
    carol = f"@carol:{ranvier.server_name}"
    room_id = await ranvier.create_room(carol, preset="public_chat", name="Outage of Synapse")
    await dave.join(room_id, via=ranvier.server_name)
    assert await dave.joined_members(room_id) == {carol, dave.user_id}
    sender = ranvier.federation_sender

    await trio.to_thread.run_sync(remote.stop)
    # Taken here while Synapse is down, and queued for it.
    said = [await _say(ranvier, carol, room_id, "down 0")]

    async def backing_off() -> bool:
        status = sender.status(remote.server_name)
        return status is not None and status.retry_at is not None

    await eventually(backing_off, "ranvier backing off Synapse")
    status = sender.status(remote.server_name)
    assert status is not None
    assert status.retry_interval_ms is not None
    assert status.retry_interval_ms >= 480_000
    said += [await _say(ranvier, carol, room_id, f"down {n}") for n in range(1, 4)]
    assert await in_dag(ranvier.storage, *said)

    await trio.to_thread.run_sync(remote.restart)
    # Synapse's next event is a request ranvier hears it by.
    theirs = await dave.send_message(room_id, "back")
    await eventually(lambda: in_dag(ranvier.storage, theirs), "Synapse's message on ranvier")
    await eventually(lambda: on_synapse(dave, room_id, *said), "ranvier's messages on Synapse")

    _assert_in_order(list(reversed(await dave.timeline(room_id))), said, "Synapse's timeline")
    _assert_in_order(
        await _ranvier_timeline(ranvier.storage, room_id), [*said, theirs], "ranvier's timeline"
    )


async def _say(hs: HomeServer, sender: str, room_id: str, text: str) -> str:
    return await hs.send_event(
        sender, room_id, "m.room.message", {"msgtype": "m.text", "body": text}
    )
