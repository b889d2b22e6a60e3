"""The rooms endpoints over real HTTP on a started homeserver: each one's
success, and bad input answered with the right status and errcode and
nothing changed.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _client import Client, q

from ranvier.api.app import ClientApp
from ranvier.api.rooms import add_room_routes
from ranvier.core.client_txns import ClientTransactions
from ranvier.core.creation import EventCreator
from ranvier.core.room_forgetting import RoomForgetting
from ranvier.errors import PartialStateConflictError
from ranvier.federation.transport.listener import HttpListener
from ranvier.storage import EventToPersist, Storage
from ranvier.testing.homeserver import TestUser, open_test_homeserver
from ranvier.web import Router


@dataclass
class Env:
    client: Client
    alice: TestUser
    bob: TestUser
    carol: TestUser

    @property
    def storage(self) -> Storage:
        return self.client.hs.server.storage


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        users = [await hs.register_user(name) for name in ("alice", "bob", "carol")]
        yield Env(Client(hs, http), *users)


async def _room_events(storage: Storage, room_id: str) -> int:
    def count(conn: Any) -> int:
        return int(
            conn.execute("SELECT COUNT(*) FROM events WHERE room_id = ?", (room_id,)).fetchone()[0]
        )

    return await storage.readers.read(count)


# --- Access tokens ---------------------------------------------------------------------

ROOM = "!nowhere:localhost"
ROUTES: Sequence[tuple[str, str]] = [
    ("POST", "/createRoom"),
    ("POST", f"/join/{q(ROOM)}"),
    ("POST", f"/join/{q('#alias:localhost')}"),
    ("GET", "/joined_rooms"),
    ("POST", f"/rooms/{q(ROOM)}/join"),
    ("POST", f"/rooms/{q(ROOM)}/leave"),
    ("POST", f"/rooms/{q(ROOM)}/invite"),
    ("POST", f"/rooms/{q(ROOM)}/kick"),
    ("POST", f"/rooms/{q(ROOM)}/ban"),
    ("POST", f"/rooms/{q(ROOM)}/unban"),
    ("POST", f"/rooms/{q(ROOM)}/forget"),
    ("PUT", f"/rooms/{q(ROOM)}/send/m.room.message/txn"),
    ("PUT", f"/rooms/{q(ROOM)}/state/m.room.name"),
    ("PUT", f"/rooms/{q(ROOM)}/state/m.room.name/key"),
    ("PUT", f"/rooms/{q(ROOM)}/redact/{q('$e')}/txn"),
    ("GET", f"/rooms/{q(ROOM)}/state"),
    ("GET", f"/rooms/{q(ROOM)}/state/m.room.name"),
    ("GET", f"/rooms/{q(ROOM)}/state/m.room.name/key"),
    ("GET", f"/rooms/{q(ROOM)}/event/{q('$e')}"),
    ("GET", f"/rooms/{q(ROOM)}/members"),
    ("GET", f"/rooms/{q(ROOM)}/joined_members"),
    ("GET", f"/rooms/{q(ROOM)}/aliases"),
    ("PUT", f"/directory/room/{q('#alias:localhost')}"),
    ("DELETE", f"/directory/room/{q('#alias:localhost')}"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_a_valid_access_token(env: Env, method: str, path: str) -> None:
    body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
    await env.client.refused(None, method, path, body, status=401, errcode="M_MISSING_TOKEN")
    await env.client.refused(
        None, method, path, body, token="not-a-token", status=401, errcode="M_UNKNOWN_TOKEN"
    )


# --- createRoom ------------------------------------------------------------------------


async def test_create_room_with_everything(env: Env) -> None:
    c = env.client
    room_id = await c.create_room(
        env.alice,
        preset="public_chat",
        name="The room",
        topic="Things",
        invite=[env.bob.user_id],
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
        power_level_content_override={"events_default": 10},
        creation_content={"m.federate": False},
        room_alias_name="the-room",
        is_direct=False,
    )
    state = await c.state(env.alice, room_id)
    create = state[("m.room.create", "")]
    assert create["content"]["room_version"] == "12"
    assert create["content"]["m.federate"] is False
    assert state[("m.room.name", "")]["content"] == {"name": "The room"}
    assert state[("m.room.topic", "")]["content"]["topic"] == "Things"
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}
    assert state[("m.room.power_levels", "")]["content"]["events_default"] == 10
    assert state[("m.room.encryption", "")]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.room.member", env.bob.user_id)]["content"]["membership"] == "invite"
    assert state[("m.room.canonical_alias", "")]["content"] == {"alias": "#the-room:localhost"}
    resolved = await c.ok(None, "GET", f"/directory/room/{q('#the-room:localhost')}")
    assert resolved == {"room_id": room_id, "servers": ["localhost"]}
    assert await c.ok(env.alice, "GET", "/joined_rooms") == {"joined_rooms": [room_id]}


async def test_a_direct_chats_invites_say_so(env: Env) -> None:
    c = env.client
    room_id = await c.create_room(
        env.alice, preset="trusted_private_chat", invite=[env.bob.user_id], is_direct=True
    )
    invite = (await c.state(env.alice, room_id))[("m.room.member", env.bob.user_id)]
    assert invite["content"] == {"membership": "invite", "is_direct": True}
    # The invitee sees the flag in the invite's stripped state.
    synced = await c.ok(env.bob, "GET", "/sync")
    stripped = synced["rooms"]["invite"][room_id]["invite_state"]["events"]
    own = [
        e for e in stripped if e["type"] == "m.room.member" and e["state_key"] == env.bob.user_id
    ]
    assert [event["content"] for event in own] == [{"membership": "invite", "is_direct": True}]
    other = await c.create_room(env.alice, invite=[env.bob.user_id])
    invite = (await c.state(env.alice, other))[("m.room.member", env.bob.user_id)]
    assert invite["content"] == {"membership": "invite"}
    await c.refused(
        env.alice, "POST", "/createRoom", {"is_direct": "yes"}, status=400, errcode="M_BAD_JSON"
    )


async def test_create_room_defaults(env: Env) -> None:
    room_id = await env.client.create_room(env.alice)
    state = await env.client.state(env.alice, room_id)
    assert state[("m.room.create", "")]["content"]["room_version"] == "12"
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}
    public = await env.client.create_room(env.alice, visibility="public", room_version="10")
    state = await env.client.state(env.alice, public)
    assert state[("m.room.create", "")]["content"]["room_version"] == "10"
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}


async def test_create_room_topics_and_the_version_in_creation_content(env: Env) -> None:
    c, alice = env.client, env.alice
    given = {"type": "m.room.topic", "content": {"topic": "As given"}}
    plain = await c.create_room(alice, initial_state=[given])
    # A topic given as state is kept as it is; the topic field wins over it
    # and carries its rich form too.
    assert (await c.state(alice, plain))[("m.room.topic", "")]["content"] == {"topic": "As given"}
    both = await c.create_room(alice, topic="The topic", initial_state=[given])
    assert (await c.state(alice, both))[("m.room.topic", "")]["content"] == {
        "topic": "The topic",
        "m.topic": {"m.text": [{"mimetype": "text/plain", "body": "The topic"}]},
    }
    # creation_content cannot choose the version; its other keys are kept.
    room_id = await c.create_room(
        alice, creation_content={"room_version": "test", "test": "azerty"}
    )
    create = (await c.state(alice, room_id))[("m.room.create", "")]["content"]
    assert (create["room_version"], create["test"]) == ("12", "azerty")


@pytest.mark.parametrize(
    ("body", "raw", "errcode"),
    [
        (None, b"{not json", "M_NOT_JSON"),
        (["a list"], None, "M_BAD_JSON"),
        ({"name": 5}, None, "M_BAD_JSON"),
        ({"invite": "@bob:localhost"}, None, "M_BAD_JSON"),
        ({"invite": ["not a user"]}, None, "M_INVALID_PARAM"),
        ({"initial_state": [5]}, None, "M_BAD_JSON"),
        ({"power_level_content_override": []}, None, "M_BAD_JSON"),
        ({"preset": "secret_chat"}, None, "M_INVALID_PARAM"),
        ({"visibility": "hidden"}, None, "M_INVALID_PARAM"),
        ({"room_version": "99"}, None, "M_UNSUPPORTED_ROOM_VERSION"),
        ({"room_version": "1"}, None, "M_UNSUPPORTED_ROOM_VERSION"),
        ({"room_version": 10}, None, "M_BAD_JSON"),
        ({"room_alias_name": "bad:alias"}, None, "M_INVALID_PARAM"),
        (
            {"initial_state": [{"type": "m.room.member", "state_key": "", "content": {}}]},
            None,
            "M_INVALID_ROOM_STATE",
        ),
    ],
)
async def test_create_room_refuses_bad_input_and_makes_nothing(
    env: Env, body: Any, raw: bytes | None, errcode: str
) -> None:
    await env.client.refused(
        env.alice, "POST", "/createRoom", body, raw=raw, status=400, errcode=errcode
    )
    assert await env.client.ok(env.alice, "GET", "/joined_rooms") == {"joined_rooms": []}
    assert await env.storage.room_members.get_current_membership_event_ids(env.alice.user_id) == {}


async def test_create_room_with_a_taken_alias_is_refused(env: Env) -> None:
    first = await env.client.create_room(env.alice, room_alias_name="taken")
    await env.client.refused(
        env.bob,
        "POST",
        "/createRoom",
        {"room_alias_name": "taken"},
        status=400,
        errcode="M_ROOM_IN_USE",
    )
    assert await env.client.ok(env.bob, "GET", "/joined_rooms") == {"joined_rooms": []}
    resolved = await env.client.ok(None, "GET", f"/directory/room/{q('#taken:localhost')}")
    assert resolved["room_id"] == first


# --- Memberships -----------------------------------------------------------------------


async def test_invite_join_kick_ban_unban_leave_forget(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice)
    room = f"/rooms/{q(room_id)}"
    # Not invited yet: a private room refuses the join.
    await c.refused(bob, "POST", f"{room}/join", {}, status=403, errcode="M_FORBIDDEN")
    assert await c.ok(alice, "POST", f"{room}/invite", {"user_id": bob.user_id}) == {}
    assert await c.ok(bob, "POST", f"/join/{q(room_id)}", {}) == {"room_id": room_id}
    assert await c.ok(bob, "GET", "/joined_rooms") == {"joined_rooms": [room_id]}
    # Bob may not kick Alice, who stays.
    await c.refused(
        bob, "POST", f"{room}/kick", {"user_id": alice.user_id}, status=403, errcode="M_FORBIDDEN"
    )
    state = await c.state(alice, room_id)
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert (
        await c.ok(alice, "POST", f"{room}/kick", {"user_id": bob.user_id, "reason": "out"}) == {}
    )
    kicked = (await c.state(alice, room_id))[("m.room.member", bob.user_id)]
    assert kicked["content"] == {"membership": "leave", "reason": "out"}
    assert kicked["sender"] == alice.user_id
    assert await c.ok(alice, "POST", f"{room}/ban", {"user_id": bob.user_id}) == {}
    assert (await c.state(alice, room_id))[("m.room.member", bob.user_id)]["content"][
        "membership"
    ] == "ban"
    await c.refused(bob, "POST", f"{room}/join", {}, status=403, errcode="M_FORBIDDEN")
    assert await c.ok(alice, "POST", f"{room}/unban", {"user_id": bob.user_id}) == {}
    await c.refused(
        alice, "POST", f"{room}/unban", {"user_id": bob.user_id}, status=403, errcode="M_FORBIDDEN"
    )
    assert (await c.state(alice, room_id))[("m.room.member", bob.user_id)]["content"][
        "membership"
    ] == "leave"
    # Forgetting needs the room left first.
    await c.refused(alice, "POST", f"{room}/forget", {}, status=400, errcode="M_UNKNOWN")
    assert await c.ok(bob, "POST", f"{room}/forget", {}) == {}
    assert await c.ok(alice, "POST", f"{room}/leave", {"reason": "done"}) == {}
    assert await c.ok(alice, "GET", "/joined_rooms") == {"joined_rooms": []}
    assert await c.ok(alice, "POST", f"{room}/forget", {}) == {}


async def test_membership_requests_with_bad_bodies_change_nothing(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice, preset="public_chat")
    room = f"/rooms/{q(room_id)}"
    before = await _room_events(env.storage, room_id)
    for action in ("invite", "kick", "ban", "unban"):
        await c.refused(
            alice, "POST", f"{room}/{action}", {}, status=400, errcode="M_MISSING_PARAM"
        )
        await c.refused(
            alice, "POST", f"{room}/{action}", {"user_id": 5}, status=400, errcode="M_BAD_JSON"
        )
        await c.refused(alice, "POST", f"{room}/{action}", [1], status=400, errcode="M_BAD_JSON")
        await c.refused(
            alice, "POST", f"{room}/{action}", raw=b"{", status=400, errcode="M_NOT_JSON"
        )
    await c.refused(
        alice, "POST", f"{room}/invite", {"user_id": "bob"}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(alice, "POST", f"{room}/leave", {"reason": 5}, status=400, errcode="M_BAD_JSON")
    await c.refused(
        alice, "POST", f"/rooms/{q('not-a-room')}/leave", {}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(
        alice, "POST", f"/join/{q('nothing')}", {}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(
        alice, "POST", f"/join/{q('#unknown:localhost')}", {}, status=404, errcode="M_NOT_FOUND"
    )
    assert await _room_events(env.storage, room_id) == before


async def test_join_by_alias_and_via(env: Env) -> None:
    c = env.client
    room_id = await c.create_room(env.alice, preset="public_chat", room_alias_name="open")
    joined = await c.ok(env.bob, "POST", f"/join/{q('#open:localhost')}", {})
    assert joined == {"room_id": room_id}
    # via and server_name are taken (here the room is local, so not needed).
    joined = await c.ok(
        env.carol,
        "POST",
        f"/join/{q(room_id)}",
        {},
        params=[("via", "elsewhere.example"), ("server_name", "other.example")],
    )
    assert joined == {"room_id": room_id}
    members = await c.ok(env.alice, "GET", f"/rooms/{q(room_id)}/joined_members")
    assert set(members["joined"]) == {env.alice.user_id, env.bob.user_id, env.carol.user_id}


# --- Sending ---------------------------------------------------------------------------


async def test_a_retried_send_returns_the_first_event(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    path = f"/rooms/{q(room_id)}/send/m.room.message/txn1"
    first = await c.ok(alice, "PUT", path, {"msgtype": "m.text", "body": "hi"})
    before = await _room_events(env.storage, room_id)
    again = await c.ok(alice, "PUT", path, {"msgtype": "m.text", "body": "hi"})
    assert again == first
    assert await _room_events(env.storage, room_id) == before
    other = await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/txn2", {"body": "2"})
    assert other["event_id"] != first["event_id"]
    event = await c.ok(alice, "GET", f"/rooms/{q(room_id)}/event/{q(first['event_id'])}")
    assert event["content"] == {"msgtype": "m.text", "body": "hi"}
    assert event["sender"] == alice.user_id
    assert event["type"] == "m.room.message"
    assert "state_key" not in event


async def test_a_send_is_idempotent_across_a_restart(tmp_path: Path) -> None:
    answers: list[Any] = []
    for _ in range(2):
        async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
            client = Client(hs, http)
            if not answers:
                alice = await hs.register_user("alice")
                room_id = await client.create_room(alice)
            path = f"/rooms/{q(room_id)}/send/m.room.message/same"
            answers.append(await client.ok(alice, "PUT", path, {"body": "once"}))
            events = await _room_events(hs.server.storage, room_id)
    assert answers[0] == answers[1]
    assert events == 6 + 1  # the six events that make the room, and one message


async def test_sending_is_for_members_only(env: Env) -> None:
    c, alice, carol = env.client, env.alice, env.carol
    room_id = await c.create_room(alice, preset="public_chat")
    room = f"/rooms/{q(room_id)}"
    before = await _room_events(env.storage, room_id)
    await c.refused(
        carol,
        "PUT",
        f"{room}/send/m.room.message/t",
        {"body": "x"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(
        carol,
        "PUT",
        f"{room}/state/m.room.topic",
        {"topic": "x"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(
        carol,
        "PUT",
        f"/rooms/{q('!unknown:localhost')}/send/m.room.message/t",
        {"body": "x"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(
        alice, "PUT", f"{room}/send/m.room.message/t2", [1], status=400, errcode="M_BAD_JSON"
    )
    await c.refused(
        alice,
        "PUT",
        f"{room}/send/m.room.message/t3",
        raw=b"nope",
        status=400,
        errcode="M_NOT_JSON",
    )
    await c.refused(
        alice, "PUT", f"{room}/send/m.room.message/t4", {"n": 1.5}, status=400, errcode="M_BAD_JSON"
    )
    await c.refused(
        alice, "PUT", f"{room}/send/m.room.create/t5", {}, status=403, errcode="M_FORBIDDEN"
    )
    assert await _room_events(env.storage, room_id) == before
    # A refused transaction is not remembered: the same ID works once allowed.
    await c.ok(carol, "POST", f"{room}/join", {})
    sent = await c.ok(carol, "PUT", f"{room}/send/m.room.message/t", {"body": "x"})
    assert sent["event_id"].startswith("$")


async def test_state_is_put_and_read(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    room = f"/rooms/{q(room_id)}"
    put = await c.ok(alice, "PUT", f"{room}/state/m.room.name", {"name": "named"})
    keyed = await c.ok(alice, "PUT", f"{room}/state/org.example.thing/k1", {"n": 1})
    assert await c.ok(alice, "GET", f"{room}/state/m.room.name") == {"name": "named"}
    assert await c.ok(alice, "GET", f"{room}/state/m.room.name/") == {"name": "named"}
    assert await c.ok(alice, "GET", f"{room}/state/org.example.thing/k1") == {"n": 1}
    event = await c.ok(alice, "GET", f"{room}/state/m.room.name", params={"format": "event"})
    assert event["event_id"] == put["event_id"]
    assert event["state_key"] == ""
    assert event["room_id"] == room_id
    assert isinstance(event["unsigned"]["age"], int)
    state = await c.state(alice, room_id)
    assert state[("org.example.thing", "k1")]["event_id"] == keyed["event_id"]
    await c.refused(alice, "GET", f"{room}/state/m.room.topic", status=404, errcode="M_NOT_FOUND")
    await c.refused(
        alice,
        "GET",
        f"{room}/state/m.room.name",
        params={"format": "xml"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    # Bob joined: power 0 may not name the room (state_default 50).
    await c.ok(bob, "POST", f"{room}/join", {})
    await c.refused(
        bob,
        "PUT",
        f"{room}/state/m.room.name",
        {"name": "bob's"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    assert await c.ok(bob, "GET", f"{room}/state/m.room.name") == {"name": "named"}


async def test_reads_are_for_members_and_former_members(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    room_id = await c.create_room(alice, preset="public_chat", name="before")
    room = f"/rooms/{q(room_id)}"
    message = await c.ok(alice, "PUT", f"{room}/send/m.room.message/m", {"body": "m"})
    for path in ("/state", "/state/m.room.name", "/members", "/joined_members", "/aliases"):
        await c.refused(carol, "GET", room + path, status=403, errcode="M_FORBIDDEN")
    # An event the user may not see is one not found, as the spec has it.
    event_path = f"{room}/event/{q(message['event_id'])}"
    await c.refused(carol, "GET", event_path, status=404, errcode="M_NOT_FOUND")
    await c.ok(bob, "POST", f"{room}/join", {})
    await c.ok(bob, "POST", f"{room}/leave", {})
    await c.ok(alice, "PUT", f"{room}/state/m.room.name", {"name": "after"})
    # Bob sees the room as he left it.
    assert await c.ok(bob, "GET", f"{room}/state/m.room.name") == {"name": "before"}
    members = await c.ok(bob, "GET", f"{room}/members")
    assert {event["state_key"]: event["content"]["membership"] for event in members["chunk"]} == {
        alice.user_id: "join",
        bob.user_id: "leave",
    }
    await c.refused(bob, "GET", f"{room}/joined_members", status=403, errcode="M_FORBIDDEN")
    assert await c.ok(alice, "GET", f"{room}/state/m.room.name") == {"name": "after"}


async def test_members_and_joined_members(env: Env) -> None:
    c, alice, bob, carol = env.client, env.alice, env.bob, env.carol
    room_id = await c.create_room(alice, preset="public_chat", invite=[carol.user_id])
    room = f"/rooms/{q(room_id)}"
    await c.ok(bob, "POST", f"{room}/join", {})
    await c.ok(
        bob,
        "PUT",
        f"{room}/state/m.room.member/{q(bob.user_id)}",
        {"membership": "join", "displayname": "Bob"},
    )
    everyone = await c.ok(alice, "GET", f"{room}/members")
    assert {event["state_key"] for event in everyone["chunk"]} == {
        alice.user_id,
        bob.user_id,
        carol.user_id,
    }
    joined = await c.ok(alice, "GET", f"{room}/members", params={"membership": "join"})
    assert {event["state_key"] for event in joined["chunk"]} == {alice.user_id, bob.user_id}
    not_joined = await c.ok(alice, "GET", f"{room}/members", params={"not_membership": "join"})
    assert [event["state_key"] for event in not_joined["chunk"]] == [carol.user_id]
    await c.refused(
        alice,
        "GET",
        f"{room}/members",
        params={"membership": "x"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    # Just before Bob set his display name, and before the room was made.
    renamed = (await c.state(alice, room_id))[("m.room.member", bob.user_id)]["event_id"]
    stored = await env.storage.get_event(renamed)
    assert stored is not None
    before = await c.ok(
        alice, "GET", f"{room}/members", params={"at": f"t{stored.stream_ordering - 1}"}
    )
    contents = {event["state_key"]: event["content"] for event in before["chunk"]}
    assert contents[bob.user_id] == {"membership": "join"}
    assert set(contents) == {alice.user_id, bob.user_id, carol.user_id}
    assert await c.ok(alice, "GET", f"{room}/members", params={"at": "t0"}) == {"chunk": []}
    await c.refused(
        alice,
        "GET",
        f"{room}/members",
        params={"at": "later"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    assert await c.ok(alice, "GET", f"{room}/joined_members") == {
        "joined": {alice.user_id: {}, bob.user_id: {"display_name": "Bob"}}
    }


async def test_redact_is_idempotent(env: Env) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice)
    room = f"/rooms/{q(room_id)}"
    message = await c.ok(alice, "PUT", f"{room}/send/m.room.message/m", {"body": "oops"})
    path = f"{room}/redact/{q(message['event_id'])}/r1"
    first = await c.ok(alice, "PUT", path, {"reason": "typo"})
    assert await c.ok(alice, "PUT", path, {"reason": "typo"}) == first
    redaction = await c.ok(alice, "GET", f"{room}/event/{q(first['event_id'])}")
    assert redaction["type"] == "m.room.redaction"
    assert redaction["content"] == {"redacts": message["event_id"], "reason": "typo"}
    await c.refused(
        alice,
        "PUT",
        f"{room}/redact/{q(message['event_id'])}/r2",
        {"reason": 1},
        status=400,
        errcode="M_BAD_JSON",
    )
    await c.refused(
        alice, "GET", f"{room}/event/{q('$unknown')}", status=404, errcode="M_NOT_FOUND"
    )


# --- A second partial-state conflict reaches the client as 429 --------------------------


class AlwaysConflicting:
    """Storage whose event writes meet the partial-state conflict every time,
    as a room whose partial state is cleared twice under a write would.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        self.attempts += 1
        raise PartialStateConflictError()


