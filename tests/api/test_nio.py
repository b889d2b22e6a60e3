"""A real Matrix client against ranvier: matrix-nio, over HTTP on loopback.

matrix-nio runs on asyncio (with aiohttp); the test runs on Trio, and
trio-asyncio runs the client's coroutines inside the test's Trio loop
(:func:`_aio`). Nothing here knows the server's internals: what nio
accepts (it checks every response against the spec's schemas) is what
passes.

The servers are :func:`~ranvier.testing.open_test_homeserver`'s; the last
test federates two of them over TLS with a test CA and joins a room of one
from the other with partial state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import nio  # type: ignore[import-untyped]
import pytest
import trio
import trio_asyncio  # type: ignore[import-untyped]
from _nio import aio, invalid_responses, sync

from ranvier.testing import Pki, TestHomeserver, open_test_homeserver
from ranvier.testing.held_routes import HeldRoutes


@asynccontextmanager
async def _asyncio() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


@asynccontextmanager
async def _client(
    hs: TestHomeserver, localpart: str, config: nio.AsyncClientConfig | None = None
) -> AsyncIterator[nio.AsyncClient]:
    """A nio client of a new account on ``hs``, registered through ``/register``."""
    client = nio.AsyncClient(hs.client_url, store_path="", config=config)
    try:
        registered = await aio(client.register, localpart, f"password of {localpart}")
        assert isinstance(registered, nio.RegisterResponse), registered
        assert client.access_token
        assert client.user_id == f"@{localpart}:{hs.server_name}"
        yield client
    finally:
        await aio(client.close)


def _bodies(response: nio.SyncResponse, room_id: str) -> list[tuple[str, str]]:
    """The (sender, body) of each message in ``room_id``'s timeline."""
    room = response.rooms.join.get(room_id)
    if room is None:
        return []
    return [
        (event.sender, event.body)
        for event in room.timeline.events
        if isinstance(event, nio.RoomMessageText)
    ]


async def _send(client: nio.AsyncClient, room_id: str, body: str) -> str:
    sent = await aio(
        client.room_send, room_id, "m.room.message", {"msgtype": "m.text", "body": body}
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(sent.event_id)


async def _sync_until(
    client: nio.AsyncClient, check: Callable[[nio.SyncResponse], bool], seconds: float = 20
) -> nio.SyncResponse:
    """Sync (long-polling, from the client's last position) until ``check``
    holds for a response.
    """
    with trio.fail_after(seconds):
        while True:
            response = await sync(client, timeout_ms=1000)
            if check(response):
                return response


async def test_register_log_in_create_send_and_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        _asyncio(),
        open_test_homeserver(tmp_path / "hs") as hs,
        _client(hs, "alice") as alice,
    ):
        # The same account logs in again from a second device.
        second = nio.AsyncClient(hs.client_url, "alice", store_path="")
        try:
            login = await aio(second.login, "password of alice", device_name="phone")
            assert isinstance(login, nio.LoginResponse), login
            assert login.user_id == alice.user_id
            assert login.device_id != alice.device_id
            wrong = await aio(second.login, "not the password")
            assert isinstance(wrong, nio.LoginError)
            assert wrong.status_code == "M_FORBIDDEN"
        finally:
            await aio(second.close)

        created = await aio(alice.room_create, name="Lobby", preset=nio.RoomPreset.public_chat)
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        event_id = await _send(alice, room_id, "hello")

        synced = await sync(alice)
        assert ("@alice:localhost", "hello") in _bodies(synced, room_id)
        assert any(e.event_id == event_id for e in synced.rooms.join[room_id].timeline.events)
        # nio keeps the room's state from the sync.
        assert alice.rooms[room_id].name == "Lobby"
        assert set(alice.rooms[room_id].users) == {alice.user_id}
    # nio reads the refused login's body as a login first: the one complaint.
    assert invalid_responses(caplog) == [
        "Error validating response: 'user_id' is a required property"
    ]


