"""A room purged here while another server in it is down: that server
still hears our users leave once it is back, from what the purge kept for
it, though the room's events are gone, and even if this server restarted
in between."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
from _admin import admin_ok
from _client import q
from _federation import eventually

from ranvier.config import Config
from ranvier.testing.homeserver import RestartableHomeserver, TestHomeserver, config_for_tests
from ranvier.testing.network import Pki


def _config(directory: Path, pki: Pki) -> Config:
    """A federating test server, named after a port of its own, that tries
    a server that is down again soon: the test waits out real backoffs."""
    config = config_for_tests(directory, federation=pki)
    return msgspec.structs.replace(
        config,
        federation=msgspec.structs.replace(config.federation, destination_retry_seconds=0.2),
    )


async def _membership_at(server: TestHomeserver, room_id: str, user_id: str) -> str | None:
    state = await server.server.storage.get_current_state_ids(room_id)
    event_id = state.get(("m.room.member", user_id))
    if event_id is None:
        return None
    event = (await server.server.storage.get_events([event_id]))[event_id]
    membership = msgspec.json.decode(event.json)["content"]["membership"]
    assert isinstance(membership, str)
    return membership


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
async def test_a_server_down_at_the_purge_hears_our_users_leave_once_back(
    tmp_path: Path, nursery: trio.Nursery, restart: bool
) -> None:
    pki = Pki.create(tmp_path)
    server_a = RestartableHomeserver(nursery, _config(tmp_path / "a", pki))
    server_b = RestartableHomeserver(nursery, _config(tmp_path / "b", pki))
    a = TestHomeserver(await server_a.start())
    b = TestHomeserver(await server_b.start())
    alice = await a.register_user("alice")
    bob = await b.register_user("bob")
    admin = await a.register_user("root", admin=True)
    room_id = await a.server.create_room(alice.user_id, preset="public_chat")
    await b.server.join_room(bob.user_id, room_id, [a.server_name])
    with trio.fail_after(20):
        await b.server.wait_for_full_state(room_id)

    async def bob_joined_at_a() -> bool:
        return await _membership_at(a, room_id, bob.user_id) == "join"

    await eventually(bob_joined_at_a, "Bob's join at A")

    # B goes down, and A backs off from it over a message it cannot send.
    await server_b.stop()
    async with a.client(alice) as http:
        sent = await http.put(
            f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t1",
            json={"msgtype": "m.text", "body": "anyone there?"},
        )
    assert sent.status_code == 200, sent.text

    async def a_backs_off_from_b() -> bool:
        return await a.server.storage.get_destination_retry(b.server_name) is not None

    await eventually(a_backs_off_from_b, "A backing off from B")

    async with a.client(admin) as http:
        answer = await admin_ok(http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {})
        status = await admin_ok(
            http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}"
        )
    assert status["status"] == "complete"
    assert status["shutdown_room"]["kicked_users"] == [alice.user_id]
    assert await a.server.storage.get_room_version(room_id) is None
    # Alice's leave is kept for B, outside the purged room's tables, after
    # the message B missed, which it needs to place the leave and can no
    # longer fetch from A.
    kept = await a.server.storage.pdu_outbox.outbox_pdus(b.server_name, 0, 10)
    assert [event_id for _, event_id, _ in kept][:1] == [sent.json()["event_id"]]
    ((_, leave_id, leave_json),) = kept[1:]
    leave = msgspec.json.decode(leave_json)
    assert (leave["room_id"], leave["state_key"], leave["content"]["membership"]) == (
        room_id,
        alice.user_id,
        "leave",
    )

    if restart:
        await server_a.stop()
        a = TestHomeserver(await server_a.start())
    b = TestHomeserver(await server_b.start())

    async def alice_left_at_b() -> bool:
        return await _membership_at(b, room_id, alice.user_id) == "leave"

    await eventually(alice_left_at_b, "Alice's leave at B")
    state = await b.server.storage.get_current_state_ids(room_id)
    assert state[("m.room.member", alice.user_id)] == leave_id
    assert await _membership_at(b, room_id, bob.user_id) == "join"
    assert await b.server.storage.get_event(sent.json()["event_id"]) is not None

    async def forgotten_at_a() -> bool:
        return not await a.server.storage.pdu_outbox.outbox_pdus(b.server_name, 0, 10)

    await eventually(forgotten_at_a, "the delivered leave forgotten at A")
    await server_b.stop()
    await server_a.stop()
