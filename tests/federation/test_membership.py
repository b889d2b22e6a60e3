"""The membership handshakes as the resident server answers them, over real
HTTPS: our routes and storage on one side, b.test's signed client on the
other, doing what a joining (leaving, inviting) server does.

The resident's room: alice (of the resident) creates a public room and
writes a message. b.test's users are bob and carol; c.test has no one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from ranvier.core import compute_event_context, event_to_persist
from ranvier.core.creation import EventCreator
from ranvier.core.joins import RemoteJoiner
from ranvier.errors import MatrixError
from ranvier.federation.membership import (
    FederationInviter,
    FederationJoinClient,
    add_membership_routes,
    room_heroes,
)
from ranvier.federation.transport.client import FederationHttpClient, FederationRequestError
from ranvier.federation.transport.server import Request
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import verify_signed_json
from ranvier.storage import Storage
from ranvier.testing import (
    NOW_MS,
    KnownKeys,
    Pki,
    RemoteHomeserver,
    RoomBuilder,
    ZoneDns,
    ingest_all,
)
from ranvier.testing.hostile import deeply_nested, stream_body
from ranvier.web import StreamResponse

from ._resident import Resident, open_peer, start_resident

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
BOB = "@bob:b.test"
CAROL = "@carol:b.test"
MEMBER = "m.room.member"


def seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class Heard:
    """Keeps the events the notifier is told of."""

    def __init__(self) -> None:
        self.events: list[tuple[Pdu, int]] = []

    async def on_new_event(self, event: Pdu, stream_ordering: int) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append((event, stream_ordering))


@dataclass
class World:
    resident: Resident
    peer: RemoteHomeserver
    stranger: RemoteHomeserver
    heard: Heard
    keys: KnownKeys
    alice: str
    room: RoomBuilder
    pki: Pki
    zone: ZoneDns
    tmp_path: Path

    @property
    def name(self) -> str:
        return self.resident.server_name

    @property
    def storage(self) -> Storage:
        return self.resident.storage

    def new_room(self, version: str = "12") -> RoomBuilder:
        return RoomBuilder(version, self.alice, keys=self.room.keys)

    async def make(self, membership: str, room_id: str, user: str, **query: Any) -> Any:
        path = f"{V1}/make_{membership}/{seg(room_id)}/{seg(user)}"
        return await self.peer.client.get_json(self.name, path, query=query or None)

    async def send(
        self,
        membership: str,
        event: Pdu,
        *,
        path_id: str | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Any:
        version = V1 if membership == "knock" else V2
        path = f"{version}/send_{membership}/{seg(event.room_id)}/{seg(path_id or event.event_id)}"
        return await self.peer.client.put_json(self.name, path, event.json, query=query)

    async def refused(self, call: Any) -> FederationRequestError:
        with pytest.raises(FederationRequestError) as caught:
            await call
        return caught.value

    def sign(self, template: Mapping[str, Any], room_version: str = "12") -> Pdu:
        """What the joining server does with a template: complete and sign it."""
        event = dict(template) | {"origin": "b.test", "origin_server_ts": NOW_MS + 5}
        signed = hash_and_sign_event(event, room_version, "b.test", self.peer.signing_key)
        return Pdu.from_json(signed, room_version)

    async def join(
        self, room: RoomBuilder, user: str = BOB, query: Mapping[str, Any] | None = None
    ) -> tuple[Pdu, Any]:
        answer = await self.make("join", room.room_id, user, ver=[room.version])
        event = self.sign(answer["event"], room.version)
        return event, await self.send("join", event, query=query)


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    zone = ZoneDns.loopback("a.test")
    resident = await start_resident(nursery, tmp_path, pki, keys)
    heard = Heard()
    add_membership_routes(
        resident.app.router,
        server_name=resident.server_name,
        signing_key=resident.signing_key,
        store=resident.storage,
        persister=resident.storage,
        keys=keys,
        notifier=heard,
        clock=lambda: NOW_MS,
    )
    peer = await open_peer(nursery, pki, zone, keys, "b.test")
    stranger = await open_peer(nursery, pki, zone, keys, "c.test")
    alice = f"@alice:{resident.server_name}"
    signing_keys = {
        resident.server_name: resident.signing_key,
        "b.test": peer.signing_key,
        "c.test": stranger.signing_key,
    }
    room = RoomBuilder("12", alice, keys=signing_keys)
    room.public_room(history_visibility="shared")
    room.message(alice, "welcome")
    await ingest_all(resident.storage, room.order)
    return World(resident, peer, stranger, heard, keys, alice, room, pki, zone, tmp_path)


async def stored(storage: Storage, event_id: str) -> bool:
    return await storage.get_event(event_id) is not None


async def membership_now(storage: Storage, room_id: str, user: str) -> str | None:
    event_id = (await storage.get_current_state_ids(room_id)).get((MEMBER, user))
    if event_id is None:
        return None
    event = await storage.get_event(event_id)
    assert event is not None
    membership: str = msgspec.json.decode(event.json)["content"]["membership"]
    return membership


# make_join


async def test_make_join_gives_a_template_on_the_current_state(world: World) -> None:
    room = world.room
    answer = await world.make("join", room.room_id, BOB, ver=["11", "12"])
    assert answer["room_version"] == "12"
    event = answer["event"]
    assert {k: event[k] for k in ("type", "room_id", "sender", "state_key", "content")} == {
        "type": MEMBER,
        "room_id": room.room_id,
        "sender": BOB,
        "state_key": BOB,
        "content": {"membership": "join"},
    }
    assert "origin" not in event, "no PDU has an origin since v1.12"
    assert event["origin_server_ts"] == NOW_MS
    assert event["prev_events"] == [room.last]
    assert event["depth"] == room.events[room.last].depth + 1
    # v12: power levels and join rules; the create event is never cited.
    state = room.state
    expected = {state[("m.room.power_levels", "")], state[("m.room.join_rules", "")]}
    assert set(event["auth_events"]) == expected
    assert "hashes" not in event
    assert "signatures" not in event


async def test_make_join_into_a_room_our_users_all_left_is_not_found(world: World) -> None:
    # A server with no one left in a room cannot vouch for its state: the
    # joining server must ask one that is still in it.
    room = world.room
    await world.make("join", room.room_id, BOB, ver=["12"])
    room.member(world.alice, "leave")
    await ingest_all(world.storage, room.order[-1:])
    for membership in ("join", "leave", "knock"):
        error = await world.refused(world.make(membership, room.room_id, BOB, ver=["12"]))
        assert (error.status, error.errcode) == (404, "M_NOT_FOUND")


async def test_make_join_refuses_a_banned_user(world: World) -> None:
    room = world.room
    room.member(world.alice, "ban", BOB)
    await ingest_all(world.storage, room.order[-1:])
    error = await world.refused(world.make("join", room.room_id, BOB, ver=["12"]))
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")
    assert "ban" in (error.error or "")


async def test_make_join_refuses_an_uninvited_user_of_an_invite_only_room(world: World) -> None:
    room = world.room
    room.state_event(world.alice, "m.room.join_rules", {"join_rule": "invite"})
    await ingest_all(world.storage, room.order[-1:])
    error = await world.refused(world.make("join", room.room_id, BOB, ver=["12"]))
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")
    room.member(world.alice, "invite", BOB)
    await ingest_all(world.storage, room.order[-1:])
    answer = await world.make("join", room.room_id, BOB, ver=["12"])
    assert answer["event"]["content"] == {"membership": "join"}


async def test_make_join_refusals(world: World) -> None:
    room_id = world.room.room_id
    incompatible = await world.refused(world.make("join", room_id, BOB, ver=["10", "11"]))
    assert (incompatible.status, incompatible.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    assert incompatible.body["room_version"] == "12"
    # Without ver, a server speaks only version 1.
    default = await world.refused(world.make("join", room_id, BOB))
    assert default.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    unknown = await world.refused(world.make("join", "!nowhere:a.test", BOB, ver=["12"]))
    assert (unknown.status, unknown.errcode) == (404, "M_NOT_FOUND")
    # A server asks only for its own users.
    other = await world.refused(world.make("join", room_id, "@eve:c.test", ver=["12"]))
    assert (other.status, other.errcode) == (403, "M_FORBIDDEN")


async def test_server_acl_shuts_out_the_handshakes(world: World) -> None:
    room = world.room
    room.state_event(world.alice, "m.room.server_acl", {"allow": ["*"], "deny": ["b.test"]})
    await ingest_all(world.storage, room.order[-1:])
    error = await world.refused(world.make("join", room.room_id, BOB, ver=["12"]))
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")


# send_join


async def test_send_join_writes_the_join_and_answers_with_the_state(world: World) -> None:
    room = world.room
    event, answer = await world.join(room)

    assert "origin" not in answer, "the spec's send_join answer has none (v1.14)"
    assert answer["members_omitted"] is False
    state = {Pdu.from_json(msgspec.json.encode(e), "12").event_id for e in answer["state"]}
    assert state == set(room.state.values())
    chain = {Pdu.from_json(msgspec.json.encode(e), "12").event_id for e in answer["auth_chain"]}
    assert set(event.auth_event_ids) <= chain | state
    returned = Pdu.from_json(msgspec.json.encode(answer["event"]), "12")
    assert returned.event_id == event.event_id
    # Countersigned by the resident, the joiner's signature kept.
    assert set(returned.signatures) == {"b.test", world.name}
    redacted = redact(returned.json, "12")
    verify_signed_json(redacted, "b.test", world.peer.signing_key.verify_key)
    verify_signed_json(redacted, world.name, world.resident.signing_key.verify_key)
    row = await world.storage.get_event(event.event_id)
    assert row is not None
    assert row.json == returned.raw
    assert await membership_now(world.storage, room.room_id, BOB) == "join"
    assert await world.storage.get_forward_extremities(room.room_id) == {event.event_id}
    assert [e.event_id for e, _ in world.heard.events] == [event.event_id]


async def test_send_join_again_answers_the_same_without_a_second_event(world: World) -> None:
    event, first = await world.join(world.room)
    again = await world.send("join", event)
    assert again["state"] == first["state"]
    assert len(world.heard.events) == 1


async def test_send_join_with_a_bad_signature_is_refused(world: World) -> None:
    answer = await world.make("join", world.room.room_id, BOB, ver=["12"])
    event = world.sign(answer["event"])
    forged = dict(event.json)
    forged["signatures"] = {"b.test": {"ed25519:p1": "A" * 86}}
    bad = Pdu.from_json(forged, "12")
    error = await world.refused(world.send("join", bad))
    assert (error.status, error.errcode) == (400, "M_INVALID_PARAM")
    assert "signed" in (error.error or "")
    assert not await stored(world.storage, bad.event_id)
    assert world.heard.events == []


async def test_send_join_checks_what_the_event_is(world: World) -> None:
    room = world.room
    answer = await world.make("join", room.room_id, BOB, ver=["12"])
    event = world.sign(answer["event"])
    wrong_id = await world.refused(world.send("join", event, path_id="$other"))
    assert (wrong_id.status, wrong_id.errcode) == (400, "M_INVALID_PARAM")

    leave = world.sign(answer["event"] | {"content": {"membership": "leave"}})
    not_a_join = await world.refused(world.send("join", leave))
    assert (not_a_join.status, not_a_join.errcode) == (400, "M_INVALID_PARAM")

    for_carol = world.sign(answer["event"] | {"state_key": CAROL})
    not_the_sender = await world.refused(world.send("join", for_carol))
    assert (not_the_sender.status, not_the_sender.errcode) == (400, "M_INVALID_PARAM")

    tampered = dict(event.json) | {"content": {"membership": "join", "displayname": "x"}}
    bad_hash = Pdu.from_json(tampered, "12")
    hash_error = await world.refused(world.send("join", bad_hash))
    assert (hash_error.status, hash_error.errcode) == (400, "M_INVALID_PARAM")

    for bad in (event, leave, for_carol, bad_hash):
        assert not await stored(world.storage, bad.event_id)
    assert await membership_now(world.storage, room.room_id, BOB) is None


async def test_send_join_failing_the_auth_rules_is_refused(world: World) -> None:
    room = world.room
    answer = await world.make("join", room.room_id, BOB, ver=["12"])
    # Bob is banned after the template was handed out.
    room.member(world.alice, "ban", BOB)
    await ingest_all(world.storage, room.order[-1:])
    event = world.sign(answer["event"])
    error = await world.refused(world.send("join", event))
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")
    assert not await stored(world.storage, event.event_id)
    assert await membership_now(world.storage, room.room_id, BOB) == "ban"


# send_join with omit_members (MSC3706)


def event_ids(events: Sequence[Any]) -> list[str]:
    return [Pdu.from_json(msgspec.json.encode(e), "12").event_id for e in events]


def member_keys(room: RoomBuilder, ids: Sequence[str]) -> set[str]:
    return {
        str(room.events[event_id].state_key)
        for event_id in ids
        if room.events[event_id].type == MEMBER
    }


async def crowded_room(world: World, *, name: str | None = None) -> tuple[RoomBuilder, list[str]]:
    """A public room with seven members of c.test besides alice, and bob
    invited last; named ``name`` if given."""
    room = world.new_room()
    room.public_room(history_visibility="shared")
    users = [f"@u{index}:c.test" for index in range(7)]
    for user in users:
        room.member(user, "join")
    if name is not None:
        room.state_event(world.alice, "m.room.name", {"name": name})
    room.member(world.alice, "invite", BOB)
    await ingest_all(world.storage, room.order)
    return room, users


def check_auth_chain_closed(room: RoomBuilder, answer: Any, join: Pdu) -> None:
    """Every event the answer returns has its auth events in the answer, and
    the auth chain repeats nothing of the state."""
    state, chain = set(event_ids(answer["state"])), set(event_ids(answer["auth_chain"]))
    assert not state & chain
    for event_id in (*state, *chain, join.event_id):
        cited = room.events[event_id].auth_event_ids if event_id in room.events else ()
        assert set(cited) <= state | chain, event_id
    assert set(join.auth_event_ids) <= state | chain


async def test_send_join_omitting_members_keeps_heroes_and_the_joiners_membership(
    world: World,
) -> None:
    room, users = await crowded_room(world)
    join, answer = await world.join(room, query={"omit_members": "true"})

    assert answer["members_omitted"] is True
    assert sorted(answer["servers_in_room"]) == sorted(["c.test", world.name])
    state = event_ids(answer["state"])
    non_members = {event_id for (kind, _), event_id in room.state.items() if kind != MEMBER}
    assert non_members <= set(state)
    # Unnamed: the heroes are the first five joined or invited by the
    # order they were written, bob left out; and bob's own invite.
    assert member_keys(room, state) == {world.alice, *users[:4], BOB}
    assert room.state[(MEMBER, BOB)] in state
    check_auth_chain_closed(room, answer, join)
    assert await membership_now(world.storage, room.room_id, BOB) == "join"


async def test_send_join_omitting_members_of_a_named_room(world: World) -> None:
    room, _ = await crowded_room(world, name="The Room")
    join, answer = await world.join(room, query={"omit_members": "true"})
    state = event_ids(answer["state"])
    assert member_keys(room, state) == {BOB}  # only the joiner's invite
    # Alice's join is not state here, but power levels rest on it.
    chain = event_ids(answer["auth_chain"])
    assert room.state[(MEMBER, world.alice)] in chain
    check_auth_chain_closed(room, answer, join)
    full_join, full = await world.join(room, CAROL, query={"omit_members": "false"})
    assert full["members_omitted"] is False
    assert "servers_in_room" not in full
    assert len([e for e in full["state"] if e["type"] == MEMBER]) == 9  # bob's join too
    assert len(msgspec.json.encode(full)) > len(msgspec.json.encode(answer))
    assert full_join.event_id != join.event_id


async def test_send_join_omitting_members_names_each_server_with_a_joined_member(
    world: World,
) -> None:
    # c.test keeps one joined member among several who left; b.test has
    # none left joined before carol's join; whichever member of a server is
    # looked at first.
    room = world.new_room()
    room.public_room()
    room.state_event(world.alice, "m.room.name", {"name": "Comings and goings"})
    d_users = [f"@d{index}:c.test" for index in range(4)]
    e_users = [f"@e{index}:b.test" for index in range(3)]
    for user in (*d_users, *e_users):
        room.member(user, "join")
    for user in (*d_users[:2], *d_users[3:], *e_users):
        room.member(user, "leave")
    await ingest_all(world.storage, room.order)
    _, answer = await world.join(room, CAROL, query={"omit_members": "true"})
    assert answer["servers_in_room"] == sorted(["c.test", world.name])
    assert member_keys(room, event_ids(answer["state"])) == set()


async def test_send_join_with_an_omit_members_that_is_not_a_boolean(world: World) -> None:
    answer = await world.make("join", world.room.room_id, BOB, ver=["12"])
    event = world.sign(answer["event"])
    error = await world.refused(world.send("join", event, query={"omit_members": "yes"}))
    assert (error.status, error.errcode) == (400, "M_INVALID_PARAM")
    assert not await stored(world.storage, event.event_id)


def test_room_heroes_follow_the_spec() -> None:
    memberships: dict[str, tuple[int, str | None]] = {
        "@a:x": (5, "join"),
        "@b:x": (1, "invite"),
        "@me:x": (0, "join"),
        "@c:x": (3, "leave"),
        "@d:x": (2, "join"),
        "@e:x": (9, "join"),
        "@f:x": (7, "join"),
        "@g:x": (8, "join"),
        "@h:x": (4, "ban"),
    }
    assert room_heroes(memberships, "@me:x") == ["@b:x", "@d:x", "@a:x", "@f:x", "@g:x"]
    assert room_heroes(memberships, "@me:x", count=2) == ["@b:x", "@d:x"]
    gone = {"@c:x": (3, "leave"), "@h:x": (4, "ban"), "@k:x": (1, "knock"), "@me:x": (0, "join")}
    assert room_heroes(gone, "@me:x") == ["@c:x", "@h:x"]
    assert room_heroes({"@me:x": (0, "join")}, "@me:x") == []


# make_leave and send_leave


async def test_leave_through_the_handshake(world: World) -> None:
    room = world.room
    join, _ = await world.join(room)
    answer = await world.make("leave", room.room_id, BOB)
    assert answer["room_version"] == "12"
    assert answer["event"]["content"] == {"membership": "leave"}
    assert answer["event"]["prev_events"] == [join.event_id]
    leave = world.sign(answer["event"])
    assert await world.send("leave", leave) == {}
    assert await membership_now(world.storage, room.room_id, BOB) == "leave"
    assert [e.event_id for e, _ in world.heard.events] == [join.event_id, leave.event_id]


async def test_another_server_cannot_replay_a_users_join_or_leave(world: World) -> None:
    # Only bob's own server speaks for him: c.test, though it holds copies
    # of his events, cannot rejoin him once he left, nor make him leave
    # again once he is back.
    room = world.room
    join, _ = await world.join(room)
    leave = world.sign((await world.make("leave", room.room_id, BOB))["event"])
    await world.send("leave", leave)
    for membership, replayed in (("join", join), ("leave", leave)):
        if membership == "leave":
            await world.join(room)
        path = f"{V2}/send_{membership}/{seg(room.room_id)}/{seg(replayed.event_id)}"
        with pytest.raises(FederationRequestError) as caught:
            await world.stranger.client.put_json(world.name, path, replayed.json)
        assert (caught.value.status, caught.value.errcode) == (400, "M_INVALID_PARAM")
        assert "not a user of c.test" in (caught.value.error or "")
        expected = "leave" if membership == "join" else "join"
        assert await membership_now(world.storage, room.room_id, BOB) == expected


async def test_send_leave_takes_nothing_but_a_leave(world: World) -> None:
    room = world.room
    join, _ = await world.join(room)
    answer = await world.make("leave", room.room_id, BOB)
    for membership in ("join", "invite", "ban", "knock"):
        other = world.sign(answer["event"] | {"content": {"membership": membership}})
        error = await world.refused(world.send("leave", other))
        assert (error.status, error.errcode) == (400, "M_INVALID_PARAM"), membership
        assert not await stored(world.storage, other.event_id)
    assert await membership_now(world.storage, room.room_id, BOB) == "join"
    assert [e.event_id for e, _ in world.heard.events] == [join.event_id]


@pytest.mark.parametrize("membership", ["join", "leave", "knock"])
async def test_send_join_and_send_leave_refuse_every_other_kind_of_event(
    world: World, membership: str
) -> None:
    """Whatever else a server puts through send_join, send_leave or
    send_knock, signed and built on a real template, is refused with 400
    and not written: a message, a member event without a state key, the
    other memberships, and the right membership for someone other than its
    sender. The room is public, so a knock's template is a join's."""
    room = world.room
    join, _ = await world.join(room, CAROL)
    made = "join" if membership == "knock" else membership
    answer = await world.make(made, room.room_id, CAROL, ver=["12"])
    template = answer["event"] | {"content": {"membership": membership}}
    message = {k: v for k, v in template.items() if k != "state_key"}
    wrong = {
        "a message": message | {"type": "m.room.message", "content": {"body": "bzz"}},
        "a member event without a state key": message | {"content": {"membership": membership}},
        "the right membership for another user": template | {"state_key": BOB},
    }
    for other in ("join", "leave", "invite", "knock", "ban"):
        if other != membership:
            wrong[f"a {other}"] = template | {"content": {"membership": other}}
    for what, fields in wrong.items():
        event = world.sign(fields)
        error = await world.refused(world.send(membership, event))
        assert (error.status, error.errcode) == (400, "M_INVALID_PARAM"), what
        assert not await stored(world.storage, event.event_id), what
    assert await membership_now(world.storage, room.room_id, CAROL) == "join"
    assert await membership_now(world.storage, room.room_id, BOB) is None
    assert [e.event_id for e, _ in world.heard.events] == [join.event_id]


async def test_make_leave_for_a_user_not_in_the_room_is_refused(world: World) -> None:
    error = await world.refused(world.make("leave", world.room.room_id, CAROL))
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")


async def test_another_server_cannot_make_a_leave_for_our_user(world: World) -> None:
    # A template for alice's leave, signed by b.test, would be a kick in
    # her name.
    for membership in ("leave", "join", "knock"):
        error = await world.refused(
            world.make(membership, world.room.room_id, world.alice, ver=["12"])
        )
        assert (error.status, error.errcode) == (403, "M_FORBIDDEN"), membership


async def test_a_room_with_partial_state_sends_other_servers_elsewhere(world: World) -> None:
    """Joins, leaves and knocks through a server that has only part of the
    room's state are 404, as if it were not in the room; once the state is
    complete they are answered again."""
    storage = world.storage
    room = world.new_room()
    room.public_room(history_visibility="shared")
    bob_join = room.member(BOB, "join")
    await ingest_all(storage, room.order)
    await storage.store_partial_join(room.room_id, "12", bob_join.event_id, "b.test", ["b.test"])
    message = room.message(world.alice, "partial")
    context = await compute_event_context(
        message, storage, storage, state_ids_before=room.state, partial_state=True
    )
    await storage.persist_events([event_to_persist(message, context)])
    carol_join, bob_leave = room.member(CAROL, "join"), room.member(BOB, "leave")
    carol_knock = room.member(CAROL, "knock", prev=[message.event_id])

    calls = [
        world.make("join", room.room_id, CAROL, ver=["12"]),
        world.send("join", carol_join),
        world.send("join", carol_join, query={"omit_members": "true"}),
        world.make("leave", room.room_id, BOB),
        world.send("leave", bob_leave),
        world.make("knock", room.room_id, CAROL, ver=["12"]),
        world.send("knock", carol_knock),
    ]
    for call in calls:
        error = await world.refused(call)
        assert (error.status, error.errcode) == (404, "M_NOT_FOUND")
        assert "full state" in (error.error or "")
    for event in (carol_join, bob_leave, carol_knock):
        assert not await stored(storage, event.event_id)

    # The un-partial-state task finishes the room.
    groups = await storage.get_event_state_groups(message.event_id)
    assert groups is not None
    await storage.update_state_for_partial_event(message.event_id, groups.before, groups.after)
    assert await storage.clear_partial_state(room.room_id)
    answer = await world.make("leave", room.room_id, BOB)
    assert answer["event"]["prev_events"] == [message.event_id]
    assert await world.send("leave", world.sign(answer["event"])) == {}
    assert await membership_now(storage, room.room_id, BOB) == "leave"


# make_knock and send_knock


async def test_knock_through_the_handshake(world: World) -> None:
    room = world.new_room()
    room.public_room(history_visibility="shared")
    room.state_event(world.alice, "m.room.join_rules", {"join_rule": "knock"})
    await ingest_all(world.storage, room.order)
    answer = await world.make("knock", room.room_id, CAROL, ver=["12"])
    assert answer["room_version"] == "12"
    assert answer["event"]["content"] == {"membership": "knock"}
    knock = world.sign(answer["event"])
    reply = await world.send("knock", knock)
    shown = event_ids(reply["knock_room_state"])
    assert room.create.event_id in shown
    assert room.state[("m.room.join_rules", "")] in shown
    assert knock.event_id in shown  # the knock itself, the knocker's membership now
    assert await membership_now(world.storage, room.room_id, CAROL) == "knock"
    assert [e.event_id for e, _ in world.heard.events] == [knock.event_id]


async def test_knock_refusals(world: World) -> None:
    # A public room takes no knocks.
    public = await world.refused(world.make("knock", world.room.room_id, CAROL, ver=["12"]))
    assert (public.status, public.errcode) == (403, "M_FORBIDDEN")
    old = world.new_room("6")
    old.public_room(history_visibility="shared")
    await ingest_all(world.storage, old.order)
    no_knocks = await world.refused(world.make("knock", old.room_id, CAROL, ver=["6"]))
    assert (no_knocks.status, no_knocks.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    knock = old.member(CAROL, "knock")
    refused = await world.refused(world.send("knock", knock))
    assert (refused.status, refused.errcode) == (403, "M_FORBIDDEN")
    assert not await stored(world.storage, knock.event_id)
    not_offered = await world.refused(world.make("knock", world.room.room_id, CAROL, ver=["11"]))
    assert (not_offered.status, not_offered.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")


# Restricted rooms


async def restricted_room(world: World, allow: list[dict[str, Any]]) -> RoomBuilder:
    room = world.new_room("10")
    room.public_room(history_visibility="shared")
    room.state_event(world.alice, "m.room.join_rules", {"join_rule": "restricted", "allow": allow})
    await ingest_all(world.storage, room.order)
    return room


async def test_restricted_join_is_vouched_for_by_a_local_user(world: World) -> None:
    await world.join(world.room)  # bob is in the room the rule names
    room = await restricted_room(
        world, [{"type": "m.room_membership", "room_id": world.room.room_id}]
    )
    answer = await world.make("join", room.room_id, BOB, ver=["10"])
    assert answer["event"]["content"] == {
        "membership": "join",
        "join_authorised_via_users_server": world.alice,
    }
    event = world.sign(answer["event"], "10")
    response = await world.send("join", event)
    assert world.name in response["event"]["signatures"]
    assert await membership_now(world.storage, room.room_id, BOB) == "join"

    # Carol is in no room the rule names.
    error = await world.refused(world.make("join", room.room_id, CAROL, ver=["10"]))
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")


async def test_restricted_join_through_rooms_unknown_here(world: World) -> None:
    room = await restricted_room(
        world, [{"type": "m.room_membership", "room_id": "!elsewhere:c.test"}]
    )
    error = await world.refused(world.make("join", room.room_id, BOB, ver=["10"]))
    assert (error.status, error.errcode) == (400, "M_UNABLE_TO_AUTHORISE_JOIN")


async def test_send_join_holds_a_join_naming_our_user_to_the_conditions(world: World) -> None:
    """A server that skips make_join and names our user itself gets no
    signature for a user who is in none of the allowed rooms."""
    await world.join(world.room)  # bob is in the room the rule names; carol is not
    room = await restricted_room(
        world, [{"type": "m.room_membership", "room_id": world.room.room_id}]
    )
    template = (await world.make("join", room.room_id, BOB, ver=["10"]))["event"]
    assert template["content"]["join_authorised_via_users_server"] == world.alice
    forged = world.sign(template | {"sender": CAROL, "state_key": CAROL}, "10")
    refused = await world.refused(world.send("join", forged))
    assert (refused.status, refused.errcode) == (403, "M_FORBIDDEN")
    assert not await stored(world.storage, forged.event_id)
    assert await membership_now(world.storage, room.room_id, CAROL) is None


async def test_restricted_join_with_no_local_inviter_asks_for_another_server(
    world: World,
) -> None:
    await world.join(world.room)
    room = world.new_room("10")
    room.public_room(history_visibility="shared")
    allow = [{"type": "m.room_membership", "room_id": world.room.room_id}]
    room.state_event(world.alice, "m.room.join_rules", {"join_rule": "restricted", "allow": allow})
    # Alice lowers her own level below the invite level: no one here may vouch.
    room.power_levels(world.alice, {world.alice: 40}, content={"invite": 50})
    await ingest_all(world.storage, room.order)
    error = await world.refused(world.make("join", room.room_id, BOB, ver=["10"]))
    assert (error.status, error.errcode) == (400, "M_UNABLE_TO_GRANT_JOIN")


# invite


def invite_of(world: World, *, target: str, room_version: str = "12") -> tuple[RoomBuilder, Pdu]:
    """A room of b.test's bob, and his invite of ``target``."""
    room = RoomBuilder(room_version, BOB, keys=world.room.keys)
    room.public_room(history_visibility="shared")
    invite = room.member(BOB, "invite", target)
    return room, invite


