"""/sync with rooms of another server, end to end: an invite from it, and a
room joined with partial state (MSC3706, MSC3902).

A holds a public room with a few members; B's user joins it through A and
B gets the room with partial state. A's router holds the reads B's resync
makes until the test lets them go, so the room stays partial on B for as
long as the test needs. Meanwhile a sync that does not lazy-load members
leaves the room out, and one that does has it at once, with the
memberships of the timeline's senders even though B's state lacks them.
An eager long-poll waiting when the resync finishes is woken by it and
gets the room in full.

Both servers run whole over TLS on loopback (certificates from one test
CA); B also serves the client API on plain HTTP, which the test calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from ranvier.config import ListenerConfig
from ranvier.server import HomeServer, open_homeserver
from ranvier.testing import Pki
from ranvier.testing.held_routes import HeldRoutes
from ranvier.testing.homeserver import federating_config

_CLIENT = ListenerConfig(type="client", host="127.0.0.1", port=0)
_LAZY = json.dumps({"room": {"state": {"lazy_load_members": True}}})


def _client_url(hs: HomeServer) -> str:
    (client,) = [bound for bound in hs.listeners if bound.config.type == "client"]
    return client.url


_Sync = Callable[..., Awaitable[dict[str, Any]]]


@asynccontextmanager
async def _syncing_user(hs: HomeServer, name: str) -> AsyncIterator[tuple[str, _Sync]]:
    """A new user of ``hs``, and their ``/sync`` over HTTP (its query
    parameters as keywords, its answer checked to be 200)."""
    registration = await hs.accounts.register(name, "a long enough password")
    headers = {"Authorization": f"Bearer {registration.access_token}"}
    async with httpx.AsyncClient(base_url=_client_url(hs), headers=headers, timeout=60) as http:

        async def sync(**params: Any) -> dict[str, Any]:
            response = await http.get("/_matrix/client/v3/sync", params=params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        yield registration.user_id, sync


def _kinds(room: dict[str, Any]) -> set[tuple[str, str]]:
    events = room["state"]["events"] + room["timeline"]["events"]
    return {(event["type"], event["state_key"]) for event in events if "state_key" in event}


async def test_eager_syncs_wait_for_the_resync_and_lazy_ones_do_not(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_homeserver(federating_config(tmp_path, pki, "a")) as a,
        open_homeserver(federating_config(tmp_path, pki, "b", _CLIENT)) as b,
    ):
        alice = f"@alice:{a.server_name}"
        members = [f"@member{n}:{a.server_name}" for n in range(3)]
        room_id = await a.create_room(alice, preset="public_chat", name="partial")
        for member in members:
            await a.join_room(member, room_id)
        held = HeldRoutes(a.federation_app.router)
        a.federation_app.router = held

        async with _syncing_user(b, "bob") as (bob, sync):
            await b.join_room(bob, room_id, [a.server_name])
            assert await b.storage.is_partial_state_room(room_id)

            # Eager: as if not joined yet.
            eager = await sync()
            assert room_id not in eager["rooms"]["join"]
            # Lazy: there at once.
            lazy = await sync(filter=_LAZY)
            assert ("m.room.member", bob) in _kinds(lazy["rooms"]["join"][room_id])
            # Its members are not known here yet: no summary to count them by.
            assert lazy["rooms"]["join"][room_id]["summary"] == {}

            # A message from A reaches B on partial state; a lazy long-poll
            # is woken by its arrival over federation.
            await a.send_event(alice, room_id, "m.room.message", {"body": "hi from A"})
            since = lazy["next_batch"]
            timeline: list[dict[str, Any]] = []
            with trio.fail_after(30):
                while not any(e["sender"] == alice for e in timeline):
                    answer = await sync(since=since, timeout=20_000, filter=_LAZY)
                    since = answer["next_batch"]
                    room = answer["rooms"]["join"].get(room_id)
                    timeline = [] if room is None else room["timeline"]["events"]
            assert room is not None
            # Alice's membership is not in B's partial state: it comes from
            # the auth events of her message. The silent members stay out.
            state = {(e["type"], e["state_key"]) for e in room["state"]["events"]}
            assert ("m.room.member", alice) in state
            assert not any(("m.room.member", member) in state for member in members)
            assert await b.storage.is_partial_state_room(room_id)

            # Eager long-poll from before the room came: nothing to say
            # until the resync ends, then the room in full.
            answers: list[dict[str, Any]] = []

            async def poll() -> None:
                answers.append(await sync(since=eager["next_batch"], timeout=60_000))

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poll)
                    while b.stream_notifier.waiting == 0:
                        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                    assert not answers
                    held.released.set()
            assert not await b.storage.is_partial_state_room(room_id)
            (full,) = answers
            room = full["rooms"]["join"][room_id]
            kinds = _kinds(room)
            assert {("m.room.member", user) for user in (alice, bob, *members)} <= kinds
            assert ("m.room.create", "") in kinds
            assert "hi from A" in [e["content"].get("body") for e in room["timeline"]["events"]]
            # B holds the room from Bob's join on; what came before is A's.
            assert room["timeline"]["events"][0]["type"] != "m.room.create"
            assert room["timeline"]["limited"] is True
            # And then it is an ordinary room: nothing new, nothing sent again.
            quiet = await sync(since=full["next_batch"], timeout=0)
            assert room_id not in quiet["rooms"]["join"]


async def test_an_invite_from_another_server_and_the_join_after_it(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_homeserver(federating_config(tmp_path, pki, "a")) as a,
        open_homeserver(federating_config(tmp_path, pki, "b", _CLIENT)) as b,
    ):
        alice = f"@alice:{a.server_name}"
        room_id = await a.create_room(alice, name="Invited")
        async with _syncing_user(b, "bob") as (bob, sync):
            before = await sync()
            assert before["rooms"]["invite"] == {}
            await a.invite(alice, room_id, bob)
            # B knows the room only through the invite, an outlier.
            invited = await sync(since=before["next_batch"])
            stripped = invited["rooms"]["invite"][room_id]["invite_state"]["events"]
            assert stripped[-1] == {
                "type": "m.room.member",
                "state_key": bob,
                "content": {"membership": "invite"},
                "sender": alice,
            }
            assert room_id in (await sync())["rooms"]["invite"]
            assert (await sync(since=invited["next_batch"]))["rooms"]["invite"] == {}

            # Another invite, declined: the room moves to leave, with the leave.
            declined = await a.create_room(alice, name="Declined")
            await a.invite(alice, declined, bob)
            before_decline = (await sync())["next_batch"]
            await b.leave_room(bob, declined)
            after = await sync(since=before_decline)
            assert declined not in after["rooms"]["invite"]
            (leave,) = after["rooms"]["leave"][declined]["timeline"]["events"]
            assert (leave["state_key"], leave["content"]["membership"]) == (bob, "leave")
            assert declined not in (await sync())["rooms"]["invite"]

            await b.join_room(bob, room_id, [a.server_name])
            # Joined with partial state: eager syncs wait for the resync.
            with trio.fail_after(30):
                await b.wait_for_full_state(room_id)
            joined = await sync(since=invited["next_batch"])
            assert room_id not in joined["rooms"]["invite"]
            room = joined["rooms"]["join"][room_id]
            members = [e for e in room["timeline"]["events"] if e["type"] == "m.room.member"]
            assert members[-1]["state_key"] == bob
            assert members[-1]["content"]["membership"] == "join"
