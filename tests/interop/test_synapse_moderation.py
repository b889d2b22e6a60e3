"""Membership changes and moderation between ranvier and a real Synapse,
each way round: a room ranvier hosts, moderated by its ranvier creator
against Synapse's users, and a room Synapse hosts, moderated by its Synapse
creator against ranvier's users.

In each room, in turn: a member leaves and joins again; a moderator kicks
them with a reason; bans them, so that joining again is refused with
``M_FORBIDDEN`` on their own server, and lifts the ban; messages are
redacted by their sender and by a moderator of the other server (room
version 10 in ranvier's room, with ``redacts`` at the top level, and
Synapse's default, 12, with it in the content); the creator's server puts
the other server's user below ``events_default``, whose next message is
then refused by their own server; and members of both servers change their
display names. Last, each way round, a message sent while its server has
not yet heard of the new power levels: the creator's server soft-fails it,
keeping it out of the room's timeline.

What ranvier has is read from its storage and through its handlers as a
user sees it; what Synapse has, through its client API. Arrival on either
side is awaited by polling, within a bound.
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import Awaitable
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.core.accounts import Requester
from ranvier.core.pagination import RoomMessages
from ranvier.errors import MatrixError
from ranvier.server import HomeServer
from ranvier.storage.records import StoredEvent

from ._checks import eventually, localpart
from ._synapse import SynapseClientError, SynapseProcess, SynapseUser

_WAIT_SECONDS = 60.0
_MEMBER = "m.room.member"
_SEND_PATH = "/_matrix/federation/v1/send/"
_txns = itertools.count(1)


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


# --- ranvier's side ---------------------------------------------------------------


async def _ranvier_json(hs: HomeServer, event_id: str) -> dict[str, Any] | None:
    """The event as ranvier stored it, once it is in the room's DAG."""
    row = await hs.storage.get_event(event_id)
    if row is None or row.outlier:
        return None
    assert row.rejected_reason is None, (event_id, row.rejected_reason)
    assert not row.soft_failed, event_id
    event: dict[str, Any] = msgspec.json.decode(row.json)
    return event


async def _ranvier_member(hs: HomeServer, room_id: str, user_id: str) -> dict[str, Any] | None:
    """The member event of ``user_id`` in ranvier's current state of the room."""
    event_id = (await hs.storage.get_current_state_ids(room_id)).get((_MEMBER, user_id))
    if event_id is None:
        return None
    return await _ranvier_json(hs, event_id)


async def _ranvier_membership(hs: HomeServer, room_id: str, user_id: str) -> str | None:
    member = await _ranvier_member(hs, room_id, user_id)
    return None if member is None else str(member["content"]["membership"])


async def _ranvier_has(hs: HomeServer, *event_ids: str) -> bool:
    for event_id in event_ids:
        if await _ranvier_json(hs, event_id) is None:
            return False
    return True


async def _say(hs: HomeServer, user: str, room_id: str, text: str) -> str:
    return await hs.send_event(user, room_id, "m.room.message", {"msgtype": "m.text", "body": text})


async def _requester(hs: HomeServer, access_token: str | None) -> Requester:
    assert access_token is not None
    requester = await hs.accounts.get_requester(access_token)
    assert requester is not None
    return requester


async def _ranvier_timeline(hs: HomeServer, requester: Requester, room_id: str) -> list[str]:
    """The IDs of the room's latest events as ``/messages`` shows them to the user."""
    page = await RoomMessages(hs.storage.sync).get_messages(
        requester, room_id, direction="b", limit=100
    )
    return [event["event_id"] for event in page["chunk"]]


# --- Synapse's side ---------------------------------------------------------------


async def _synapse_member(user: SynapseUser, room_id: str, member: str) -> dict[str, Any] | None:
    """The member event of ``member`` in the room's state as Synapse shows
    it to ``user`` (for a user who left: the state when they left).
    """
    for event in await user.request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state"):
        if event["type"] == _MEMBER and event["state_key"] == member:
            found: dict[str, Any] = event
            return found
    return None


