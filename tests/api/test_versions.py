"""``GET /_matrix/client/versions`` over real HTTP: the spec versions
advertised, contiguous, and some of what the newest of them ask of a server
that no other test covers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _client import Client, OneServer, q

from ranvier.testing.homeserver import open_test_homeserver

Env = OneServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        yield Env(hs, Client(hs, http), alice, bob)


async def test_versions_from_v1_1_to_v1_19_without_a_gap(env: Env) -> None:
    response = await env.client.http.get("/_matrix/client/versions")
    assert response.status_code == 200
    body = response.json()
    assert body["versions"] == [f"v1.{minor}" for minor in range(1, 20)]
    # Unstable flags still looked for by clients, including room summaries,
    # stable since v1.15.
    assert body["unstable_features"] == {
        "org.matrix.simplified_msc3575": True,
        "org.matrix.msc3814": True,
        "im.nheko.summary": True,
    }
    # No access token needed.
    assert "errcode" not in body


async def test_no_oauth_server_metadata_is_unrecognized(env: Env) -> None:
    """Spec v1.15: a server without the OAuth 2.0 API says so on
    /auth_metadata with 404 M_UNRECOGNIZED, and keeps the legacy login."""
    response = await env.client.http.get("/_matrix/client/v1/auth_metadata")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_UNRECOGNIZED"
    login = await env.client.http.get("/_matrix/client/v3/login")
    assert login.status_code == 200
    assert {"type": "m.login.password"} in login.json()["flows"]


@pytest.mark.parametrize("room_version", ["10", "11"])
async def test_a_redaction_is_sent_with_send_in_every_room_version(
    env: Env, room_version: str
) -> None:
    """Spec v1.18 (MSC4169): /send takes m.room.redaction, with `redacts`
    in the content; before v11 the event carries it at the top level."""
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice, room_version=room_version)
    room = f"/rooms/{q(room_id)}"
    target = await c.ok(
        alice, "PUT", f"{room}/send/m.room.message/m1", {"msgtype": "m.text", "body": "oops"}
    )
    sent = await c.ok(
        alice,
        "PUT",
        f"{room}/send/m.room.redaction/r1",
        {"redacts": target["event_id"], "reason": "typo"},
    )
    redaction = await c.ok(alice, "GET", f"{room}/event/{q(sent['event_id'])}")
    assert redaction["type"] == "m.room.redaction"
    if room_version == "10":
        assert redaction["redacts"] == target["event_id"]
    else:
        assert redaction["content"]["redacts"] == target["event_id"]
    redacted = await c.ok(alice, "GET", f"{room}/event/{q(target['event_id'])}")
    assert redacted["content"] == {}
    assert redacted["unsigned"]["redacted_because"]["event_id"] == sent["event_id"]
