"""Typing notices, read receipts and presence between ranvier and a real
Synapse, in a room shared by a user of each, hosted by one side and then by
the other.

Each crosses both ways and its end crosses too: a user who stops typing
leaves the other side's typing list, a receipt lands on the event it names,
a presence change carries its status message. A private read receipt stays
on its own server: Synapse's database (which stores whatever receipt type
another server sends it) must hold none of ranvier's user, and ranvier's
store none of Synapse's user.

What ranvier has is read through the core objects its ``/sync`` reads;
what Synapse has, through its user's ``/sync``. EDUs are not acknowledged
to the sender's clients, so arrival is awaited by polling, within a bound.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from ranvier.server import HomeServer

from ._checks import eventually, localpart
from ._synapse import SynapseProcess, SynapseUser

_WAIT_SECONDS = 60.0
_HOSTS = pytest.mark.parametrize("host", ["synapse", "ranvier"])


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


@dataclass(frozen=True)
class _Shared:
    """A room with ranvier's Bob and Synapse's Zed joined, on both servers."""

    room_id: str
    bob: str
    zed: SynapseUser


async def _shared_room(
    host: str, synapse: SynapseProcess, http: httpx.AsyncClient, hs: HomeServer
) -> _Shared:
    """A room created on ``host`` and joined from the other server, with
    the joiner's resync done, so that each server counts the other in it.
    """
    zed = await synapse.register(http, localpart("zed"))
    bob = f"@{localpart('bob')}:{hs.server_name}"
    if host == "synapse":
        room_id = await zed.create_room(preset="public_chat", name="Ephemeral, on Synapse")
        await hs.join_room(bob, room_id, [synapse.server_name])
        with trio.fail_after(_WAIT_SECONDS):
            await hs.wait_for_full_state(room_id)
    else:
        room_id = await hs.create_room(bob, preset="public_chat", name="Ephemeral, on ranvier")
        assert await zed.join(room_id, via=hs.server_name) == room_id

    async def both_joined() -> bool:
        # /joined_members waits for Synapse's resync of a partial join.
        return await zed.joined_members(room_id) == {bob, zed.user_id}

    await eventually(both_joined, "both users joined, as Synapse sees the room")
    return _Shared(room_id, bob, zed)


class _SynapseSync:
    """A Synapse user's ``/sync``, each call taking up where the last ended."""

    def __init__(self, user: SynapseUser, *, set_presence: str = "online") -> None:
        self._user = user
        self._set_presence = set_presence
        self._since: str | None = None

    async def next(self) -> dict[str, Any]:
        params = {"timeout": "0", "set_presence": self._set_presence}
        if self._since is not None:
            params["since"] = self._since
        synced: dict[str, Any] = await self._user.request(
            "GET", "/_matrix/client/v3/sync", params=params
        )
        self._since = synced["next_batch"]
        return synced

    async def ephemeral(self, room_id: str, event_type: str) -> list[dict[str, Any]]:
        """The next sync's ephemeral events of ``event_type`` in ``room_id``."""
        synced = await self.next()
        room = synced.get("rooms", {}).get("join", {}).get(room_id, {})
        events: list[dict[str, Any]] = room.get("ephemeral", {}).get("events", [])
        return [event for event in events if event["type"] == event_type]


# --- Typing -----------------------------------------------------------------------------


