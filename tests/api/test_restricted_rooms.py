"""Restricted rooms through the client API, on one server and across
servers over loopback TLS: a join is let in by membership of an allowed
room or an invite, refused once that membership is gone or the rule's
``allow`` is malformed, and vouched for by a user able to invite on the
server that answers, or on another named server when the first cannot.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from _client import Client, q
from _federation import eventually

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki

_VOUCHER = "join_authorised_via_users_server"


def _rules(rule: str, allowed: str, via: str) -> dict[str, Any]:
    allow = [{"type": "m.room_membership", "room_id": allowed, "via": [via]}]
    return {
        "type": "m.room.join_rules",
        "state_key": "",
        "content": {"join_rule": rule, "allow": allow},
    }


async def _restricted_pair(
    client: Client, creator: TestUser, version: str, rule: str = "restricted"
) -> tuple[str, str]:
    """A public room and a room of ``version`` restricted to its members."""
    allowed = await client.create_room(creator, preset="public_chat", name="Allowed")
    room = await client.create_room(
        creator,
        preset="public_chat",
        name="Room",
        room_version=version,
        initial_state=[_rules(rule, allowed, client.hs.server_name)],
    )
    return allowed, room


async def _join(client: Client, user: TestUser, room_id: str, *via: str) -> tuple[int, Any]:
    params = [("server_name", server) for server in via]
    return await client.call(user, "POST", f"/join/{q(room_id)}", {}, params=params)


async def _joined(client: Client, user: TestUser, room_id: str, *via: str) -> None:
    status, answer = await _join(client, user, room_id, *via)
    assert (status, answer) == (200, {"room_id": room_id})


async def _refused(client: Client, user: TestUser, room_id: str, *via: str) -> None:
    status, answer = await _join(client, user, room_id, *via)
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), answer
    assert answer["error"]
    member = await _member(client, user, room_id, user.user_id)
    assert member.get("content", {}).get("membership") != "join"


async def _no_server_would(client: Client, user: TestUser, room_id: str, *via: str) -> None:
    """Refused by every server asked, none able to vouch or judge: a
    failure of the servers tried (502), with each one's reason."""
    status, answer = await _join(client, user, room_id, *via)
    assert (status, answer["errcode"]) == (502, "M_UNKNOWN"), answer
    assert "try another server" in answer["error"]


async def _member(client: Client, viewer: TestUser, room_id: str, user_id: str) -> dict[str, Any]:
    path = f"/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}"
    status, answer = await client.call(viewer, "GET", path, params={"format": "event"})
    return answer if status == 200 else {}