async def _synapse_membership(user: SynapseUser, room_id: str, member: str) -> str | None:
    event = await _synapse_member(user, room_id, member)
    return None if event is None else str(event["content"]["membership"])


async def _synapse_has(user: SynapseUser, room_id: str, *event_ids: str) -> bool:
    for event_id in event_ids:
        if await user.event(room_id, event_id) is None:
            return False
    return True


async def _synapse_redact(user: SynapseUser, room_id: str, event_id: str) -> str:
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/redact/{_q(event_id)}/r{next(_txns)}"
    answer = await user.request("PUT", path, body={})
    redaction: str = answer["event_id"]
    return redaction


async def _synapse_moderate(
    user: SynapseUser, action: str, room_id: str, target: str, reason: str | None = None
) -> None:
    body = {"user_id": target, **({"reason": reason} if reason is not None else {})}
    await user.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/{action}", body=body)


async def _synapse_rename(user: SynapseUser, displayname: str) -> None:
    await user.request(
        "PUT",
        f"/_matrix/client/v3/profile/{_q(user.user_id)}/displayname",
        body={"displayname": displayname},
    )


async def _synapse_refusal(attempt: Awaitable[object]) -> tuple[int, str | None, str]:
    """The status, errcode and message with which Synapse refused ``attempt``."""
    try:
        await attempt
    except SynapseClientError as exc:
        answer = msgspec.json.decode(exc.body)
        return exc.status, answer.get("errcode"), answer.get("error", "")
    raise AssertionError("Synapse accepted what it should have refused")


async def _ranvier_refusal(attempt: Awaitable[object]) -> tuple[int, str, str]:
    """The status, errcode and message with which ranvier refused ``attempt``."""
    try:
        await attempt
    except MatrixError as exc:
        return exc.http_status, exc.errcode, str(exc)
    raise AssertionError("ranvier accepted what it should have refused")


async def _exchange(
    hs: HomeServer, ours: str, theirs: SynapseUser, room_id: str, label: str
) -> None:
    """A message each way, each arriving on the other side."""
    from_synapse = await theirs.send_message(room_id, f"{label}: from Synapse")
    from_ranvier = await _say(hs, ours, room_id, f"{label}: from ranvier")
    await eventually(lambda: _ranvier_has(hs, from_synapse), f"{label}: Synapse's message")
    await eventually(
        lambda: _synapse_has(theirs, room_id, from_ranvier), f"{label}: ranvier's message"
    )


def _assert_redacted(
    event: dict[str, Any], sender: str, redaction: str, kept: dict[str, Any] | None = None
) -> None:
    """A redacted event: its own keys there, its content down to ``kept``
    (nothing of a message's content survives any room version's redaction
    algorithm; of a member event's, only ``membership`` here), and the
    redaction named.
    """
    assert event["type"] == ("m.room.message" if kept is None else _MEMBER)
    assert event["sender"] == sender
    assert event["content"] == ({} if kept is None else kept)
    assert event["unsigned"]["redacted_because"]["event_id"] == redaction


def _queue_to(hs: HomeServer, destination: str) -> tuple[int, str | None, int] | None:
    """ranvier's queue to ``destination``: PDUs queued, transaction pending,
    transactions sent; None when it has none (nothing waiting for it).
    """
    status = hs.federation_sender.status(destination)
    if status is None:
        return None
    return status.queued_pdus, status.pending_transaction, status.transactions_sent


async def _idle_queue_to(hs: HomeServer, destination: str) -> tuple[int, str | None, int] | None:
    """ranvier's queue to ``destination`` once nothing is waiting in it."""

    async def idle() -> bool:
        queue = _queue_to(hs, destination)
        return queue is None or queue[:2] == (0, None)

    await eventually(idle, f"ranvier's queue to {destination} to empty")
    return _queue_to(hs, destination)