async def test_two_users_see_each_others_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        _asyncio(),
        open_test_homeserver(tmp_path / "hs") as hs,
        _client(hs, "alice") as alice,
        _client(hs, "bob") as bob,
    ):
        created = await aio(alice.room_create, name="Lobby", preset=nio.RoomPreset.public_chat)
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await _send(alice, room_id, "hello from alice")
        await sync(alice)

        # Bob has synced before he joins, so the room comes to him in an
        # incremental sync, as a room newly joined: with its recent history.
        before = await sync(bob)
        assert room_id not in before.rooms.join
        joined = await aio(bob.join, room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        assert joined.room_id == room_id
        first = await sync(bob)
        assert ("@alice:localhost", "hello from alice") in _bodies(first, room_id)

        # Alice waits in a long poll; Bob's message wakes it.
        seen_by_alice: list[nio.SyncResponse] = []

        async def wait_for_bob() -> None:
            seen_by_alice.append(
                await _sync_until(
                    alice, lambda r: ("@bob:localhost", "hi alice") in _bodies(r, room_id)
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_bob)
            await trio.sleep(0.2)  # let the poll start; it must work either way
            await _send(bob, room_id, "hi alice")
        assert seen_by_alice

        await _send(alice, room_id, "welcome, bob")
        await _sync_until(
            bob, lambda r: ("@alice:localhost", "welcome, bob") in _bodies(r, room_id)
        )
        assert set(alice.rooms[room_id].users) == {alice.user_id, bob.user_id}
        assert set(bob.rooms[room_id].users) == {alice.user_id, bob.user_id}
        members = await aio(bob.joined_members, room_id)
        assert isinstance(members, nio.JoinedMembersResponse), members
        assert {m.user_id for m in members.members} == {alice.user_id, bob.user_id}
    assert not invalid_responses(caplog)


async def test_rate_limits_reach_the_client(tmp_path: Path) -> None:
    """With the default limits on, a flood of sends is refused with 429 and
    a time to wait. nio waits that long and sends again by itself; told not
    to, it reports the refusal, and after the wait the next send goes in.
    """
    patient_sends = 24
    async with (
        _asyncio(),
        open_test_homeserver(tmp_path / "hs", rate_limits=True) as hs,
        _client(hs, "alice") as alice,
        _client(hs, "bob", nio.AsyncClientConfig(max_limit_exceeded=0)) as bob,
    ):
        created = await aio(alice.room_create, name="Flood", preset=nio.RoomPreset.public_chat)
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id

        # A burst of 20, then one a second: nio's own retries take the rest.
        started = trio.current_time()
        for n in range(patient_sends):
            await _send(alice, room_id, f"patient {n}")
        assert trio.current_time() - started >= patient_sends - 20 - 1

        joined = await aio(bob.join, room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        refused = None
        for n in range(100):
            result = await aio(
                bob.room_send, room_id, "m.room.message", {"msgtype": "m.text", "body": f"{n}"}
            )
            if isinstance(result, nio.RoomSendError):
                refused = result
                break
        assert refused is not None, "100 sends at once were all taken"
        assert n >= 20
        assert refused.status_code == "M_LIMIT_EXCEEDED"
        assert refused.retry_after_ms is not None
        assert 0 < refused.retry_after_ms <= 1000
        await trio.sleep(refused.retry_after_ms / 1000)
        await _send(bob, room_id, "after waiting")


async def test_joining_a_room_of_another_server_with_partial_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bob, on B, joins Alice's room on A through its alias. B joins with
    partial state and completes the room's state in the background (held
    back here until the test lets it go). Both users talk meanwhile; Bob's
    member list waits for the full state and then names everyone, and his
    sync brings the room in whole.
    """
    pki = Pki.create(tmp_path)
    async with (
        _asyncio(),
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        _client(a, "alice") as alice,
        _client(b, "bob") as bob,
    ):
        resync = HeldRoutes(a.server.federation_app.router)
        a.server.federation_app.router = resync
        created = await aio(
            alice.room_create,
            name="Lobby on A",
            alias="lobby",
            preset=nio.RoomPreset.public_chat,
        )
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        # Other members on A, whose joins B's partial state leaves out.
        others = [await a.register_user(f"member{n}") for n in range(5)]
        for member in others:
            async with a.client(member) as http:
                response = await http.post(f"/_matrix/client/v3/rooms/{room_id}/join", json={})
                assert response.status_code == 200, response.text
        await _send(alice, room_id, "before bob came")
        everyone = {alice.user_id, bob.user_id, *(member.user_id for member in others)}

        joined = await aio(bob.join, f"#lobby:{a.server_name}")
        assert isinstance(joined, nio.JoinResponse), joined
        assert joined.room_id == room_id
        assert await b.server.storage.is_partial_state_room(room_id)
        with trio.fail_after(30):
            await resync.first_held.wait()

        # Talking works at once, though B's state of the room is partial.
        await _send(bob, room_id, "hello from B")
        await _sync_until(alice, lambda r: (bob.user_id, "hello from B") in _bodies(r, room_id))
        await _send(alice, room_id, "hello from A")
        assert await b.server.storage.is_partial_state_room(room_id)

        # Bob's member list waits for the full state, then names everyone.
        listed: list[nio.JoinedMembersResponse | nio.JoinedMembersError] = []

        async def list_members() -> None:
            listed.append(await aio(bob.joined_members, room_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(list_members)
            await trio.sleep(0.5)
            assert not listed, "joined_members answered from partial state"
            resync.released.set()
            with trio.fail_after(30):
                await b.server.wait_for_full_state(room_id)
        assert not await b.server.storage.is_partial_state_room(room_id)
        [members] = listed
        assert isinstance(members, nio.JoinedMembersResponse), members
        assert {m.user_id for m in members.members} == everyone

        # Bob's sync brings the room in, with what Alice said since he came,
        # and either what she said before or word that there is more.
        def has_alices_hello(response: nio.SyncResponse) -> bool:
            return (alice.user_id, "hello from A") in _bodies(response, room_id)

        brought_in = await _sync_until(bob, has_alices_hello)
        timeline = brought_in.rooms.join[room_id].timeline
        assert (alice.user_id, "before bob came") in _bodies(brought_in, room_id) or (
            timeline.limited and timeline.prev_batch
        ), "the room came in without its earlier history and without saying it has more"
        assert set(bob.rooms[room_id].users) == everyone
        assert bob.rooms[room_id].name == "Lobby on A"

        # A fresh client of Bob's (an initial sync) shows the room, whole.
        fresh = nio.AsyncClient(b.client_url, "bob", store_path="")
        try:
            login = await aio(fresh.login, "password of bob")
            assert isinstance(login, nio.LoginResponse), login
            synced = await sync(fresh)
            assert room_id in synced.rooms.join
            assert fresh.rooms[room_id].name == "Lobby on A"
            assert set(fresh.rooms[room_id].users) == everyone
        finally:
            await aio(fresh.close)
    assert not invalid_responses(caplog)