async def _membership_seen(
    client: Client, viewer: TestUser, room_id: str, user_id: str, membership: str
) -> dict[str, Any]:
    """The member event of ``user_id`` once ``viewer``'s server holds
    ``membership`` for them."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        seen.update(await _member(client, viewer, room_id, user_id))
        return seen.get("content", {}).get("membership") == membership

    await eventually(check, f"{user_id} {membership} in {room_id}")
    return seen


async def _leave(client: Client, user: TestUser, room_id: str) -> None:
    await client.ok(user, "POST", f"/rooms/{q(room_id)}/leave", {})


async def _send_state(
    client: Client, user: TestUser, room_id: str, kind: str, content: Any, key: str = ""
) -> None:
    await client.ok(user, "PUT", f"/rooms/{q(room_id)}/state/{kind}/{q(key)}", content)


async def _check_restricted_room(
    home: Client,
    alice: TestUser,
    guest: Client,
    bob: TestUser,
    allowed: str,
    room: str,
    rule: str,
) -> None:
    """Bob (of ``guest``) against Alice's restricted ``room`` on ``home``."""
    hs1 = home.hs.server_name
    # Not yet a member of the allowed room: refused.
    await _refused(guest, bob, room, hs1)

    # A member of it: let in, vouched for by Alice.
    await _joined(guest, bob, allowed, hs1)
    await _membership_seen(home, alice, allowed, bob.user_id, "join")
    await _joined(guest, bob, room, hs1)
    join = await _membership_seen(home, alice, room, bob.user_id, "join")
    assert join["content"][_VOUCHER] == alice.user_id
    # A join over a join (a new display name) needs no voucher: one naming
    # nobody able to invite is no bar.
    renamed = {"membership": "join", "displayname": "Bobby", _VOUCHER: "unused"}
    await _send_state(guest, bob, room, "m.room.member", renamed, bob.user_id)
    seen = await _membership_seen(home, alice, room, bob.user_id, "join")
    await eventually(
        lambda: _displayname_is(home, alice, room, bob.user_id, "Bobby"), "the new name at A"
    )
    assert seen["sender"] == bob.user_id

    # Out of both rooms: refused again once Alice's server has the leave.
    await _leave(guest, bob, room)
    await _leave(guest, bob, allowed)
    await _membership_seen(home, alice, allowed, bob.user_id, "leave")
    await _refused(guest, bob, room, hs1)

    # Invited: let in without the allowed room.
    await home.ok(alice, "POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id})
    await eventually(lambda: _invited(guest, bob, room), "the invite at Bob's server")
    await _joined(guest, bob, room, hs1)
    await _leave(guest, bob, room)
    await _joined(guest, bob, allowed, hs1)
    await _membership_seen(home, alice, allowed, bob.user_id, "join")

    # An allow list of no valid entry, or not a list: no one qualifies.
    for allow in (["invalid"], "invalid"):
        await _send_state(
            home, alice, room, "m.room.join_rules", {"join_rule": rule, "allow": allow}
        )
        await _refused(guest, bob, room, hs1)
    members = await home.ok(alice, "GET", f"/rooms/{q(room)}/joined_members")
    assert bob.user_id not in members["joined"]


async def _invited(client: Client, user: TestUser, room_id: str) -> bool:
    answer = await client.ok(user, "GET", "/sync")
    return room_id in answer["rooms"]["invite"]


async def _displayname_is(
    client: Client, viewer: TestUser, room_id: str, user_id: str, name: str
) -> bool:
    return (await _member(client, viewer, room_id, user_id)).get("content", {}).get(
        "displayname"
    ) == name


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
async def test_a_local_user_joins_a_restricted_room_by_its_allowed_room(
    tmp_path: Path, rule: str
) -> None:
    version = "8" if rule == "restricted" else "10"
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        allowed, room = await _restricted_pair(client, alice, version, rule)
        await _check_restricted_room(client, alice, client, bob, allowed, room, rule)


async def _servers(
    stack: AsyncExitStack, tmp_path: Path, count: int
) -> list[tuple[TestHomeserver, Client]]:
    pki = Pki.create(tmp_path)
    servers = []
    for label in "abc"[:count]:
        hs = await stack.enter_async_context(open_test_homeserver(tmp_path / label, federation=pki))
        http = await stack.enter_async_context(hs.client())
        servers.append((hs, Client(hs, http)))
    return servers


@pytest.mark.parametrize(("version", "rule"), [("8", "restricted"), ("10", "knock_restricted")])
async def test_a_remote_user_joins_a_restricted_room_by_its_allowed_room(
    tmp_path: Path, version: str, rule: str
) -> None:
    async with AsyncExitStack() as stack:
        (a, ca), (b, cb) = await _servers(stack, tmp_path, 2)
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        allowed, room = await _restricted_pair(ca, alice, version, rule)
        await _check_restricted_room(ca, alice, cb, bob, allowed, room, rule)


async def _power(client: Client, user: TestUser, room_id: str, content: dict[str, Any]) -> None:
    await _send_state(client, user, room_id, "m.room.power_levels", content)


@pytest.mark.parametrize(("version", "rule"), [("8", "restricted"), ("10", "knock_restricted")])
async def test_a_join_no_one_here_may_vouch_for_goes_through_a_server_that_can(
    tmp_path: Path, version: str, rule: str
) -> None:
    """Charlie's room on B; Alice of A joined it without the power to
    invite, so Bob of A, joining through A, is vouched for by B; once B
    has left and anyone may invite, A vouches itself."""
    async with AsyncExitStack() as stack:
        (a, ca), (b, cb) = await _servers(stack, tmp_path, 2)
        charlie = await b.register_user("charlie")
        alice, bob = await a.register_user("alice"), await a.register_user("bob")
        allowed, room = await _restricted_pair(cb, charlie, version, rule)
        await cb.ok(charlie, "POST", f"/rooms/{q(room)}/invite", {"user_id": alice.user_id})
        await eventually(lambda: _invited(ca, alice, room), "Alice's invite")
        await _joined(ca, alice, room, b.server_name)
        status, answer = await ca.call(
            alice, "POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id}
        )
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
        await _refused(ca, bob, room, a.server_name)

        await _joined(ca, bob, allowed, b.server_name)
        await _joined(ca, bob, room, a.server_name)
        join = await _membership_seen(cb, charlie, room, bob.user_id, "join")
        assert join["content"][_VOUCHER] == charlie.user_id

        await _power(cb, charlie, room, {"invite": 0, "users": {charlie.user_id: 100}})
        await _leave(cb, charlie, room)
        await _membership_seen(ca, alice, room, charlie.user_id, "leave")
        await _leave(ca, bob, room)
        with trio.fail_after(20):
            await _joined(ca, bob, room, a.server_name)
        rejoin = await _member(ca, alice, room, bob.user_id)
        assert rejoin["content"]["membership"] == "join"
        assert rejoin["content"][_VOUCHER] in (alice.user_id, bob.user_id)


@pytest.mark.parametrize(
    ("version", "rule"), [("8", "restricted"), ("12", "restricted"), ("10", "knock_restricted")]
)
async def test_a_server_unable_to_vouch_is_passed_over_for_one_that_can(
    tmp_path: Path, version: str, rule: str
) -> None:
    """Alice's room on A, Bob of B in it without the power to invite:
    Charlie of C, in the allowed room, is let in through B then A,
    vouched for by Alice; after B has left the allowed room (so cannot
    judge) the same holds though Bob may invite.

    Through B alone the join fails in version 12, whose room IDs name no
    server; in version 8 the server the room ID names is tried after B.
    """
    async with AsyncExitStack() as stack:
        (a, ca), (b, cb), (c, cc) = await _servers(stack, tmp_path, 3)
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        charlie = await c.register_user("charlie")
        allowed, room = await _restricted_pair(ca, alice, version, rule)
        creators = {} if version == "12" else {alice.user_id: 100}
        await _power(ca, alice, room, {"invite": 100, "users": creators})
        await _joined(cb, bob, allowed, a.server_name)
        await _joined(cb, bob, room, a.server_name)
        await _joined(cc, charlie, allowed, a.server_name)
        await _membership_seen(cb, bob, allowed, charlie.user_id, "join")

        async def through_b_then_a() -> None:
            if version == "12":
                await _no_server_would(cc, charlie, room, b.server_name)
                await _joined(cc, charlie, room, b.server_name, a.server_name)
            else:
                await _joined(cc, charlie, room, b.server_name)
            join = await _membership_seen(cb, bob, room, charlie.user_id, "join")
            assert join["content"][_VOUCHER] == alice.user_id

        await through_b_then_a()
        await _power(ca, alice, room, {"invite": 100, "users": {**creators, bob.user_id: 100}})
        await _leave(cc, charlie, room)
        await _membership_seen(ca, alice, room, charlie.user_id, "leave")
        await _membership_seen(cb, bob, room, charlie.user_id, "leave")
        await _leave(cb, bob, allowed)
        await through_b_then_a()


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
@pytest.mark.parametrize("version", ["11", "12"])
async def test_a_local_member_able_to_invite_vouches_though_no_creator_is_here(
    tmp_path: Path, version: str, rule: str
) -> None:
    async with AsyncExitStack() as stack:
        (a, ca), (b, cb) = await _servers(stack, tmp_path, 2)
        alice = await a.register_user("alice")
        bob, charlie = await b.register_user("bob"), await b.register_user("charlie")
        allowed, room = await _restricted_pair(ca, alice, version, rule)
        await _joined(cb, bob, allowed, a.server_name)
        await _joined(cb, bob, room, a.server_name)
        join = await _membership_seen(cb, bob, room, bob.user_id, "join")
        assert join["content"][_VOUCHER] == alice.user_id

        # A v12 creator is above every level and absent from users.
        users = {bob.user_id: 50} if version == "12" else {alice.user_id: 100, bob.user_id: 50}
        await _power(ca, alice, room, {"invite": 50, "users": users})
        await _joined(cb, charlie, allowed, a.server_name)
        await eventually(lambda: _level_seen(cb, bob, room, users), "the new power levels at B")
        await _joined(cb, charlie, room, b.server_name)
        join = await _membership_seen(cb, bob, room, charlie.user_id, "join")
        assert join["content"][_VOUCHER] == bob.user_id


async def _level_seen(client: Client, user: TestUser, room_id: str, users: dict[str, int]) -> bool:
    path = f"/rooms/{q(room_id)}/state/m.room.power_levels/"
    status, answer = await client.call(user, "GET", path)
    return status == 200 and answer.get("users") == users