async def test_moderation_in_a_room_hosted_by_ranvier(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    # Room version 10: redactions name their target at the top level.
    carol = (await ranvier.accounts.register(localpart("carol"), None)).user_id
    room_id = await ranvier.create_room(
        carol, preset="public_chat", name="Moderated on ranvier", room_version="10"
    )
    dave = await synapse.register(synapse_http, localpart("dave"))
    await dave.join(room_id, via=ranvier.server_name)
    assert await _ranvier_membership(ranvier, room_id, dave.user_id) == "join"
    await _exchange(ranvier, carol, dave, room_id, "joined")

    # 1. Dave leaves: both servers show it. He joins again (Synapse, out
    # of the room, joins through ranvier once more) and messages flow.
    await dave.leave(room_id)
    await eventually(
        lambda: _membership_is(ranvier, room_id, dave.user_id, "leave"), "dave's leave on ranvier"
    )
    assert await _synapse_membership(dave, room_id, dave.user_id) == "leave"
    assert synapse.server_name not in await ranvier.room_servers.joined_servers(room_id)
    await dave.join(room_id, via=ranvier.server_name)
    assert await _ranvier_membership(ranvier, room_id, dave.user_id) == "join"
    assert await _synapse_membership(dave, room_id, dave.user_id) == "join"
    await _exchange(ranvier, carol, dave, room_id, "rejoined")

    # 2. Carol kicks Dave, Synapse's only user in the room, with a reason.
    kick = await ranvier.event_creator.kick(carol, room_id, dave.user_id, reason="off topic")
    kicked = await _ranvier_member(ranvier, room_id, dave.user_id)
    assert kicked is not None
    assert (kicked["sender"], kicked["content"]) == (
        carol,
        {"membership": "leave", "reason": "off topic"},
    )

    async def kick_on_synapse() -> bool:
        event = await _synapse_member(dave, room_id, dave.user_id)
        return event is not None and event["event_id"] == kick

    await eventually(kick_on_synapse, "the kick on Synapse")
    seen = await _synapse_member(dave, room_id, dave.user_id)
    assert seen is not None
    assert (seen["sender"], seen["content"]) == (
        carol,
        {"membership": "leave", "reason": "off topic"},
    )
    # Synapse has no user in the room now: ranvier sends it nothing more.
    assert synapse.server_name not in await ranvier.room_servers.joined_servers(room_id)
    before = await _idle_queue_to(ranvier, synapse.server_name)
    await _say(ranvier, carol, room_id, "after the kick")
    # Queued for Synapse, the message would be waiting, in flight or
    # counted as delivered: the queue, if it is still there, is as it was.
    after = _queue_to(ranvier, synapse.server_name)
    assert after is None or after == before

    # 3. Carol bans Dave: Synapse refuses his join, with ranvier's
    # M_FORBIDDEN. Unbanned, he joins again.
    ban = await ranvier.event_creator.ban(carol, room_id, dave.user_id, reason="still off topic")
    assert await _ranvier_membership(ranvier, room_id, dave.user_id) == "ban"
    refusal = await _synapse_refusal(dave.join(room_id, via=ranvier.server_name))
    assert refusal[:2] == (403, "M_FORBIDDEN")
    assert "banned" in refusal[2]
    assert (await ranvier.storage.get_current_state_ids(room_id))[(_MEMBER, dave.user_id)] == ban
    await ranvier.event_creator.unban(carol, room_id, dave.user_id)
    assert await _ranvier_membership(ranvier, room_id, dave.user_id) == "leave"
    await dave.join(room_id, via=ranvier.server_name)
    assert await _ranvier_membership(ranvier, room_id, dave.user_id) == "join"
    await _exchange(ranvier, carol, dave, room_id, "unbanned")

    # 4. Redactions: Dave's message redacted by Dave reaches ranvier
    # redacted; another of his, redacted by Carol, reaches Synapse so.
    oops = await dave.send_message(room_id, "oops")
    unredacted = await dave.send_message(room_id, "spam")
    await eventually(lambda: _ranvier_has(ranvier, oops, unredacted), "dave's messages")
    own = await _synapse_redact(dave, room_id, oops)

    async def redacted_on_ranvier() -> bool:
        served = await ranvier.room_reader.event(carol, room_id, oops)
        return "redacted_because" in served.get("unsigned", {})

    await eventually(redacted_on_ranvier, "dave's redaction on ranvier")
    redaction_pdu = await _ranvier_json(ranvier, own)
    assert redaction_pdu is not None
    assert redaction_pdu["redacts"] == oops
    _assert_redacted(await ranvier.room_reader.event(carol, room_id, oops), dave.user_id, own)

    by_carol = await ranvier.send_event(carol, room_id, "m.room.redaction", {"redacts": unredacted})

    async def redacted_on_synapse() -> bool:
        event = await dave.event(room_id, unredacted)
        return event is not None and "redacted_because" in event.get("unsigned", {})

    await eventually(redacted_on_synapse, "carol's redaction on Synapse")
    shown = await dave.event(room_id, unredacted)
    assert shown is not None
    _assert_redacted(shown, dave.user_id, by_carol)

    # Carol redacts Dave's member event too: his display name goes, his
    # membership stays.
    dave_join = (await ranvier.storage.get_current_state_ids(room_id))[(_MEMBER, dave.user_id)]
    joined_as = await _ranvier_json(ranvier, dave_join)
    assert joined_as is not None
    assert "displayname" in joined_as["content"]
    member_redaction = await ranvier.send_event(
        carol, room_id, "m.room.redaction", {"redacts": dave_join}
    )

    async def member_redacted_on_synapse() -> bool:
        event = await dave.event(room_id, dave_join)
        return event is not None and "redacted_because" in event.get("unsigned", {})

    await eventually(member_redacted_on_synapse, "the redacted member event on Synapse")
    shown = await dave.event(room_id, dave_join)
    assert shown is not None
    _assert_redacted(shown, dave.user_id, member_redaction, {"membership": "join"})

    # 5. Carol raises events_default above Dave's level: Synapse refuses
    # his next message, and ranvier's timeline never has one.
    levels = await ranvier.room_reader.state_event(carol, room_id, "m.room.power_levels", "")
    content = {**levels["content"], "events_default": 50}
    raised = await ranvier.send_event(carol, room_id, "m.room.power_levels", content, state_key="")

    async def raised_on_synapse() -> bool:
        return (await dave.state_ids(room_id)).get(("m.room.power_levels", "")) == raised

    await eventually(raised_on_synapse, "the power levels on Synapse")
    refused = await _synapse_refusal(dave.send_message(room_id, "not allowed"))
    assert refused[:2] == (403, "M_FORBIDDEN")

    # 6. Dave may still change his name (a member event): it reaches
    # ranvier, after the refused message would have had it come.
    await _synapse_rename(dave, "Dave Renamed")

    async def renamed_on_ranvier() -> bool:
        member = await _ranvier_member(ranvier, room_id, dave.user_id)
        return member is not None and member["content"].get("displayname") == "Dave Renamed"

    await eventually(renamed_on_ranvier, "dave's new name on ranvier")
    renamed = await _ranvier_member(ranvier, room_id, dave.user_id)
    assert renamed is not None
    assert renamed["content"]["membership"] == "join"
    assert renamed["sender"] == dave.user_id
    since_raised = await _events_since(ranvier, room_id, raised)
    assert [(e.type, e.sender) for e in since_raised] == [(_MEMBER, dave.user_id)]
    assert raised in renamed["prev_events"]

    # And Carol's new name reaches Synapse.
    await ranvier.profiles.set_field(carol, carol, "displayname", "Carol Renamed")

    async def carol_renamed_on_synapse() -> bool:
        member = await _synapse_member(dave, room_id, carol)
        return member is not None and member["content"].get("displayname") == "Carol Renamed"

    await eventually(carol_renamed_on_synapse, "carol's new name on Synapse")
    carol_member = await _synapse_member(dave, room_id, carol)
    assert carol_member is not None
    assert (carol_member["sender"], carol_member["content"]["membership"]) == (carol, "join")
    current = await ranvier.storage.get_current_state_ids(room_id)
    assert carol_member["event_id"] == current[(_MEMBER, carol)]


async def test_moderation_in_a_room_hosted_by_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    # Room version 12, Synapse's default: redactions name their target in
    # their content, and the creator's power comes from creating the room.
    alice = await synapse.register(synapse_http, localpart("alice"))
    room_id = await alice.create_room(preset="public_chat", name="Moderated on Synapse")
    registered = await ranvier.accounts.register(localpart("bob"), None)
    bob = registered.user_id
    bob_requester = await _requester(ranvier, registered.access_token)
    await ranvier.profiles.set_field(bob, bob, "displayname", "Bob")
    first_join = await ranvier.join_room(bob, room_id, [synapse.server_name])
    await eventually(lambda: _synapse_has(alice, room_id, first_join), "bob's join on Synapse")
    # The join made through Synapse's make_join carries Bob's profile.
    joined_as = await alice.event(room_id, first_join)
    assert joined_as is not None
    assert joined_as["content"] == {"membership": "join", "displayname": "Bob"}
    await _exchange(ranvier, bob, alice, room_id, "joined")

    # 1. Bob, ranvier's only user, leaves; he joins again (through Synapse
    # once more) and messages flow.
    left = await ranvier.leave_room(bob, room_id)
    await eventually(
        lambda: _synapse_membership_is(alice, room_id, bob, "leave"), "bob's leave on Synapse"
    )
    assert (await alice.state_ids(room_id))[(_MEMBER, bob)] == left
    assert await _ranvier_membership(ranvier, room_id, bob) == "leave"
    rejoin = await ranvier.join_room(bob, room_id, [synapse.server_name])
    assert await _ranvier_membership(ranvier, room_id, bob) == "join"
    await eventually(lambda: _synapse_has(alice, room_id, rejoin), "bob's new join on Synapse")
    assert await _synapse_membership(alice, room_id, bob) == "join"
    await _exchange(ranvier, bob, alice, room_id, "rejoined")

    # A second user of ranvier's keeps ranvier in the room while Bob is
    # out of it, so that what Bob sees can be told from what ranvier has.
    erin = f"@erin:{ranvier.server_name}"
    await ranvier.join_room(erin, room_id, [synapse.server_name])
    await eventually(
        lambda: _synapse_membership_is(alice, room_id, erin, "join"), "erin's join on Synapse"
    )

    # 2. Alice kicks Bob with a reason: both servers show the leave, with
    # the reason and Alice as its sender; Bob sees no later message.
    await _synapse_moderate(alice, "kick", room_id, bob, "off topic")
    kick = (await alice.state_ids(room_id))[(_MEMBER, bob)]
    await eventually(lambda: _ranvier_has(ranvier, kick), "the kick on ranvier")
    kicked = await _ranvier_member(ranvier, room_id, bob)
    assert kicked is not None
    assert (await ranvier.storage.get_current_state_ids(room_id))[(_MEMBER, bob)] == kick
    assert (kicked["sender"], kicked["content"]) == (
        alice.user_id,
        {"membership": "leave", "reason": "off topic"},
    )
    on_synapse = await _synapse_member(alice, room_id, bob)
    assert on_synapse is not None
    assert (on_synapse["sender"], on_synapse["content"]) == (
        alice.user_id,
        {"membership": "leave", "reason": "off topic"},
    )
    after_kick = await alice.send_message(room_id, "after the kick")
    await eventually(lambda: _ranvier_has(ranvier, after_kick), "a message after the kick")
    assert (await ranvier.room_reader.event(erin, room_id, after_kick))["event_id"] == after_kick
    not_found = await _ranvier_refusal(ranvier.room_reader.event(bob, room_id, after_kick))
    assert not_found[:2] == (404, "M_NOT_FOUND")
    bobs_timeline = await _ranvier_timeline(ranvier, bob_requester, room_id)
    assert bobs_timeline[0] == kick
    assert after_kick not in bobs_timeline

    # 3. Alice bans Bob. ranvier refuses his join while Erin keeps it in
    # the room, and passes on Synapse's refusal once she has left too.
    await _synapse_moderate(alice, "ban", room_id, bob, "still off topic")
    ban = (await alice.state_ids(room_id))[(_MEMBER, bob)]
    await eventually(lambda: _ranvier_has(ranvier, ban), "the ban on ranvier")
    assert await _ranvier_membership(ranvier, room_id, bob) == "ban"
    local = await _ranvier_refusal(ranvier.join_room(bob, room_id, [synapse.server_name]))
    assert local[:2] == (403, "M_FORBIDDEN")
    assert "banned" in local[2]
    erin_left = await ranvier.leave_room(erin, room_id)
    await eventually(lambda: _synapse_has(alice, room_id, erin_left), "erin's leave on Synapse")
    remote = await _ranvier_refusal(ranvier.join_room(bob, room_id, [synapse.server_name]))
    assert remote[:2] == (403, "M_FORBIDDEN")
    assert "banned" in remote[2]
    assert (await alice.state_ids(room_id))[(_MEMBER, bob)] == ban
    await _synapse_moderate(alice, "unban", room_id, bob)
    assert await _synapse_membership(alice, room_id, bob) == "leave"
    await ranvier.join_room(bob, room_id, [synapse.server_name])
    await eventually(
        lambda: _synapse_membership_is(alice, room_id, bob, "join"), "bob's join after the ban"
    )
    await _exchange(ranvier, bob, alice, room_id, "unbanned")

    # 4. Redactions: Bob's message redacted by Bob reaches Synapse
    # redacted; another of his, redacted by Alice, reaches ranvier so.
    oops = await _say(ranvier, bob, room_id, "oops")
    unredacted = await _say(ranvier, bob, room_id, "spam")
    await eventually(lambda: _synapse_has(alice, room_id, oops, unredacted), "bob's messages")
    own = await ranvier.send_event(bob, room_id, "m.room.redaction", {"redacts": oops})
    redaction_pdu = await _ranvier_json(ranvier, own)
    assert redaction_pdu is not None
    assert redaction_pdu["content"] == {"redacts": oops}

    async def redacted_on_synapse() -> bool:
        event = await alice.event(room_id, oops)
        return event is not None and "redacted_because" in event.get("unsigned", {})

    await eventually(redacted_on_synapse, "bob's redaction on Synapse")
    shown = await alice.event(room_id, oops)
    assert shown is not None
    _assert_redacted(shown, bob, own)

    by_alice = await _synapse_redact(alice, room_id, unredacted)

    async def redacted_on_ranvier() -> bool:
        served = await ranvier.room_reader.event(bob, room_id, unredacted)
        return "redacted_because" in served.get("unsigned", {})

    await eventually(redacted_on_ranvier, "alice's redaction on ranvier")
    _assert_redacted(await ranvier.room_reader.event(bob, room_id, unredacted), bob, by_alice)

    # Alice redacts Bob's member event too: his display name goes, his
    # membership stays.
    bob_join = (await alice.state_ids(room_id))[(_MEMBER, bob)]
    rejoined_as = await _ranvier_json(ranvier, bob_join)
    assert rejoined_as is not None
    assert rejoined_as["content"] == {"membership": "join", "displayname": "Bob"}
    member_redaction = await _synapse_redact(alice, room_id, bob_join)

    async def member_redacted_on_ranvier() -> bool:
        served = await ranvier.room_reader.event(bob, room_id, bob_join)
        return "redacted_because" in served.get("unsigned", {})

    await eventually(member_redacted_on_ranvier, "the redacted member event on ranvier")
    served = await ranvier.room_reader.event(bob, room_id, bob_join)
    _assert_redacted(served, bob, member_redaction, {"membership": "join"})

    # 5. Alice demotes Bob below events_default: ranvier refuses his next
    # message, and Synapse's timeline never has one.
    levels = await alice.state_event(room_id, "m.room.power_levels")
    assert levels.get("events_default", 0) == 0
    users = {**levels.get("users", {}), bob: -1}
    raised = await alice.send_state(room_id, "m.room.power_levels", {**levels, "users": users})
    await eventually(lambda: _ranvier_has(ranvier, raised), "the power levels on ranvier")
    refused = await _ranvier_refusal(_say(ranvier, bob, room_id, "not allowed"))
    assert refused[:2] == (403, "M_FORBIDDEN")

    # 6. Bob may still change his name (a member event): it reaches
    # Synapse, after the refused message would have had it come.
    await ranvier.profiles.set_field(bob, bob, "displayname", "Bob Renamed")
    renamed = (await ranvier.storage.get_current_state_ids(room_id))[(_MEMBER, bob)]
    await eventually(lambda: _synapse_has(alice, room_id, renamed), "bob's new name on Synapse")
    member = await _synapse_member(alice, room_id, bob)
    assert member is not None
    assert member["event_id"] == renamed
    assert member["content"] == {"membership": "join", "displayname": "Bob Renamed"}
    newest = [(e["type"], e["sender"]) for e in await alice.timeline(room_id, limit=2)]
    assert newest == [(_MEMBER, bob), ("m.room.power_levels", alice.user_id)]
    renamed_pdu = await _ranvier_json(ranvier, renamed)
    assert renamed_pdu is not None
    assert renamed_pdu["prev_events"] == [raised]

    # And Alice's new name reaches ranvier.
    await _synapse_rename(alice, "Alice Renamed")

    async def alice_renamed_on_ranvier() -> bool:
        member = await _ranvier_member(ranvier, room_id, alice.user_id)
        return member is not None and member["content"].get("displayname") == "Alice Renamed"

    await eventually(alice_renamed_on_ranvier, "alice's new name on ranvier")
    alice_member = await _ranvier_member(ranvier, room_id, alice.user_id)
    assert alice_member is not None
    assert (alice_member["sender"], alice_member["content"]["membership"]) == (
        alice.user_id,
        "join",
    )


async def _membership_is(hs: HomeServer, room_id: str, user_id: str, membership: str) -> bool:
    return await _ranvier_membership(hs, room_id, user_id) == membership


async def _synapse_membership_is(
    user: SynapseUser, room_id: str, member: str, membership: str
) -> bool:
    return await _synapse_membership(user, room_id, member) == membership


async def _events_since(hs: HomeServer, room_id: str, event_id: str) -> list[StoredEvent]:
    """The events ranvier added to the room's timeline after ``event_id``, oldest first."""
    row = await hs.storage.get_event(event_id)
    assert row is not None
    events, _ = await hs.storage.sync.room_events(
        room_id, after=row.stream_ordering, upto=2**62, limit=100, backwards=False
    )
    return events


async def test_messages_sent_before_their_server_hears_of_new_power_levels_are_soft_failed(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier: HomeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other half of the power levels case, each way round: a message
    its own server accepts because the new power levels have not reached it
    yet. The creator's server takes it (its auth events allow it) but keeps
    it out of the timeline (the room's current state does not): soft-failed.
    """
    registered = await ranvier.accounts.register(localpart("carol"), None)
    carol = registered.user_id
    room_id = await ranvier.create_room(carol, preset="public_chat", room_version="10")
    dave = await synapse.register(synapse_http, localpart("dave"))
    await dave.join(room_id, via=ranvier.server_name)
    await _exchange(ranvier, carol, dave, room_id, "joined")

    # ranvier's transactions to Synapse wait until released.
    client = ranvier.federation_client
    put_json = client.put_json
    holding, release = trio.Event(), trio.Event()

    async def held_put_json(destination: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if destination == synapse.server_name and path.startswith(_SEND_PATH):
            holding.set()
            await release.wait()
        return await put_json(destination, path, *args, **kwargs)

    monkeypatch.setattr(client, "put_json", held_put_json)
    levels = await ranvier.room_reader.state_event(carol, room_id, "m.room.power_levels", "")
    content = {**levels["content"], "events_default": 50}
    raised = await ranvier.send_event(carol, room_id, "m.room.power_levels", content, state_key="")
    with trio.fail_after(_WAIT_SECONDS):
        await holding.wait()

    early = await dave.send_message(room_id, "before the news")

    async def stored() -> bool:
        return await ranvier.storage.get_event(early) is not None

    await eventually(stored, "the early message on ranvier")
    row = await ranvier.storage.get_event(early)
    assert row is not None
    assert row.rejected_reason is None
    assert row.soft_failed
    assert not row.outlier

    release.set()
    await eventually(lambda: _synapse_has(dave, room_id, raised), "the power levels on Synapse")
    assert (await _synapse_refusal(dave.send_message(room_id, "after the news")))[:2] == (
        403,
        "M_FORBIDDEN",
    )
    await _synapse_rename(dave, "Dave Renamed")

    async def renamed_on_ranvier() -> bool:
        member = await _ranvier_member(ranvier, room_id, dave.user_id)
        return member is not None and member["content"].get("displayname") == "Dave Renamed"

    await eventually(renamed_on_ranvier, "dave's new name on ranvier")
    renamed = await _ranvier_member(ranvier, room_id, dave.user_id)
    assert renamed is not None
    assert early in renamed["prev_events"]
    renamed_id = (await ranvier.storage.get_current_state_ids(room_id))[(_MEMBER, dave.user_id)]
    since_raised = await _events_since(ranvier, room_id, raised)
    assert [event.event_id for event in since_raised] == [renamed_id]
    carols = await _ranvier_timeline(
        ranvier, await _requester(ranvier, registered.access_token), room_id
    )
    assert early not in carols
    assert raised in carols

    # The other way round: Synapse's room, where Alice demotes Bob while
    # ranvier takes in nothing from Synapse.
    alice = await synapse.register(synapse_http, localpart("alice"))
    hosted = await alice.create_room(preset="public_chat")
    bob = (await ranvier.accounts.register(localpart("bob"), None)).user_id
    await ranvier.join_room(bob, hosted, [synapse.server_name])
    await _exchange(ranvier, bob, alice, hosted, "joined Synapse's room")
    receive_pdus = ranvier.ingester.receive_pdus
    intake_held, intake_released = trio.Event(), trio.Event()

    async def held_receive_pdus(origin: str, pdus: Any, **options: Any) -> Any:
        if origin == synapse.server_name:
            intake_held.set()
            await intake_released.wait()
        return await receive_pdus(origin, pdus, **options)

    monkeypatch.setattr(ranvier.ingester, "receive_pdus", held_receive_pdus)
    levels = await alice.state_event(hosted, "m.room.power_levels")
    users = {**levels.get("users", {}), bob: -1}
    demoted = await alice.send_state(hosted, "m.room.power_levels", {**levels, "users": users})
    with trio.fail_after(_WAIT_SECONDS):
        await intake_held.wait()
    assert await ranvier.storage.get_event(demoted) is None

    unaware = await _say(ranvier, bob, hosted, "before the news")
    intake_released.set()
    await eventually(lambda: _ranvier_has(ranvier, demoted), "the demotion on ranvier")
    refused = await _ranvier_refusal(_say(ranvier, bob, hosted, "after the news"))
    assert refused[:2] == (403, "M_FORBIDDEN")
    await ranvier.profiles.set_field(bob, bob, "displayname", "Bob Renamed")
    bob_renamed = (await ranvier.storage.get_current_state_ids(hosted))[(_MEMBER, bob)]
    renamed_pdu = await _ranvier_json(ranvier, bob_renamed)
    assert renamed_pdu is not None
    assert set(renamed_pdu["prev_events"]) == {unaware, demoted}
    await eventually(lambda: _synapse_has(alice, hosted, bob_renamed), "bob's new name on Synapse")
    alices = [event["event_id"] for event in await alice.timeline(hosted)]
    assert bob_renamed in alices
    assert demoted in alices
    assert unaware not in alices