async def test_a_second_partial_state_conflict_is_answered_429(env: Env) -> None:
    hs = env.client.hs.server
    room_id = await env.client.create_room(env.alice)
    conflicting = AlwaysConflicting(hs.storage)
    clock = itertools.count(1_900_000_000_000)
    creator = EventCreator(
        server_name=hs.server_name,
        signing_key=hs.signing_key,
        store=hs.storage,
        persister=conflicting,
        clock=lambda: next(clock),
        conflict_retry_after_ms=750,
    )
    router = Router()
    add_room_routes(
        router,
        server_name=hs.server_name,
        auth=hs.auth,
        creator=creator,
        reader=hs.room_reader,
        joins=hs.room_joins,
        leaves=hs.room_leaves,
        transactions=ClientTransactions(hs.storage.client_transactions),
        directory=hs.room_directory,
        forgetting=RoomForgetting(hs.storage.forgotten_rooms),
    )
    listener = HttpListener(ClientApp(router=router), host="127.0.0.1", port=0, ssl_context=None)
    before = await _room_events(hs.storage, room_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as http:
            client = Client(env.client.hs, http)
            path = f"/rooms/{q(room_id)}/send/m.room.message/conflict"
            status, answer = await client.call(env.alice, "PUT", path, {"body": "never"})
            assert status == 429
            assert answer["errcode"] == "M_LIMIT_EXCEEDED"
            assert answer["retry_after_ms"] == 750
        nursery.cancel_scope.cancel()
    assert conflicting.attempts == 2
    assert await _room_events(hs.storage, room_id) == before
    # Nothing was recorded for the transaction: the client's retry sends it.
    path = f"/rooms/{q(room_id)}/send/m.room.message/conflict"
    sent = await env.client.ok(env.alice, "PUT", path, {"body": "now"})
    assert await _room_events(hs.storage, room_id) == before + 1
    event = await env.client.ok(
        env.alice, "GET", f"/rooms/{q(room_id)}/event/{q(sent['event_id'])}"
    )
    assert event["content"] == {"body": "now"}