async def put_invite(world: World, invite: Pdu, **body: Any) -> Any:
    path = f"{V2}/invite/{seg(invite.room_id)}/{seg(invite.event_id)}"
    content = {"room_version": invite.room_version.identifier, "event": invite.json} | body
    return await world.peer.client.put_json(world.name, path, content)


async def test_invite_of_a_local_user_is_countersigned_and_kept(world: World) -> None:
    target = f"@dora:{world.name}"
    room, invite = invite_of(world, target=target)
    answer = await put_invite(world, invite, invite_room_state=[room.create.json])
    signed = Pdu.from_json(msgspec.json.encode(answer["event"]), "12")
    assert signed.event_id == invite.event_id
    assert set(signed.signatures) == {"b.test", world.name}
    verify_signed_json(redact(signed.json, "12"), world.name, world.resident.signing_key.verify_key)
    row = await world.storage.get_event(invite.event_id)
    assert row is not None
    assert row.outlier
    # The room state sent with it is kept stripped beside the event, in its
    # unsigned, which the answer leaves out.
    create = room.create.json
    kept = msgspec.json.decode(row.json)
    assert kept["unsigned"]["invite_room_state"] == [
        {key: create[key] for key in ("type", "state_key", "content", "sender")}
    ]
    assert "invite_room_state" not in answer["event"].get("unsigned", {})
    assert Pdu.from_json(row.json, "12").event_id == invite.event_id


