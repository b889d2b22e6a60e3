"""The ``device_lists`` of ``/sync`` as users on this server or another
join, leave and rejoin rooms shared with the syncing user, and the keys
``/keys/query`` shows meanwhile, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from _client import Client, q
from _e2e import device_keys
from _federation import two_servers

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver


@dataclass
class Sides:
    """Alice, who syncs, on her server; Bob on his (hers, or another);
    Barry on Bob's server, sharing a room of his own with Alice alone."""

    ca: Client
    cb: Client
    hs_b: TestHomeserver
    alice: TestUser
    bob: TestUser
    barry: TestUser
    barrier_room: str = ""
    bob_keys: dict[str, Any] = field(default_factory=dict)

    async def sync(self, since: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": 1000}
        if since is not None:
            params["since"] = since
        answer: dict[str, Any] = await self.ca.ok(self.alice, "GET", "/sync", params=params)
        return answer

    async def upload_bob_keys(self) -> None:
        self.bob_keys = device_keys(self.bob).body
        await self.cb.ok(self.bob, "POST", "/keys/upload", {"device_keys": self.bob_keys})

    async def bob_keys_are_current(self) -> None:
        """Alice's query shows the keys Bob uploaded last."""
        with trio.fail_after(20):
            while True:
                found = await self.ca.ok(
                    self.alice, "POST", "/keys/query", {"device_keys": {self.bob.user_id: []}}
                )
                shown = found["device_keys"].get(self.bob.user_id, {})
                if shown == {self.bob.device_id: self.bob_keys}:
                    return
                await trio.sleep(0.02)

    async def until(
        self, since: str, *, changed: str = "", left: str = "", joined: str = "", gone: str = ""
    ) -> tuple[str, list[str]]:
        """Alice's syncs from ``since`` until they have listed ``changed``
        and ``left`` in ``device_lists`` and shown ``joined`` joining or
        ``gone`` leaving the room: the last token, and every user listed
        as changed on the way."""
        seen_changed: list[str] = []
        seen_left: list[str] = []
        members: set[str] = set()
        departed: set[str] = set()
        with trio.fail_after(20):
            while True:
                answer = await self.sync(since)
                since = answer["next_batch"]
                seen_changed += answer.get("device_lists", {}).get("changed", [])
                seen_left += answer.get("device_lists", {}).get("left", [])
                for section in ("join", "leave"):
                    for room in answer.get("rooms", {}).get(section, {}).values():
                        for event in room.get("timeline", {}).get("events", []):
                            if event["type"] == "m.room.member":
                                membership = event["content"].get("membership")
                                if membership == "join":
                                    members.add(event["state_key"])
                                elif membership == "leave":
                                    departed.add(event["state_key"])
                if (
                    (not changed or changed in seen_changed)
                    and (not left or left in seen_left)
                    and (not joined or joined in members)
                    and (not gone or gone in departed)
                ):
                    return since, seen_changed

    async def barrier(self, since: str) -> tuple[str, list[str]]:
        """Everything Alice's syncs list up to a key change of Barry's,
        made after whatever Bob did before this was called."""
        await self.cb.ok(
            self.barry, "POST", "/keys/upload", {"device_keys": device_keys(self.barry).body}
        )
        return await self.until(since, changed=self.barry.user_id)

    async def join(self, client: Client, user: TestUser, room_id: str, via: str) -> None:
        await client.ok(user, "POST", f"/join/{q(room_id)}", {}, params={"server_name": via})


@pytest.fixture(params=["local", "remote"])
async def sides(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sides]:
    if request.param == "local":
        async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
            client = Client(hs, http)
            found = Sides(
                client,
                client,
                hs,
                await hs.register_user("alice"),
                await hs.register_user("bob"),
                await hs.register_user("barry"),
            )
            await _barrier_room(found)
            yield found
        return
    async with two_servers(tmp_path) as servers:
        _, b, ca, cb, alice, bob = servers
        found = Sides(ca, cb, b, alice, bob, await b.register_user("barry"))
        await _barrier_room(found)
        yield found


async def _barrier_room(sides: Sides) -> None:
    room_id = await sides.cb.create_room(sides.barry, preset="public_chat")
    await sides.join(sides.ca, sides.alice, room_id, sides.hs_b.server_name)
    await sides.until((await sides.sync())["next_batch"], changed="")
    sides.barrier_room = room_id


async def _bob_joins_alices_room(sides: Sides) -> tuple[str, str]:
    """Alice's room that Bob has joined, and Alice's token before the join."""
    room_id = await sides.ca.create_room(sides.alice, preset="public_chat")
    since = (await sides.sync())["next_batch"]
    await sides.join(sides.cb, sides.bob, room_id, sides.ca.hs.server_name)
    return room_id, since


async def test_a_user_joining_is_listed_then_their_changes(sides: Sides) -> None:
    await sides.upload_bob_keys()
    _, since = await _bob_joins_alices_room(sides)
    since, _ = await sides.until(since, changed=sides.bob.user_id, joined=sides.bob.user_id)
    await sides.bob_keys_are_current()
    since, _ = await sides.barrier(since)
    await sides.upload_bob_keys()
    await sides.until(since, changed=sides.bob.user_id)
    await sides.bob_keys_are_current()


async def test_joining_a_users_room_lists_them_then_their_changes(sides: Sides) -> None:
    await sides.upload_bob_keys()
    room_id = await sides.cb.create_room(sides.bob, preset="public_chat")
    since = (await sides.sync())["next_batch"]
    await sides.join(sides.ca, sides.alice, room_id, sides.hs_b.server_name)
    since, _ = await sides.until(since, changed=sides.bob.user_id, joined=sides.alice.user_id)
    await sides.bob_keys_are_current()
    since, _ = await sides.barrier(since)
    await sides.upload_bob_keys()
    await sides.until(since, changed=sides.bob.user_id)
    await sides.bob_keys_are_current()


async def test_a_user_leaving_is_listed_and_their_changes_no_more(sides: Sides) -> None:
    await sides.upload_bob_keys()
    room_id, since = await _bob_joins_alices_room(sides)
    since, _ = await sides.until(since, changed=sides.bob.user_id, joined=sides.bob.user_id)
    since, _ = await sides.barrier(since)
    await sides.cb.ok(sides.bob, "POST", f"/rooms/{q(room_id)}/leave", {})
    since, _ = await sides.until(since, left=sides.bob.user_id, gone=sides.bob.user_id)
    await sides.upload_bob_keys()
    await sides.bob_keys_are_current()
    _, changed = await sides.barrier(since)
    assert sides.bob.user_id not in changed


async def test_leaving_a_users_room_lists_them_and_their_changes_no_more(sides: Sides) -> None:
    await sides.upload_bob_keys()
    room_id = await sides.cb.create_room(sides.bob, preset="public_chat")
    await sides.join(sides.ca, sides.alice, room_id, sides.hs_b.server_name)
    since, _ = await sides.until((await sides.sync())["next_batch"], joined="")
    await sides.bob_keys_are_current()
    since, _ = await sides.barrier(since)
    await sides.ca.ok(sides.alice, "POST", f"/rooms/{q(room_id)}/leave", {})
    since, _ = await sides.until(since, left=sides.bob.user_id)
    await sides.upload_bob_keys()
    await sides.bob_keys_are_current()
    _, changed = await sides.barrier(since)
    assert sides.bob.user_id not in changed


async def test_a_user_rejoining_is_listed_again(sides: Sides) -> None:
    await sides.upload_bob_keys()
    room_id, since = await _bob_joins_alices_room(sides)
    since, _ = await sides.until(since, changed=sides.bob.user_id, joined=sides.bob.user_id)
    since, _ = await sides.barrier(since)
    await sides.cb.ok(sides.bob, "POST", f"/rooms/{q(room_id)}/leave", {})
    since, _ = await sides.until(since, left=sides.bob.user_id, gone=sides.bob.user_id)
    await sides.upload_bob_keys()
    await sides.join(sides.cb, sides.bob, room_id, sides.ca.hs.server_name)
    await sides.until(since, changed=sides.bob.user_id, joined=sides.bob.user_id)
    await sides.bob_keys_are_current()
