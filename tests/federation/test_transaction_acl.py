"""Server ACLs applied to ``/send``, between real servers over loopback TLS.

Server A (on 127.0.0.1) holds a room that server B (on 127.0.0.2, another
loopback address, so that an ACL can tell the two apart) joined. Once the
room's ACL denies B, what B's users send to it (messages, typing, receipts)
is refused by A, while what they send to another room the two share is
taken. B's queue towards A is sent in order, so once the second room's
unit has arrived at A, the denied one was handled before it: nothing is
awaited by sleeping.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from ranvier.config import ListenerConfig, TlsConfig
from ranvier.core.ingest import EventVerifier, FederationIngester, TransactionAnswer
from ranvier.federation.persistence import ReceivedTransactions
from ranvier.federation.transaction_acl import AclCheckedPdus
from ranvier.protocol.server_acl import SERVER_ACL_KEY
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.storage.run_reads import RunReads
from ranvier.testing import KnownKeys, RemoteRooms, RoomBuilder, ingest_all
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki, free_port

V3 = "/_matrix/client/v3"


def q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _config_at(data_dir: Path, pki: Pki, address: str) -> Any:
    """A test server's configuration, with its federation listener (and
    so its name) on ``address``."""
    config = config_for_tests(data_dir, federation=pki)
    port = free_port()
    issued = pki.ca.issue_cert(address)
    certificate, key = data_dir / "tls.crt", data_dir / "tls.key"
    certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    listeners = tuple(
        ListenerConfig(type="federation", host=address, port=port)
        if listener.type == "federation"
        else listener
        for listener in config.listeners
    )
    return msgspec.structs.replace(
        config,
        server_name=f"{address}:{port}",
        listeners=listeners,
        tls=TlsConfig(certificate_path=certificate, private_key_path=key),
    )


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(1000):
        if await check():
            return
        await trio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def _ok(hs: TestHomeserver, user: TestUser, method: str, path: str, body: Any = None) -> Any:
    async with hs.client(user) as client:
        response = await client.request(method, V3 + path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def _public_room_joined_by(
    a: TestHomeserver, alice: TestUser, b: TestHomeserver, bob: TestUser
) -> str:
    room_id: str = (await _ok(a, alice, "POST", "/createRoom", {"preset": "public_chat"}))[
        "room_id"
    ]
    await _ok(b, bob, "POST", f"/join/{q(room_id)}?server_name={q(a.server_name)}", {})
    with trio.fail_after(20):
        await b.server.wait_for_full_state(room_id)

    async def joined_at_a() -> bool:
        members = await _ok(a, alice, "GET", f"/rooms/{q(room_id)}/joined_members")
        return bob.user_id in members["joined"]

    await _eventually(joined_at_a, "Bob's join at A")
    return room_id


async def test_a_server_the_acl_denies_is_not_heard_in_that_room(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(
            tmp_path / "b", config=_config_at(tmp_path / "b", pki, "127.0.0.2")
        ) as b,
    ):
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        denied_room = await _public_room_joined_by(a, alice, b, bob)
        open_room = await _public_room_joined_by(a, alice, b, bob)
        acl = {"allow": ["*"], "deny": ["127.0.0.2"], "allow_ip_literals": True}
        await _ok(a, alice, "PUT", f"/rooms/{q(denied_room)}/state/m.room.server_acl/", acl)
        greeting = (
            await _ok(
                a, alice, "PUT", f"/rooms/{q(denied_room)}/send/m.room.message/1", {"body": "hi"}
            )
        )["event_id"]

        async def acl_at_b() -> bool:
            return await b.server.storage.get_event(greeting) is not None

        await _eventually(acl_at_b, "the ACL and the message after it at B")

        # B's user speaks in both rooms: the denied room first.
        blocked = (
            await _ok(
                b, bob, "PUT", f"/rooms/{q(denied_room)}/send/m.room.message/1", {"body": "x"}
            )
        )["event_id"]
        await _ok(
            b, bob, "PUT", f"/rooms/{q(denied_room)}/typing/{q(bob.user_id)}", {"typing": True}
        )
        await _ok(b, bob, "POST", f"/rooms/{q(denied_room)}/receipt/m.read/{q(greeting)}", {})
        sentinel = (
            await _ok(b, bob, "PUT", f"/rooms/{q(open_room)}/send/m.room.message/1", {"body": "y"})
        )["event_id"]
        await _ok(b, bob, "PUT", f"/rooms/{q(open_room)}/typing/{q(bob.user_id)}", {"typing": True})

        async def open_room_heard_at_a() -> bool:
            await trio.lowlevel.checkpoint()
            return await a.server.storage.get_event(
                sentinel
            ) is not None and a.server.typing_notices.typing_in(open_room) == [bob.user_id]

        await _eventually(open_room_heard_at_a, "Bob's message and typing in the open room at A")

        assert await a.server.storage.get_event(blocked) is None
        assert a.server.typing_notices.typing_in(denied_room) == []
        sync = await _ok(a, alice, "GET", "/sync")
        joined = sync["rooms"]["join"][denied_room]
        assert blocked not in [event["event_id"] for event in joined["timeline"]["events"]]
        receipts = [e for e in joined["ephemeral"]["events"] if e["type"] == "m.receipt"]
        assert all(bob.user_id not in str(receipt["content"]) for receipt in receipts)
        # The ACL itself stands at A.
        state = await _ok(a, alice, "GET", f"/rooms/{q(denied_room)}/state/m.room.server_acl/")
        assert state == acl


_ALICE, _BOB = "@alice:ours.test", "@bob:remote.test"


async def _ours(
    tmp_path: Path, nursery: trio.Nursery, rooms: int
) -> tuple[Storage, list[RoomBuilder], KnownKeys]:
    """Our storage with ``rooms`` public rooms of Alice's that Bob of the
    remote joined, and both servers' keys."""
    keys = {server: generate_signing_key("k1") for server in ("ours.test", "remote.test")}
    storage = Storage(tmp_path / "ours.db", synchronous="OFF")
    await nursery.start(storage.run)
    made = []
    for _ in range(rooms):
        room = RoomBuilder(creator=_ALICE, keys=keys)
        room.public_room(_BOB)
        made.append(room)
    return storage, made, KnownKeys(keys)


