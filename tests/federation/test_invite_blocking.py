"""Invite blocking (spec v1.18, MSC4380) of invites that come over
federation, between real servers over loopback TLS.

Bob on server B blocks invites; Alice on server A invites him. A sends the
invite to B's ``/v2/invite``, which refuses it with 403
``M_INVITE_BLOCKED``; A hands that refusal to Alice's client and writes
nothing. B keeps nothing either: once Bob lifts the block, which would
bring back an invite held meanwhile, his sync still shows none.
"""

from __future__ import annotations

from pathlib import Path

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki

from .test_transaction_acl import V3, _config_at, _ok, q

_CONFIG = "m.invite_permission_config"


async def _block(b: TestHomeserver, bob: TestUser, action: str) -> None:
    await _ok(
        b, bob, "PUT", f"/user/{q(bob.user_id)}/account_data/{_CONFIG}", {"default_action": action}
    )


async def test_a_remote_invite_of_a_user_who_blocks_invites_is_refused(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(
            tmp_path / "b", config=_config_at(tmp_path / "b", pki, "127.0.0.2")
        ) as b,
    ):
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        room_id: str = (await _ok(a, alice, "POST", "/createRoom", {"preset": "private_chat"}))[
            "room_id"
        ]
        await _block(b, bob, "block")
        async with a.client(alice) as client:
            response = await client.post(
                f"{V3}/rooms/{q(room_id)}/invite", json={"user_id": bob.user_id}
            )
        assert response.status_code == 403, response.text
        assert response.json()["errcode"] == "M_INVITE_BLOCKED"
        assert b.server_name in response.json()["error"], "the refusal is B's"

        async with a.client(alice) as client:
            member = await client.get(
                f"{V3}/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
            )
        assert member.status_code == 404, member.text

        await _block(b, bob, "allow")
        sync = await _ok(b, bob, "GET", "/sync")
        assert room_id not in sync.get("rooms", {}).get("invite", {})

        # The same invite once the block is lifted goes through: the refusal
        # was the block's, not anything else's.
        await _ok(a, alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        sync = await _ok(b, bob, "GET", "/sync")
        assert room_id in sync["rooms"]["invite"]