@_HOSTS
async def test_typing_starts_and_stops_each_way(
    host: str, synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    shared = await _shared_room(host, synapse, synapse_http, ranvier)
    room_id, bob, zed = shared.room_id, shared.bob, shared.zed
    typing = ranvier.typing_notices
    zed_sync = _SynapseSync(zed)
    await zed_sync.next()

    # Bob types, then stops: Zed's sync lists him, then a list without him.
    lists: list[list[str]] = []

    async def zed_sees_bob(typing_now: bool) -> bool:
        lists.extend(
            event["content"]["user_ids"] for event in await zed_sync.ephemeral(room_id, "m.typing")
        )
        return bool(lists) and (bob in lists[-1]) == typing_now

    await typing.set_typing(bob, bob, room_id, typing=True, timeout_ms=60_000)
    await eventually(lambda: zed_sees_bob(True), "Bob typing, in Zed's sync")
    assert lists[-1] == [bob]
    await typing.set_typing(bob, bob, room_id, typing=False)
    await eventually(lambda: zed_sees_bob(False), "Bob no longer typing, in Zed's sync")
    assert lists[-1] == []
    # Typing that runs out is told as stopped (Synapse would wait a minute).
    # Three seconds: long enough for Zed's sync to see it start first.
    await typing.set_typing(bob, bob, room_id, typing=True, timeout_ms=3_000)
    await eventually(lambda: zed_sees_bob(True), "Bob typing again, in Zed's sync")
    await eventually(lambda: zed_sees_bob(False), "Bob's typing run out, in Zed's sync")

    # Zed types, then stops: Bob's sync has him, then an empty list.
    path = f"/_matrix/client/v3/rooms/{_quote(room_id)}/typing/{_quote(zed.user_id)}"
    since = await typing.position()

    async def bob_sync(after: int) -> dict[str, Any] | None:
        shown = await typing.for_sync(bob, [room_id], after, await typing.position())
        return shown.get(room_id)

    async def bob_sees_zed() -> bool:
        return await bob_sync(since) == {"type": "m.typing", "content": {"user_ids": [zed.user_id]}}

    await zed.request("PUT", path, body={"typing": True, "timeout": 60_000})
    await eventually(bob_sees_zed, "Zed typing, in Bob's sync")
    assert typing.typing_in(room_id) == [zed.user_id]
    since = await typing.position()

    async def bob_sees_nobody() -> bool:
        return await bob_sync(since) == {"type": "m.typing", "content": {"user_ids": []}}

    await zed.request("PUT", path, body={"typing": False})
    await eventually(bob_sees_nobody, "Zed no longer typing, in Bob's sync")
    assert typing.typing_in(room_id) == []
    # Synapse tells of Zed's typing running out as well.
    since = await typing.position()
    await zed.request("PUT", path, body={"typing": True, "timeout": 3_000})
    await eventually(bob_sees_zed, "Zed typing again, in Bob's sync")
    since = await typing.position()
    await eventually(bob_sees_nobody, "Zed's typing run out, in Bob's sync")


# --- Receipts ---------------------------------------------------------------------------


def _synapse_receipts(synapse: SynapseProcess, user_id: str) -> set[tuple[str, str]]:
    """The (receipt type, event ID) of each receipt Synapse stores of ``user_id``."""
    database = synapse.directory / "homeserver.db"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute(
            "SELECT receipt_type, event_id FROM receipts_linearized WHERE user_id = ?",
            (user_id,),
        ).fetchall()
    finally:
        connection.close()
    return {(str(kind), str(event_id)) for kind, event_id in rows}


async def _synapse_has(user: SynapseUser, room_id: str, event_id: str) -> bool:
    return await user.event(room_id, event_id) is not None


@_HOSTS
async def test_read_receipts_cross_each_way_and_private_ones_stay(
    host: str, synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    shared = await _shared_room(host, synapse, synapse_http, ranvier)
    room_id, bob, zed = shared.room_id, shared.bob, shared.zed
    first = await zed.send_message(room_id, "from Synapse")
    text = {"msgtype": "m.text", "body": "from ranvier"}
    second = await ranvier.send_event(bob, room_id, "m.room.message", text)

    async def both_have_both() -> bool:
        rows = await ranvier.storage.get_events([first, second])
        if any(
            rows.get(event_id) is None or rows[event_id].outlier for event_id in (first, second)
        ):
            return False
        return await _synapse_has(zed, room_id, second)

    await eventually(both_have_both, "both messages on both servers")
    zed_sync = _SynapseSync(zed)
    await zed_sync.next()

    # Bob reads Zed's message privately, then Bob's own publicly. Zed's sync
    # gets the public one; Synapse never hears of the private one, which
    # went out before it, if at all.
    seen: set[tuple[str, str, str]] = set()

    async def zed_sees_bobs_receipt() -> bool:
        for event in await zed_sync.ephemeral(room_id, "m.receipt"):
            for event_id, by_type in event["content"].items():
                for receipt_type, users in by_type.items():
                    seen.update((event_id, receipt_type, user) for user in users)
        return (second, "m.read", bob) in seen

    receipts = ranvier.receipts
    await receipts.post_receipt(bob, room_id, "m.read.private", first, {})
    await receipts.post_receipt(bob, room_id, "m.read", second, {})
    await eventually(zed_sees_bobs_receipt, "Bob's read receipt, in Zed's sync")
    assert {entry for entry in seen if entry[2] == bob} == {(second, "m.read", bob)}
    stored = await trio.to_thread.run_sync(_synapse_receipts, synapse, bob)
    assert stored == {("m.read", second)}

    # Zed does the same: Bob's sync gets the public receipt, and ranvier's
    # store has nothing else of Zed's.
    base = f"/_matrix/client/v3/rooms/{_quote(room_id)}/receipt"
    await zed.request("POST", f"{base}/m.read.private/{_quote(first)}", body={})
    await zed.request("POST", f"{base}/m.read/{_quote(second)}", body={})

    async def bob_sync() -> dict[str, Any]:
        position = await receipts.position()
        shown = await receipts.for_sync(bob, [room_id], None, position)
        content: dict[str, Any] = shown.get(room_id, {}).get("content", {})
        return content

    async def bob_sees_zeds_receipt() -> bool:
        return zed.user_id in (await bob_sync()).get(second, {}).get("m.read", {})

    await eventually(bob_sees_zeds_receipt, "Zed's read receipt, in Bob's sync")
    content = await bob_sync()
    assert isinstance(content[second]["m.read"][zed.user_id]["ts"], int)
    # Bob's own private receipt is there for him alone; none of Zed's.
    assert content[first] == {"m.read.private": {bob: content[first]["m.read.private"][bob]}}
    records = await ranvier.storage.receipts.receipt_changes(
        [room_id], 0, await receipts.position()
    )
    assert {
        (record.receipt_type, record.event_id)
        for record in records
        if record.user_id == zed.user_id
    } == {("m.read", second)}

    # Threaded receipts keep their thread on the way, each way: a reply in
    # a thread on Zed's message, read in that thread.
    reply_content = {
        "msgtype": "m.text",
        "body": "in the thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": first},
    }
    reply = await ranvier.send_event(bob, room_id, "m.room.message", reply_content)
    await eventually(
        lambda: _synapse_has(zed, room_id, reply), "Bob's reply in the thread, on Synapse"
    )
    await receipts.post_receipt(bob, room_id, "m.read", reply, {"thread_id": first})
    threads: dict[str, Any] = {}

    async def zed_sees_the_thread_read() -> bool:
        for event in await zed_sync.ephemeral(room_id, "m.receipt"):
            threads.update(event["content"].get(reply, {}).get("m.read", {}))
        return bob in threads

    await eventually(zed_sees_the_thread_read, "Bob's threaded receipt, in Zed's sync")
    assert threads[bob]["thread_id"] == first
    await zed.request("POST", f"{base}/m.read/{_quote(reply)}", body={"thread_id": first})

    async def ranvier_has_the_thread_read() -> bool:
        records = await ranvier.storage.receipts.receipt_changes(
            [room_id], 0, await receipts.position()
        )
        return any(
            (record.user_id, record.event_id, record.thread_id) == (zed.user_id, reply, first)
            for record in records
        )

    await eventually(ranvier_has_the_thread_read, "Zed's threaded receipt, at ranvier")
    assert (await bob_sync())[reply]["m.read"][zed.user_id]["thread_id"] == first


# --- Presence ---------------------------------------------------------------------------


def _shows(content: dict[str, Any], presence: str, status: str) -> bool:
    return (content["presence"], content.get("status_msg")) == (presence, status)


@_HOSTS
async def test_presence_and_status_messages_cross_each_way(
    host: str, synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    shared = await _shared_room(host, synapse, synapse_http, ranvier)
    bob, zed = shared.bob, shared.zed
    # Zed's syncs leave his presence alone: he sets it himself below.
    zed_sync = _SynapseSync(zed, set_presence="offline")
    await zed_sync.next()
    bobs: list[dict[str, Any]] = []

    async def zed_sees_bob(presence: str, status: str) -> bool:
        synced = await zed_sync.next()
        for event in synced.get("presence", {}).get("events", []):
            if event["sender"] == bob:
                bobs.append(event["content"])
        return bool(bobs) and _shows(bobs[-1], presence, status)

    presence = ranvier.presence
    await presence.set_presence(bob, bob, {"presence": "online", "status_msg": "at the desk"})
    await eventually(lambda: zed_sees_bob("online", "at the desk"), "Bob online, at Synapse")
    await presence.set_presence(bob, bob, {"presence": "unavailable", "status_msg": "at lunch"})
    await eventually(lambda: zed_sees_bob("unavailable", "at lunch"), "Bob unavailable, at Synapse")
    shown = await zed.request("GET", f"/_matrix/client/v3/presence/{_quote(bob)}/status")
    assert _shows(shown, "unavailable", "at lunch")

    zeds: list[dict[str, Any]] = []

    async def bob_sees_zed(state: str, status: str) -> bool:
        synced = await presence.for_sync(bob, None, await presence.position())
        zeds[:] = [event["content"] for event in synced if event["sender"] == zed.user_id]
        return bool(zeds) and _shows(zeds[-1], state, status)

    path = f"/_matrix/client/v3/presence/{_quote(zed.user_id)}/status"
    await zed.request("PUT", path, body={"presence": "online", "status_msg": "on Synapse"})
    await eventually(lambda: bob_sees_zed("online", "on Synapse"), "Zed online, at ranvier")
    await zed.request("PUT", path, body={"presence": "unavailable", "status_msg": "away"})
    await eventually(lambda: bob_sees_zed("unavailable", "away"), "Zed unavailable, at ranvier")
    assert _shows(await presence.get_presence(bob, zed.user_id), "unavailable", "away")