async def test_the_answer_recorded_with_the_pdus_names_those_the_acl_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # One room denies the remote, the other does not: the PDUs let through
    # are of one room, and the answer written with them must name the
    # refused PDU too, as the answer given does.
    storage, rooms, keys = await _ours(tmp_path, nursery, 2)
    denying, open_room = rooms
    denying.state_event(_ALICE, "m.room.server_acl", {"allow": ["*"], "deny": ["remote.test"]})
    for room in rooms:
        await ingest_all(storage, list(room.order))
    ingester = FederationIngester(
        store=storage,
        persister=storage,
        client=RemoteRooms(*rooms),
        verifier=EventVerifier(keys),
        answers=storage,
    )
    refused, taken = denying.message(_BOB, "denied"), open_room.message(_BOB, "let through")
    records = ReceivedTransactions(storage)
    answer = TransactionAnswer(
        lambda outcomes: records.record_of(
            "remote.test",
            "t1",
            {"pdus": {o.event_id: o.error is None for o in outcomes if o.event_id is not None}},
        )
    )
    outcomes = await AclCheckedPdus(ingester, storage).receive_pdus(
        "remote.test", [refused.raw, taken.raw], answer=answer
    )
    assert [(o.event_id, o.error is None) for o in outcomes] == [
        (taken.event_id, True),
        (refused.event_id, False),
    ]
    assert answer.recorded is not None
    recorded = await storage.get_received_transaction("remote.test", "t1")
    assert recorded == answer.recorded
    assert msgspec.json.decode(recorded.response_json) == {
        "pdus": {taken.event_id: True, refused.event_id: False}
    }
    assert await storage.get_event(refused.event_id) is None


async def test_a_room_the_ingester_knows_has_no_acl_is_not_read_until_written(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage, (room,), keys = await _ours(tmp_path, nursery, 1)
    await ingest_all(storage, list(room.order))
    ingester = FederationIngester(
        store=storage,
        persister=storage,
        client=RemoteRooms(room),
        verifier=EventVerifier(keys),
        run_reader=RunReads(storage.readers),
        answers=storage,
    )
    checked = AclCheckedPdus(ingester, storage, known=ingester.known_current_entry)

    async def send(text: str) -> tuple[str | None, int]:
        """Bob's message through the checks: its error's errcode, and the reads it took."""
        reads = storage.readers.reads
        (outcome,) = await checked.receive_pdus("remote.test", [room.message(_BOB, text).raw])
        return (None if outcome.error is None else outcome.error.errcode), (
            storage.readers.reads - reads
        )

    # The ACL's read, the room's version and the run's read.
    assert await send("first") == (None, 3)
    assert ingester.known_current_entry(room.room_id, SERVER_ACL_KEY) == (True, None)
    assert await send("second") == (None, 0)
    # An ACL written here meanwhile: the room is read again, and the ACL holds.
    acl = room.state_event(_ALICE, "m.room.server_acl", {"allow": ["*"], "deny": ["remote.test"]})
    await ingest_all(storage, [acl])
    assert ingester.known_current_entry(room.room_id, SERVER_ACL_KEY) == (False, None)
    errcode, reads = await send("third")
    assert errcode == "M_FORBIDDEN"
    assert reads >= 1
    assert await storage.get_forward_extremities(room.room_id) == {acl.event_id}
