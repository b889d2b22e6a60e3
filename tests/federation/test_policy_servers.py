"""Policy servers (spec v1.18, MSC4284) honoured by a server that is not
one, between real servers over loopback TLS.

Server A holds a room that server B joined; A's user then names B as the
room's policy server in ``m.room.policy`` (B has a joined user, as the spec
requires). B's events reach A without a policy signature, so A asks B's
``/_matrix/policy/v1/sign``, served here by a route added to B that signs
with the policy key, except what it calls spam, which it refuses. A keeps
the recommended event with the policy signature beside B's own, and soft
fails the refused one: stored, but kept from current state and clients.
Once the room names a server with no user in it, its policy server is
gone and nothing is asked. B stands there for a server that does not ask
for its own events, which the spec expects other servers to meet.

The other way round, A asks B before sending its own users' events: what
B receives carries the policy signature, so B asks nothing; what B refuses
is answered to A's client with B's error and kept by neither server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from ranvier.protocol.events import Pdu
from ranvier.protocol.policy_servers import POLICY_KEY_ID
from ranvier.protocol.room_versions import get_room_version
from ranvier.protocol.signing import SigningKey
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.testing.homeserver import open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.web import JsonResponse, Request

from .test_transaction_acl import V3, _config_at, _eventually, _ok, _public_room_joined_by, q

_POLICY_KEY = SigningKey(b"k" * 32, "policy_server")
_OTHER_KEY = SigningKey(b"o" * 32, "policy_server")


async def test_events_the_policy_server_refuses_are_soft_failed(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(
            tmp_path / "b", config=_config_at(tmp_path / "b", pki, "127.0.0.2")
        ) as b,
    ):
        asked: list[tuple[str | None, str]] = []

        async def sign(request: Request) -> JsonResponse:
            await trio.lowlevel.checkpoint()
            event = Pdu.from_json(request.content, get_room_version("12"))
            asked.append((request.origin, event.content.get("body", event.type)))
            if event.content.get("body") == "spam":
                return JsonResponse({"errcode": "M_FORBIDDEN", "error": "spam"}, status=400)
            signature = encode_unpadded_base64(_POLICY_KEY.sign(event.signed_form).signature)
            return JsonResponse({b.server_name: {POLICY_KEY_ID: signature}})

        b.server.federation_app.router.add(
            "POST", "/_matrix/policy/v1/sign", sign, authenticated=True
        )
        b.server.event_creator.policy_servers = None
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        room = await _public_room_joined_by(a, alice, b, bob)

        async def send(body: str) -> str:
            txn = f"{body}-{len(asked)}"
            answer = await _ok(
                b, bob, "PUT", f"/rooms/{q(room)}/send/m.room.message/{txn}", {"body": body}
            )
            event_id: str = answer["event_id"]

            async def at_a() -> bool:
                return await a.server.storage.get_event(event_id) is not None

            await _eventually(at_a, f"{body!r} at A")
            return event_id

        before = await send("before")
        assert asked == []
        public = encode_unpadded_base64(bytes(_POLICY_KEY.verify_key))
        policy = {"via": b.server_name, "public_keys": {"ed25519": public}}
        await _ok(a, alice, "PUT", f"/rooms/{q(room)}/state/m.room.policy/", policy)
        spam, fine = await send("spam"), await send("fine")

        assert asked == [(a.server_name, "spam"), (a.server_name, "fine")]
        stored = {
            event_id: await a.server.storage.get_event(event_id)
            for event_id in (before, spam, fine)
        }
        assert {event_id: row.soft_failed for event_id, row in stored.items() if row} == {
            before: False,
            spam: True,
            fine: False,
        }
        row = stored[fine]
        assert row is not None
        kept: dict[str, Any] = Pdu.from_json(row.json, get_room_version("12")).json
        signatures = kept["signatures"][b.server_name]
        assert POLICY_KEY_ID in signatures
        assert len(signatures) == 2, "B's own signature stays beside the policy server's"
        sync = await _ok(a, alice, "GET", "/sync")
        timeline = [e["event_id"] for e in sync["rooms"]["join"][room]["timeline"]["events"]]
        assert fine in timeline
        assert spam not in timeline

        # A policy server with no joined user in the room is not the room's:
        # nothing is asked and nothing is soft failed.
        elsewhere = {"via": "elsewhere.test", "public_keys": {"ed25519": public}}
        await _ok(a, alice, "PUT", f"/rooms/{q(room)}/state/m.room.policy/", elsewhere)
        spam_again = await send("spam")
        assert len(asked) == 2
        assert spam_again != spam
        row = await a.server.storage.get_event(spam_again)
        assert row is not None
        assert not row.soft_failed


def _policy_signed_by(json: dict[str, Any], server: str) -> bool:
    signatures = json.get("signatures", {}).get(server, {})
    return POLICY_KEY_ID in signatures


async def test_our_events_are_signed_by_the_policy_server_before_they_are_sent(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(
            tmp_path / "b", config=_config_at(tmp_path / "b", pki, "127.0.0.2")
        ) as b,
    ):
        asked: list[tuple[str | None, str]] = []

        async def sign(request: Request) -> JsonResponse:
            await trio.lowlevel.checkpoint()
            event = Pdu.from_json(request.content, get_room_version("12"))
            what = event.content.get("body", event.content.get("topic", event.type))
            asked.append((request.origin, what))
            if what == "spam":
                return JsonResponse(
                    {"errcode": "M_FORBIDDEN", "error": "This looks like spam"}, status=400
                )
            key = _OTHER_KEY if what == "missigned" else _POLICY_KEY
            signature = encode_unpadded_base64(key.sign(event.signed_form).signature)
            return JsonResponse({b.server_name: {POLICY_KEY_ID: signature}})

        b.server.federation_app.router.add(
            "POST", "/_matrix/policy/v1/sign", sign, authenticated=True
        )
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        room = await _public_room_joined_by(a, alice, b, bob)

        async def at_b(event_id: str) -> dict[str, Any]:
            async def arrived() -> bool:
                return await b.server.storage.get_event(event_id) is not None

            await _eventually(arrived, f"{event_id} at B")
            row = await b.server.storage.get_event(event_id)
            assert row is not None
            assert not row.soft_failed
            kept: dict[str, Any] = Pdu.from_json(row.json, get_room_version("12")).json
            return kept

        async def send(body: str) -> str:
            txn = f"{body}-{len(asked)}"
            path = f"/rooms/{q(room)}/send/m.room.message/{txn}"
            event_id: str = (await _ok(a, alice, "PUT", path, {"body": body}))["event_id"]
            return event_id

        # A room without a policy server: sent as before, nothing asked.
        plain = await at_b(await send("plain"))
        assert asked == []
        assert not _policy_signed_by(plain, b.server_name)

        public = encode_unpadded_base64(bytes(_POLICY_KEY.verify_key))
        policy = {"via": b.server_name, "public_keys": {"ed25519": public}}
        await _ok(a, alice, "PUT", f"/rooms/{q(room)}/state/m.room.policy/", policy)
        assert asked == [], "the event naming the policy server is not signed by it"

        fine_id = await send("fine")
        fine = await at_b(fine_id)
        topic_id = (
            await _ok(a, alice, "PUT", f"/rooms/{q(room)}/state/m.room.topic/", {"topic": "t"})
        )["event_id"]
        topic = await at_b(topic_id)
        for event in (fine, topic):
            assert _policy_signed_by(event, b.server_name)
            assert a.server_name in event["signatures"], "A's own signature stays"
        # B found the signature in place and asked nobody.
        assert asked == [(a.server_name, "fine"), (a.server_name, "t")]
        row = await a.server.storage.get_event(fine_id)
        assert row is not None
        assert _policy_signed_by(
            Pdu.from_json(row.json, get_room_version("12")).json, b.server_name
        )

        # Refused: the client has the policy server's error, and the event
        # goes nowhere. The message after it reaching B shows it would have.
        async with a.client(alice) as client:
            response = await client.put(
                f"{V3}/rooms/{q(room)}/send/m.room.message/spam", json={"body": "spam"}
            )
        assert response.status_code == 400, response.text
        assert response.json() == {"errcode": "M_FORBIDDEN", "error": "This looks like spam"}
        async with a.client(alice) as client:
            response = await client.put(
                f"{V3}/rooms/{q(room)}/state/m.room.topic/", json={"topic": "spam"}
            )
        assert response.status_code == 400, response.text
        # A signature the room's policy key does not verify is no signature.
        async with a.client(alice) as client:
            response = await client.put(
                f"{V3}/rooms/{q(room)}/send/m.room.message/m", json={"body": "missigned"}
            )
        assert response.status_code == 502, response.text
        assert response.json()["errcode"] == "M_UNKNOWN"
        after = await at_b(await send("after"))
        assert _policy_signed_by(after, b.server_name)
        for hs, user in ((a, alice), (b, bob)):
            messages = await _ok(hs, user, "GET", f"/rooms/{q(room)}/messages?dir=b&limit=50")
            seen = [e["content"].get("body", e["content"].get("topic")) for e in messages["chunk"]]
            assert "after" in seen
            assert "spam" not in seen
            assert "missigned" not in seen
            state = await _ok(hs, user, "GET", f"/rooms/{q(room)}/state/m.room.topic/")
            assert state == {"topic": "t"}
