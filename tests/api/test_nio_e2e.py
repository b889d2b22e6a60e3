"""An encrypted room between two matrix-nio clients against ranvier.

nio does the cryptography (Olm and Megolm, through vodozemac); the server
only carries keys and messages. So a message Bob reads as plain text went
the whole way: both devices' keys uploaded, Alice's client found Bob's
device by ``/keys/query``, claimed one of its one-time keys, sent the room
key to it by ``/sendToDevice``, and Bob's ``/sync`` handed it over before
the encrypted message, which his client then decrypted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nio  # type: ignore[import-untyped]
import pytest
import trio
import trio_asyncio  # type: ignore[import-untyped]
from _nio import aio, invalid_responses, sync

from ranvier.testing import TestHomeserver, open_test_homeserver

_MEGOLM = "m.megolm.v1.aes-sha2"


@asynccontextmanager
async def _encrypting_client(
    hs: TestHomeserver, localpart: str, store: Path
) -> AsyncIterator[nio.AsyncClient]:
    """A nio client with encryption on, of a new account, its keys uploaded."""
    await trio.Path(store).mkdir()
    config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = nio.AsyncClient(hs.client_url, store_path=str(store), config=config)
    try:
        registered = await aio(client.register, localpart, f"password of {localpart}")
        assert isinstance(registered, nio.RegisterResponse), registered
        # Registering logged the device in and made its keys.
        assert client.should_upload_keys
        uploaded = await aio(client.keys_upload)
        assert isinstance(uploaded, nio.KeysUploadResponse), uploaded
        assert uploaded.signed_curve25519_count > 0
        yield client
    finally:
        await aio(client.close)


async def test_an_encrypted_message_is_read_by_the_other_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_test_homeserver(tmp_path / "hs") as hs,
        _encrypting_client(hs, "alice", tmp_path / "alice") as alice,
        _encrypting_client(hs, "bob", tmp_path / "bob") as bob,
    ):
        created = await aio(
            alice.room_create,
            preset=nio.RoomPreset.private_chat,
            invite=[bob.user_id],
            initial_state=[
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": _MEGOLM}}
            ],
        )
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await sync(bob)
        joined = await aio(bob.join, room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        await sync(bob)
        await sync(alice)
        assert alice.rooms[room_id].encrypted

        # Alice's client learns Bob's device from the server, then sends.
        assert alice.should_query_keys
        queried = await aio(alice.keys_query)
        assert isinstance(queried, nio.KeysQueryResponse), queried
        assert bob.device_id in alice.device_store[bob.user_id]
        before, _ = await hs.server.storage.e2e_keys.key_counts(bob.user_id, bob.device_id)
        sent = await aio(
            alice.room_send,
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "a secret"},
            ignore_unverified_devices=True,
        )
        assert isinstance(sent, nio.RoomSendResponse), sent

        # What the server stored is ciphertext.
        stored = await hs.server.storage.get_event(sent.event_id)
        assert stored is not None
        assert b"a secret" not in stored.json
        assert b"m.room.encrypted" in stored.json

        read: list[str] = []
        with trio.fail_after(20):
            while not read:
                response = await sync(bob, timeout_ms=1000)
                room = response.rooms.join.get(room_id)
                for event in [] if room is None else room.timeline.events:
                    assert not isinstance(event, nio.MegolmEvent), "not decrypted"
                    if isinstance(event, nio.RoomMessageText):
                        read.append(event.body)
        assert read == ["a secret"]
        # One of Bob's one-time keys went to Alice's device, and only one.
        after, _ = await hs.server.storage.e2e_keys.key_counts(bob.user_id, bob.device_id)
        assert after == {"signed_curve25519": before["signed_curve25519"] - 1}
    assert not invalid_responses(caplog)
