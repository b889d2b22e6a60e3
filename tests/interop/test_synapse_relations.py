"""Relations of a real Synapse's events: thread replies, edits and
reactions sent by a Synapse user into a room shared with ranvier are kept
as relations here, as ranvier's own are."""

from __future__ import annotations

import os

import httpx

from ranvier.server import HomeServer

from ._checks import eventually
from ._synapse import SynapseProcess


async def test_synapse_threads_edits_and_reactions_are_relations_here(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, f"zedrel{os.getpid()}")
    room_id = await zed.create_room(preset="public_chat")
    bob = f"@bob:{ranvier.server_name}"
    await ranvier.join_room(bob, room_id, [synapse.server_name])
    root = await zed.send_message(room_id, "root")

    async def send(event_type: str, content: dict[str, object], txn: str) -> str:
        answer = await zed.request(
            "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn}", body=content
        )
        event_id: str = answer["event_id"]
        return event_id

    reply = await send(
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "in the thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
        "r1",
    )
    edit = await send(
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* root!",
            "m.new_content": {"msgtype": "m.text", "body": "root!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root},
        },
        "e1",
    )
    reaction = await send(
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "+1"}},
        "a1",
    )
    storage = ranvier.storage

    async def arrived() -> bool:
        return len(await storage.get_events([reply, edit, reaction])) == 3

    await eventually(arrived, "Synapse's related events on ranvier")
    found: dict[str | None, list[str]] = {}
    for rel_type in ("m.thread", "m.replace", "m.annotation"):
        events, _ = await storage.relations.related_events(
            room_id,
            root,
            rel_type=rel_type,
            event_type=None,
            after=0,
            upto=2**62,
            limit=10,
            backwards=True,
            depth=1,
        )
        found[rel_type] = [event.event_id for event in events]
    assert found == {"m.thread": [reply], "m.replace": [edit], "m.annotation": [reaction]}
