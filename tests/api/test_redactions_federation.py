"""Redactions across servers, over loopback TLS.

Two ranvier servers: whose redactions apply where (a powerless user of
another server cannot redact Alice's message; a user's own, and the room
admin's, apply on both servers), and the federation ``/event`` of a
redacted event, which is redacted and still carries valid signatures.

Then a stand-in server whose user joins a room of ours and sends a
redaction before the event it redacts (two events on one parent, as
concurrent sends arrive): the redaction applies once its target arrives;
and a redaction of one of its events that we never received, which is
still sent to it.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import trio
from _client import Client, q
from _federation import eventually, two_servers

from ranvier.federation.transport.server import Request
from ranvier.protocol.auth import auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import compute_event_id, content_hash_matches, hash_and_sign_event
from ranvier.protocol.signing import get_verify_key, verify_signed_json
from ranvier.server import HomeServer
from ranvier.testing import KnownKeys, RemoteHomeserver
from ranvier.testing.homeserver import TestUser, open_test_homeserver
from ranvier.testing.network import Pki

_V1 = "/_matrix/federation/v1"


async def _arrival(client: Client, user: TestUser, room_id: str, event_id: str) -> None:
    async def there() -> bool:
        status, _ = await client.call(user, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
        return bool(status == 200)

    await eventually(there, f"{event_id} at {client.hs.server_name}")


async def _event(client: Client, user: TestUser, room_id: str, event_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(
        user, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}"
    )
    return answer


async def _send(client: Client, user: TestUser, room_id: str, body: str, txn: str) -> str:
    answer = await client.ok(
        user, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{txn}", {"body": body}
    )
    event_id: str = answer["event_id"]
    return event_id


async def _redact(client: Client, user: TestUser, room_id: str, event_id: str, txn: str) -> str:
    answer = await client.ok(
        user, "PUT", f"/rooms/{q(room_id)}/redact/{q(event_id)}/{txn}", {"reason": "no"}
    )
    redaction_id: str = answer["event_id"]
    return redaction_id


async def _join_through_handshake(
    remote: RemoteHomeserver, server_name: str, room_id: str, user_id: str, version: str
) -> Pdu:
    """``user_id``, of ``remote``, joined to ``room_id`` on ``server_name``
    through make_join and send_join; the join."""
    quoted = "/".join(urllib.parse.quote(part, safe="") for part in (room_id, user_id))
    template = await remote.client.get_json(
        server_name, f"{_V1}/make_join/{quoted}", query={"ver": [version]}
    )
    join = Pdu.from_json(
        hash_and_sign_event(
            template["event"] | {"origin_server_ts": remote.clock()},
            version,
            remote.server_name,
            remote.signing_key,
        ),
        version,
    )
    path = f"/_matrix/federation/v2/send_join/{urllib.parse.quote(room_id, safe='')}/"
    await remote.client.put_json(
        server_name, path + urllib.parse.quote(join.event_id, safe=""), join.json
    )
    return join


async def test_whose_redactions_apply_on_both_servers(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="public_chat")
        await b.server.join_room(bob.user_id, room_id, [a.server_name])
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)

        by_alice = await _send(ca, alice, room_id, "from alice", "1")
        await _arrival(cb, bob, room_id, by_alice)
        # Bob, with no power and of another server: B's client API refuses
        # to send it ...
        await cb.refused(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/redact/{q(by_alice)}/r1",
            {"reason": "no"},
            status=403,
            errcode="M_FORBIDDEN",
        )
        # ... and one sent anyway, as the auth rules allow (B's core here,
        # a careless server elsewhere), applies nowhere.
        powerless = await b.server.send_event(
            bob.user_id, room_id, "m.room.redaction", {"redacts": by_alice, "reason": "no"}
        )
        by_bob = await _send(cb, bob, room_id, "from bob", "2")
        own = await _redact(cb, bob, room_id, by_bob, "r2")
        to_moderate = await _send(cb, bob, room_id, "spam", "3")
        await _arrival(ca, alice, room_id, to_moderate)
        by_admin = await _redact(ca, alice, room_id, to_moderate, "r3")
        await _arrival(ca, alice, room_id, own)
        await _arrival(cb, bob, room_id, by_admin)
        await _arrival(ca, alice, room_id, powerless)

        for client, user in ((ca, alice), (cb, bob)):
            untouched = await _event(client, user, room_id, by_alice)
            assert untouched["content"] == {"body": "from alice"}, client.hs.server_name
            assert "redacted_because" not in untouched["unsigned"]
            for target, redaction in ((by_bob, own), (to_moderate, by_admin)):
                shown = await _event(client, user, room_id, target)
                assert shown["content"] == {}, (client.hs.server_name, target)
                assert shown["unsigned"]["redacted_because"]["event_id"] == redaction

        # B asks A for Bob's redacted event over federation: A serves the
        # redacted form, and B's signature on it still verifies.
        answer = await b.server.federation_client.get_json(
            a.server_name, f"{_V1}/event/{urllib.parse.quote(by_bob, safe='')}"
        )
        (pdu,) = answer["pdus"]
        version = await a.server.storage.get_room_version(room_id)
        assert version is not None
        assert pdu["content"] == {}
        assert not content_hash_matches(pdu)
        assert compute_event_id(pdu, version) == by_bob
        verify_signed_json(pdu, b.server_name, get_verify_key(b.server.signing_key))
        assert Pdu.from_json(pdu, version).event_id == by_bob
        # An event nothing redacts goes out whole.
        answer = await b.server.federation_client.get_json(
            a.server_name, f"{_V1}/event/{urllib.parse.quote(by_alice, safe='')}"
        )
        assert answer["pdus"][0]["content"] == {"body": "from alice"}


async def _signed_event(
    hs: HomeServer,
    remote: RemoteHomeserver,
    room_id: str,
    fields: dict[str, Any],
    prev: list[str],
) -> dict[str, Any]:
    """An event of ``remote``'s, after ``prev``, citing the auth events the
    spec selects from ``hs``'s current state.
    """
    storage = hs.storage
    version = await storage.get_room_version(room_id)
    assert version is not None
    parents = await storage.get_events(prev)
    event: dict[str, Any] = {
        "room_id": room_id,
        "prev_events": prev,
        "depth": 1 + max(parent.depth for parent in parents.values()),
        "origin_server_ts": remote.clock(),
        **fields,
    }
    draft = Pdu.from_json(
        event | {"auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}}, version
    )
    state = await storage.get_current_state_ids(room_id)
    event["auth_events"] = [state[k] for k in sorted(auth_types_for_event(draft)) if k in state]
    return hash_and_sign_event(event, version, remote.server_name, remote.signing_key)


async def test_a_redaction_arriving_before_its_target_applies_once_it_arrives(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    remote = RemoteHomeserver("127.0.0.1:{port}")
    await remote.start(nursery, pki.server_context("127.0.0.1"))
    await remote.open_client(nursery, pki.client_context())
    async with open_test_homeserver(tmp_path / "a", federation=pki) as a, a.client() as http:
        client = Client(a, http)
        alice = await a.register_user("alice")
        version = "11"
        room_id = await client.create_room(alice, preset="public_chat", room_version=version)
        since = (await client.ok(alice, "GET", "/sync"))["next_batch"]

        mallory = f"@mallory:{remote.server_name}"
        join = await _join_through_handshake(remote, a.server_name, room_id, mallory, version)

        message = await _signed_event(
            a.server,
            remote,
            room_id,
            {"type": "m.room.message", "sender": mallory, "content": {"body": "regret"}},
            [join.event_id],
        )
        message_id = compute_event_id(message, version)
        redaction = await _signed_event(
            a.server,
            remote,
            room_id,
            {"type": "m.room.redaction", "sender": mallory, "content": {"redacts": message_id}},
            [join.event_id],
        )
        redaction_id = compute_event_id(redaction, version)

        answer = await remote.send_transaction(a.server_name, [redaction])
        assert answer["pdus"] == {redaction_id: {}}
        await client.refused(
            alice,
            "GET",
            f"/rooms/{q(room_id)}/event/{q(message_id)}",
            status=404,
            errcode="M_NOT_FOUND",
        )

        answer = await remote.send_transaction(a.server_name, [message])
        assert answer["pdus"] == {message_id: {}}
        shown = await _event(client, alice, room_id, message_id)
        assert shown["content"] == {}
        assert shown["unsigned"]["redacted_because"]["event_id"] == redaction_id
        synced = await client.ok(alice, "GET", "/sync", params={"since": since})
        timeline = {
            event["event_id"]: event
            for event in synced["rooms"]["join"][room_id]["timeline"]["events"]
        }
        assert timeline[message_id]["content"] == {}
        assert timeline[redaction_id]["content"] == {"redacts": message_id}


async def test_a_redaction_of_an_event_never_received_is_sent_to_the_room(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    # The remote checks the signatures of A's requests with A's key, known once A runs.
    keys = KnownKeys()
    remote = RemoteHomeserver("127.0.0.1:{port}", key_lookup=keys)
    received: list[dict[str, Any]] = []
    arrived = trio.Event()

    async def send(request: Request) -> Any:
        received.extend(request.content.get("pdus", []))
        arrived.set()
        return {"pdus": {}}

    remote.app.router.add("PUT", f"{_V1}/send/{{txn_id}}", send)
    await remote.start(nursery, pki.server_context("127.0.0.1"))
    await remote.open_client(nursery, pki.client_context())
    async with open_test_homeserver(tmp_path / "a", federation=pki) as a, a.client() as http:
        keys.add(a.server_name, a.server.signing_key)
        client = Client(a, http)
        alice = await a.register_user("alice")
        version = "11"
        room_id = await client.create_room(alice, preset="public_chat", room_version=version)
        mallory = f"@mallory:{remote.server_name}"
        join = await _join_through_handshake(remote, a.server_name, room_id, mallory, version)
        # Mallory's message exists on the remote alone: A never hears of it.
        message = await _signed_event(
            a.server,
            remote,
            room_id,
            {"type": "m.room.message", "sender": mallory, "content": {"body": "unseen"}},
            [join.event_id],
        )
        message_id = compute_event_id(message, version)
        redaction_id = await _redact(client, alice, room_id, message_id, "r-unseen")

        def redaction_sent() -> bool:
            return any(compute_event_id(pdu, version) == redaction_id for pdu in received)

        with trio.fail_after(20):
            while not redaction_sent():
                await arrived.wait()
                arrived = trio.Event()
        (sent,) = [pdu for pdu in received if compute_event_id(pdu, version) == redaction_id]
        assert sent["type"] == "m.room.redaction"
        assert sent["content"]["redacts"] == message_id
        assert sent["sender"] == alice.user_id


async def test_a_sync_token_at_a_redaction_of_an_unknown_event_syncs_on(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    remote = RemoteHomeserver("127.0.0.1:{port}")
    await remote.start(nursery, pki.server_context("127.0.0.1"))
    await remote.open_client(nursery, pki.client_context())
    async with open_test_homeserver(tmp_path / "a", federation=pki) as a, a.client() as http:
        client = Client(a, http)
        alice = await a.register_user("alice")
        version = "11"
        room_id = await client.create_room(alice, preset="public_chat", room_version=version)
        mallory = f"@mallory:{remote.server_name}"
        join = await _join_through_handshake(remote, a.server_name, room_id, mallory, version)
        # A redaction of an event that exists nowhere: it is the newest
        # event here when Alice takes her token.
        redaction = await _signed_event(
            a.server,
            remote,
            room_id,
            {"type": "m.room.redaction", "sender": mallory, "content": {"redacts": "$12345"}},
            [join.event_id],
        )
        redaction_id = compute_event_id(redaction, version)
        answer = await remote.send_transaction(a.server_name, [redaction])
        assert answer["pdus"] == {redaction_id: {}}
        ten = '{"room": {"timeline": {"limit": 10}}}'
        since = (await client.ok(alice, "GET", "/sync", params={"filter": ten}))["next_batch"]

        last = redaction_id
        for n in range(11):
            message = await _signed_event(
                a.server,
                remote,
                room_id,
                {"type": "m.room.message", "sender": mallory, "content": {"body": f"m{n}"}},
                [last],
            )
            last = compute_event_id(message, version)
            answer = await remote.send_transaction(a.server_name, [message])
            assert answer["pdus"] == {last: {}}
        gappy = await client.ok(alice, "GET", "/sync", params={"filter": ten, "since": since})
        timeline = gappy["rooms"]["join"][room_id]["timeline"]
        assert timeline["limited"] is True
        assert [event["content"]["body"] for event in timeline["events"]] == [
            f"m{n}" for n in range(1, 11)
        ]
        assert timeline["events"][-1]["event_id"] == last
        # And a page back from the redaction's place in the room.
        page = await client.ok(
            alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "from": since}
        )
        assert page["chunk"]