async def test_invite_refusals(world: World) -> None:
    target = f"@dora:{world.name}"
    room, invite = invite_of(world, target=target)
    not_ours = invite_of(world, target="@dora:c.test")[1]
    error = await world.refused(put_invite(world, not_ours, invite_room_state=[room.create.json]))
    assert (error.status, error.errcode) == (400, "M_INVALID_PARAM")
    no_create = await world.refused(put_invite(world, invite, invite_room_state=[]))
    assert (no_create.status, no_create.errcode) == (400, "M_INVALID_PARAM")
    unsupported = await world.refused(
        put_invite(world, invite, room_version="5", invite_room_state=[room.create.json])
    )
    assert (unsupported.status, unsupported.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    forged = Pdu.from_json(dict(invite.json) | {"signatures": {}}, "12")
    unsigned = await world.refused(put_invite(world, forged, invite_room_state=[room.create.json]))
    assert (unsigned.status, unsigned.errcode) == (400, "M_INVALID_PARAM")
    for event in (not_ours, invite):
        assert not await stored(world.storage, event.event_id)


# Two servers: an invite from one, then the join through it.


async def test_invite_then_join_between_two_servers(world: World, nursery: trio.Nursery) -> None:
    a = world.resident
    b = await start_resident(nursery, world.tmp_path, world.pki, world.keys, host="b.test")
    add_membership_routes(
        b.app.router,
        server_name=b.server_name,
        signing_key=b.signing_key,
        store=b.storage,
        persister=b.storage,
        keys=world.keys,
    )
    world.zone.addresses["b.test"] = ["127.0.0.1"]

    async def client_of(server: Resident) -> FederationHttpClient:
        http = FederationHttpClient(
            server.server_name,
            server.signing_key,
            ssl_context=world.pki.client_context(),
            dns=world.zone,
        )
        await nursery.start(http.run)
        return http

    a_http, b_http = await client_of(a), await client_of(b)
    creator = EventCreator(
        server_name=a.server_name,
        signing_key=a.signing_key,
        store=a.storage,
        persister=a.storage,
        remote_inviter=FederationInviter(a_http, store=a.storage, keys=world.keys),
    )
    room_id = await creator.create_room(world.alice, preset="private_chat", name="Invited")
    dora = f"@dora:{b.server_name}"
    invite_id = await creator.invite(world.alice, room_id, dora)

    # b.test signed it and keeps it; a.test wrote it with both signatures.
    kept = await b.storage.get_event(invite_id)
    assert kept is not None
    assert kept.outlier
    written = await a.storage.get_event(invite_id)
    assert written is not None
    invite = Pdu.from_json(written.json, "12")
    verify_signed_json(redact(invite.json, "12"), b.server_name, b.signing_key.verify_key)
    assert await membership_now(a.storage, room_id, dora) == "invite"

    joiner = RemoteJoiner(
        server_name=b.server_name,
        signing_key=b.signing_key,
        client=FederationJoinClient(b_http),
        keys=world.keys,
        store=b.storage,
        persister=b.storage,
    )
    joined = await joiner.join_remote_room(dora, room_id, [a.server_name])
    assert joined.via == a.server_name
    assert await membership_now(a.storage, room_id, dora) == "join"
    assert await membership_now(b.storage, room_id, dora) == "join"
    # A named room, joined with partial state: every event of a.test's state
    # but alice's membership, which b.test learns of when the state is full.
    assert joined.partial_state
    assert await b.storage.is_partial_state_room(room_id)
    full = dict(await a.storage.get_current_state_ids(room_id))
    del full[(MEMBER, world.alice)]
    assert await b.storage.get_current_state_ids(room_id) == full


async def _inviting_creator(world: World, nursery: trio.Nursery) -> EventCreator:
    """The resident's event creator, inviting other servers' users through
    them over HTTPS, with b.test reachable."""
    a = world.resident
    world.zone.addresses["b.test"] = ["127.0.0.1"]
    http = FederationHttpClient(
        a.server_name, a.signing_key, ssl_context=world.pki.client_context(), dns=world.zone
    )
    await nursery.start(http.run)
    return EventCreator(
        server_name=a.server_name,
        signing_key=a.signing_key,
        store=a.storage,
        persister=a.storage,
        remote_inviter=FederationInviter(http, store=a.storage, keys=world.keys),
    )


async def test_an_invite_the_invitees_server_refuses(world: World, nursery: trio.Nursery) -> None:
    a = world.resident
    # b.test does not know a.test's key, so it refuses a.test's requests.
    b = await start_resident(nursery, world.tmp_path, world.pki, KnownKeys(), host="b.test")
    add_membership_routes(
        b.app.router,
        server_name=b.server_name,
        signing_key=b.signing_key,
        store=b.storage,
        persister=b.storage,
        keys=b.keys,
    )
    creator = await _inviting_creator(world, nursery)
    room_id = await creator.create_room(world.alice, preset="private_chat")
    refused, unreachable = f"@erin:{b.server_name}", "@erin:nowhere.test"
    with pytest.raises(MatrixError) as caught:
        await creator.invite(world.alice, room_id, refused)
    assert (caught.value.http_status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
    with pytest.raises(MatrixError) as caught:
        await creator.invite(world.alice, room_id, unreachable)
    assert caught.value.http_status == 502
    for target in (refused, unreachable):
        assert await membership_now(a.storage, room_id, target) is None


async def test_an_invite_answered_without_the_invitees_signature(
    world: World, nursery: trio.Nursery
) -> None:
    a = world.resident
    b = await start_resident(nursery, world.tmp_path, world.pki, world.keys, host="b.test")

    async def echo_unsigned(request: Request) -> Any:
        return {"event": request.content["event"]}

    b.app.router.add("PUT", f"{V2}/invite/{{room_id}}/{{event_id}}", echo_unsigned)
    creator = await _inviting_creator(world, nursery)
    room_id = await creator.create_room(world.alice, preset="private_chat")
    target = f"@erin:{b.server_name}"
    with pytest.raises(MatrixError) as caught:
        await creator.invite(world.alice, room_id, target)
    assert caught.value.http_status == 502
    assert "no signature" in caught.value.message
    assert await membership_now(a.storage, room_id, target) is None


async def test_an_invite_answered_with_json_nested_too_deeply(
    world: World, nursery: trio.Nursery
) -> None:
    a = world.resident
    b = await start_resident(nursery, world.tmp_path, world.pki, world.keys, host="b.test")

    async def deep(request: Request) -> StreamResponse:
        return stream_body(b'{"event": ' + deeply_nested(5_000) + b"}")

    b.app.router.add("PUT", f"{V2}/invite/{{room_id}}/{{event_id}}", deep)
    creator = await _inviting_creator(world, nursery)
    room_id = await creator.create_room(world.alice, preset="private_chat")
    target = f"@erin:{b.server_name}"
    with pytest.raises(MatrixError) as caught:
        await creator.invite(world.alice, room_id, target)
    # The remote's bad answer, as any other answer that is not the signed event.
    assert caught.value.http_status == 502
    assert "not the signed event" in caught.value.message
    assert await membership_now(a.storage, room_id, target) is None


# A room with a policy server (spec v1.18): joins, leaves and knocks received
# are checked with it, as any event received is.


class Recommender:
    """Stands for the room's policy server: recommends all but ``refused``,
    adding a mark to what it recommends."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.asked: list[str] = []

    async def recommended(self, event: Pdu) -> Pdu | None:
        await trio.lowlevel.checkpoint()
        self.asked.append(event.sender)
        if event.sender in self.refused:
            return None
        unsigned = {"recommended": True}
        return Pdu.from_json(dict(event.json) | {"unsigned": unsigned}, event.room_version)


async def test_a_join_the_policy_server_does_not_recommend_is_refused(
    world: World, nursery: trio.Nursery
) -> None:
    d = await start_resident(nursery, world.tmp_path, world.pki, world.keys, host="d.test")
    world.zone.addresses["d.test"] = ["127.0.0.1"]
    recommender = Recommender()
    add_membership_routes(
        d.app.router,
        server_name=d.server_name,
        signing_key=d.signing_key,
        store=d.storage,
        persister=d.storage,
        keys=world.keys,
        policy_servers=recommender,
        clock=lambda: NOW_MS,
    )
    dave = f"@dave:{d.server_name}"
    keys = {d.server_name: d.signing_key, "b.test": world.peer.signing_key}
    room = RoomBuilder("12", dave, keys=keys)
    room.public_room(history_visibility="shared")
    await ingest_all(d.storage, room.order)

    async def join(user: str) -> tuple[Pdu, Any]:
        path = f"{V1}/make_join/{seg(room.room_id)}/{seg(user)}"
        answer = await world.peer.client.get_json(d.server_name, path, query={"ver": ["12"]})
        event = world.sign(answer["event"])
        path = f"{V2}/send_join/{seg(room.room_id)}/{seg(event.event_id)}"
        return event, world.peer.client.put_json(d.server_name, path, event.json)

    recommender.refused.add(BOB)
    refused, call = await join(BOB)
    error = await world.refused(call)
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")
    assert not await stored(d.storage, refused.event_id)
    assert await membership_now(d.storage, room.room_id, BOB) is None

    carol = "@carol:b.test"
    accepted, call = await join(carol)
    await call
    assert recommender.asked == [BOB, carol]
    row = await d.storage.get_event(accepted.event_id)
    assert row is not None
    assert msgspec.json.decode(row.json)["unsigned"] == {"recommended": True}
    assert await membership_now(d.storage, room.room_id, carol) == "join"
