"""``/messages`` pages back past a federated join: B's user joins A's room,
which has history from before B was in it (more than one ``/backfill`` answer
holds), and pages back through B to the
room's create event. B fetches what it lacks from A with ``/backfill`` as
the pages reach the start of what it holds, and the events it takes in
stay history: they are not new to ``/sync``, not forward extremities, and
do not change the room's current state.

And an event of B's sent while the servers were cut off, arriving at A
after A's own later ones: a sync shows it among the newest, and paging
back from that sync skips none of the events A's users sent meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _client import Client, q
from _federation import TwoServers, eventually, share_a_room, two_servers

from ranvier.core.context import EventContext, event_to_persist
from ranvier.protocol.auth import auth_state_keys
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event


async def test_paging_back_through_the_joining_server_reaches_the_create_event(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="public_chat", name="Old news")
        for number in range(60):
            path = f"/rooms/{q(room_id)}/send/m.room.message/{number}"
            await ca.ok(alice, "PUT", path, {"msgtype": "m.text", "body": f"before {number}"})
        await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "New news"})
        everything_at_a = await _page_back(ca, alice, room_id)

        await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "after"})
        synced = await cb.ok(bob, "GET", "/sync")
        storage = b.server.storage
        extremities = await storage.get_forward_extremities(room_id)
        current = await storage.get_current_state_ids(room_id)

        everything_at_b = await _page_back(cb, bob, room_id)
        assert everything_at_b[0]["type"] == "m.room.create"
        bodies = [
            e["content"].get("body") for e in everything_at_b if e["type"] == "m.room.message"
        ]
        assert bodies == [f"before {number}" for number in range(60)] + ["after"]
        # The same history as A holds, in the same order, then B's own events.
        ids_at_a = [event["event_id"] for event in everything_at_a]
        ids_at_b = [event["event_id"] for event in everything_at_b]
        assert ids_at_b[: len(ids_at_a)] == ids_at_a
        assert [e["type"] for e in everything_at_b[len(ids_at_a) :]] == [
            "m.room.member",
            "m.room.message",
        ]

        # History stays history: nothing new to sync, the tips and the state unmoved.
        later = await cb.ok(bob, "GET", "/sync", params={"since": synced["next_batch"]})
        assert room_id not in later["rooms"]["join"]
        assert await storage.get_forward_extremities(room_id) == extremities
        assert await storage.get_current_state_ids(room_id) == current
        name = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/state/m.room.name")
        assert name == {"name": "New news"}
        # Paging again asks nobody: the history here reaches the create event.
        assert await _page_back(cb, bob, room_id) == everything_at_b
        # And forward from the start gives the same events.
        forward = await cb.ok(
            bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "f", "limit": 100}
        )
        assert [event["event_id"] for event in forward["chunk"]] == ids_at_b


async def _page_back(client: Client, user: Any, room_id: str) -> list[dict[str, Any]]:
    """Every event ``/messages`` gives paging back 7 at a time, oldest first."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dir": "b", "limit": 7}
    for _ in range(40):
        page = await client.ok(user, "GET", f"/rooms/{q(room_id)}/messages", params=params)
        events.extend(page["chunk"])
        if "end" not in page:
            return events[::-1]
        params["from"] = page["end"]
    raise AssertionError("paging back never ended")


async def _written_at_b_alone(servers: TwoServers, room_id: str, body: str) -> dict[str, Any]:
    """A message of Bob's after B's latest event, signed and written by B
    but not sent: as if B were cut off from A when Bob sent it.
    """
    b, bob = servers.b, servers.bob
    storage = b.server.storage
    version = await storage.get_room_version(room_id)
    assert version is not None
    (prev,) = await storage.get_forward_extremities(room_id)
    parent, groups = await storage.get_event(prev), await storage.get_event_state_groups(prev)
    assert parent is not None
    assert groups is not None
    fields: dict[str, Any] = {
        "type": "m.room.message",
        "sender": bob.user_id,
        "room_id": room_id,
        "content": {"msgtype": "m.text", "body": body},
        "prev_events": [prev],
        "auth_events": [],
        "depth": parent.depth + 1,
        "origin_server_ts": parent.origin_server_ts + 1,
    }
    key = b.server.signing_key
    draft = Pdu.from_json(hash_and_sign_event(fields, version, b.server_name, key), version)
    state = await storage.get_state_ids(groups.after)
    fields["auth_events"] = [state[k] for k in auth_state_keys(draft) if k in state]
    signed = hash_and_sign_event(fields, version, b.server_name, key)
    event = Pdu.from_json(signed, version)
    context = EventContext(state_group_before=groups.after, state_group_after=groups.after)
    await storage.persist_events([event_to_persist(event, context)])
    return {**signed, "event_id": event.event_id}


async def test_an_event_from_before_a_partition_arriving_late_leaves_no_gap_in_paging(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, _, alice, _ = servers
        room_id = await share_a_room(servers)
        carol = await a.register_user("carol")
        await ca.ok(carol, "POST", f"/rooms/{q(room_id)}/join", {})
        four = '{"room": {"timeline": {"limit": 4}}}'
        since = (await ca.ok(carol, "GET", "/sync", params={"filter": four}))["next_batch"]
        # B, cut off, has Bob send 1'; A's users send 1 to 4 meanwhile.
        late = await _written_at_b_alone(servers, room_id, "1'")

        async def send(number: int) -> str:
            path = f"/rooms/{q(room_id)}/send/m.room.message/p{number}"
            answer = await ca.ok(alice, "PUT", path, {"msgtype": "m.text", "body": str(number)})
            event_id: str = answer["event_id"]
            return event_id

        sent = [await send(number) for number in range(1, 5)]
        # Back together, 1' reaches A, and A's users send 5 to 7.
        pdu = {key: value for key, value in late.items() if key != "event_id"}
        answer = await b.server.federation_client.put_json(
            a.server_name,
            "/_matrix/federation/v1/send/partition",
            {"origin": b.server_name, "origin_server_ts": pdu["origin_server_ts"], "pdus": [pdu]},
        )
        assert answer["pdus"] == {late["event_id"]: {}}, answer
        sent += [await send(number) for number in range(5, 8)]
        synced = await ca.ok(carol, "GET", "/sync", params={"filter": four, "since": since})
        timeline = synced["rooms"]["join"][room_id]["timeline"]
        assert [event["event_id"] for event in timeline["events"]] == [late["event_id"], *sent[4:]]
        # Paging back from the start of that timeline gives 4, 3, 2 and 1:
        # nothing sent before 1' arrived is skipped.
        page = await ca.ok(
            carol,
            "GET",
            f"/rooms/{q(room_id)}/messages",
            params={"dir": "b", "from": timeline["prev_batch"], "limit": "4"},
        )
        assert [event["event_id"] for event in page["chunk"]] == sent[3::-1]


async def test_paging_back_after_a_rejoin_gets_what_was_sent_while_away(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})

        async def left_at_a() -> bool:
            state = await ca.state(alice, room_id)
            return bool(state[("m.room.member", bob.user_id)]["content"]["membership"] == "leave")

        await eventually(left_at_a, "Bob's leave at A")
        for number in range(20):
            path = f"/rooms/{q(room_id)}/send/m.room.message/away{number}"
            await ca.ok(alice, "PUT", path, {"msgtype": "m.text", "body": f"away {number}"})
        await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        everything_at_b = await _page_back(cb, bob, room_id)
        bodies = [
            e["content"].get("body") for e in everything_at_b if e["type"] == "m.room.message"
        ]
        assert bodies == [f"away {number}" for number in range(20)]
        assert everything_at_b[0]["type"] == "m.room.create"
