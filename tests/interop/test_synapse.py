"""ranvier and a real Synapse in one room, each way round.

Synapse hosts a room (version 12, its default, and the older 10 and 11) and
ranvier joins it; ranvier hosts a room and a Synapse user joins it. Both
joins are partial (each server asks ``send_join`` to omit members) and
followed by a resync from the other server. In both, messages go each way,
at the same time as well as in turn, while the joiner resyncs and after, a
state change made on one side reaches the other, and the two servers end
with the same current state: the same event ID at every key. Then the same
in rooms that are busy while the join and the resync happen, and invites
each way.

What ranvier has is read from its storage; what Synapse has, through its
client API. Synapse acknowledges a PDU before storing it, so arrival on
either side is awaited by polling, within a bound.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.server import HomeServer
from ranvier.storage import Storage

from ._checks import eventually, in_dag, localpart, on_synapse
from ._synapse import SynapseProcess, SynapseUser

_WAIT_SECONDS = 60.0
_VERSIONS = pytest.mark.parametrize("version", ["10", "11", "12"])


async def _ranvier_event(storage: Storage, event_id: str) -> dict[str, Any]:
    row = await storage.get_event(event_id)
    assert row is not None, event_id
    event: dict[str, Any] = msgspec.json.decode(row.json)
    return event


async def _ranvier_membership(storage: Storage, room_id: str, user_id: str) -> str | None:
    state = await storage.get_current_state_ids(room_id)
    event_id = state.get(("m.room.member", user_id))
    if event_id is None:
        return None
    membership: str = (await _ranvier_event(storage, event_id))["content"]["membership"]
    return membership


async def _same_state(hs: HomeServer, user: SynapseUser, room_id: str) -> None:
    """Wait until both servers hold the same current state, then check it is so."""
    last: list[dict[tuple[str, str], str]] = []

    async def agree() -> bool:
        ours = await hs.storage.get_current_state_ids(room_id)
        theirs = await user.state_ids(room_id)
        last[:] = [ours, theirs]
        return ours == theirs

    try:
        await eventually(agree, "the same current state on both servers")
    except AssertionError:
        ours, theirs = last
        only_ours = {k: v for k, v in ours.items() if theirs.get(k) != v}
        only_theirs = {k: v for k, v in theirs.items() if ours.get(k) != v}
        raise AssertionError(
            f"current states differ: ranvier has {only_ours}, Synapse has {only_theirs}"
        ) from None


async def _talk(
    hs: HomeServer, ranvier_user: str, synapse_user: SynapseUser, room_id: str, label: str
) -> None:
    """Messages from each side, in turn and then at once; each must arrive,
    with its sender and body, on the other side.
    """
    from_synapse = [await synapse_user.send_message(room_id, f"{label}: Synapse 0")]
    text = {"msgtype": "m.text", "body": f"{label}: ranvier 0"}
    from_ranvier = [await hs.send_event(ranvier_user, room_id, "m.room.message", text)]

    async def synapse_side() -> None:
        for n in range(1, 4):
            from_synapse.append(await synapse_user.send_message(room_id, f"{label}: Synapse {n}"))

    async def ranvier_side() -> None:
        for n in range(1, 4):
            body = {"msgtype": "m.text", "body": f"{label}: ranvier {n}"}
            from_ranvier.append(await hs.send_event(ranvier_user, room_id, "m.room.message", body))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(synapse_side)
        nursery.start_soon(ranvier_side)

    await eventually(
        lambda: in_dag(hs.storage, *from_synapse), f"{label}: Synapse's messages on ranvier"
    )
    await eventually(
        lambda: on_synapse(synapse_user, room_id, *from_ranvier),
        f"{label}: ranvier's messages on Synapse",
    )
    for n, event_id in enumerate(from_synapse):
        event = await _ranvier_event(hs.storage, event_id)
        assert event["sender"] == synapse_user.user_id
        assert event["content"]["body"] == f"{label}: Synapse {n}"
    for n, event_id in enumerate(from_ranvier):
        seen = await synapse_user.event(room_id, event_id)
        assert seen is not None
        assert seen["sender"] == ranvier_user
        assert seen["content"]["body"] == f"{label}: ranvier {n}"


@_VERSIONS
async def test_ranvier_joins_a_room_hosted_by_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer, version: str
) -> None:
    alice = await synapse.register(synapse_http, localpart("alice"))
    carol = await synapse.register(synapse_http, localpart("carol"))
    room_id = await alice.create_room(preset="public_chat", name="On Synapse", room_version=version)
    # A second member, whose membership a partial answer leaves out.
    await carol.join(room_id, via=synapse.server_name)
    before = await alice.send_message(room_id, "before the join")
    bob = f"@bob:{ranvier.server_name}"

    join_id = await ranvier.join_room(bob, room_id, [synapse.server_name])

    # Synapse answers send_join with partial state (without Carol's
    # membership). join_room hands the room to the un-partial-state task
    # before it returns, with no checkpoint in between, so the room is in
    # the task's status here however fast the resync then goes.
    assert room_id in ranvier.resync_status(), "the join did not give partial state"
    storage = ranvier.storage
    assert await in_dag(storage, join_id)
    assert await storage.get_room_version(room_id) == version
    assert before in (await _ranvier_event(storage, join_id))["prev_events"]
    await eventually(lambda: on_synapse(alice, room_id, join_id), "ranvier's join on Synapse")
    assert await alice.joined_members(room_id) == {alice.user_id, carol.user_id, bob}

    # Messages both ways while the state is (or may still be) partial.
    await _talk(ranvier, bob, alice, room_id, "just joined")

    await _resynced(ranvier, room_id)
    assert await _ranvier_membership(storage, room_id, carol.user_id) == "join"
    await _same_state(ranvier, alice, room_id)

    await _talk(ranvier, bob, carol, room_id, "resynced")
    topic = await alice.send_state(room_id, "m.room.topic", {"topic": "set on Synapse"})
    await eventually(lambda: in_dag(storage, topic), "the topic on ranvier")
    await _same_state(ranvier, alice, room_id)
    assert (await storage.get_current_state_ids(room_id))[("m.room.topic", "")] == topic

    leave_id = await ranvier.leave_room(bob, room_id)
    await eventually(lambda: on_synapse(alice, room_id, leave_id), "ranvier's leave on Synapse")
    assert await alice.joined_members(room_id) == {alice.user_id, carol.user_id}


@_VERSIONS
async def test_a_synapse_user_joins_a_room_hosted_by_ranvier(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer, version: str
) -> None:
    carol = f"@carol:{ranvier.server_name}"
    erin = f"@erin:{ranvier.server_name}"
    room_id = await ranvier.create_room(
        carol, preset="public_chat", name="On ranvier", room_version=version
    )
    # A second member, whose membership a partial answer leaves out.
    await ranvier.join_room(erin, room_id)
    before = await ranvier.send_event(carol, room_id, "m.room.message", {"body": "before"})
    dave = await synapse.register(synapse_http, localpart("dave"))
    log_mark = synapse.log_size()

    assert await dave.join(room_id, via=ranvier.server_name) == room_id

    assert await _ranvier_membership(ranvier.storage, room_id, dave.user_id) == "join"
    # Synapse asks for partial state and resyncs from ranvier afterwards:
    # messages both ways while it does.
    await _talk(ranvier, carol, dave, room_id, "just joined")
    # /joined_members waits for the resync, and only a partial join makes
    # Synapse log one.
    assert await dave.joined_members(room_id) == {carol, erin, dave.user_id}
    assert synapse.logged_since(log_mark, f"State resync complete for {room_id}"), (
        "Synapse did not join with partial state"
    )
    await _same_state(ranvier, dave, room_id)

    async def backfilled() -> bool:
        return before in {event["event_id"] for event in await dave.timeline(room_id)}

    # The message before the join reaches Synapse when it pages back.
    await eventually(backfilled, "the message before the join, backfilled by Synapse")

    await _talk(ranvier, erin, dave, room_id, "resynced")

    topic = await ranvier.send_event(
        carol, room_id, "m.room.topic", {"topic": "set on ranvier"}, state_key=""
    )
    await eventually(lambda: on_synapse(dave, room_id, topic), "the topic on Synapse")
    await _same_state(ranvier, dave, room_id)
    assert (await dave.state_ids(room_id))[("m.room.topic", "")] == topic

    await dave.leave(room_id)
    await eventually(
        lambda: _membership_is(ranvier.storage, room_id, dave.user_id, "leave"),
        "Synapse's leave on ranvier",
    )


async def test_ranvier_joins_a_busy_room_hosted_by_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    alice = await synapse.register(synapse_http, localpart("alice"))
    room_id = await alice.create_room(preset="public_chat", name="Busy on Synapse")
    members = [await synapse.register(synapse_http, localpart("member")) for _ in range(8)]
    for member in members:
        await member.join(room_id, via=synapse.server_name)
    bob = f"@bob:{ranvier.server_name}"
    joined = trio.Event()
    after_join: list[str] = []
    ours: list[str] = []

    async def synapse_traffic() -> None:
        # Messages, members leaving and coming back, topics: before, during
        # and after ranvier's join and resync.
        for n in range(30):
            # Only what is sent once the join has returned is sure to come
            # after it: a send still under way may be placed before it, as
            # history the joining server is not sent.
            after = joined.is_set()
            member = members[n % len(members)]
            sent = [await member.send_message(room_id, f"busy {n}")]
            if n % 7 == 3:
                await member.leave(room_id)
                await member.join(room_id, via=synapse.server_name)
            if n % 9 == 5:
                sent.append(await alice.send_state(room_id, "m.room.topic", {"topic": f"{n}"}))
            if after:
                after_join.extend(sent)
            await trio.sleep(0.01)

    async def ranvier_side() -> None:
        await trio.sleep(0.1)
        await ranvier.join_room(bob, room_id, [synapse.server_name])
        joined.set()
        for n in range(10):
            body = {"msgtype": "m.text", "body": f"ranvier {n}"}
            ours.append(await ranvier.send_event(bob, room_id, "m.room.message", body))
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(synapse_traffic)
        nursery.start_soon(ranvier_side)

    storage = ranvier.storage
    await _resynced(ranvier, room_id)
    await eventually(lambda: in_dag(storage, *after_join), "Synapse's events on ranvier")
    await eventually(lambda: on_synapse(alice, room_id, *ours), "ranvier's messages on Synapse")
    await _same_state(ranvier, alice, room_id)

    # Given the power to, ranvier's user renames the room.
    levels = await alice.state_event(room_id, "m.room.power_levels")
    levels["users"][bob] = 100
    raised = await alice.send_state(room_id, "m.room.power_levels", levels)
    await eventually(lambda: in_dag(storage, raised), "the power levels on ranvier")
    name = {"name": "renamed on ranvier"}
    renamed = await ranvier.send_event(bob, room_id, "m.room.name", name, state_key="")
    await eventually(lambda: on_synapse(alice, room_id, renamed), "the new name on Synapse")
    assert await alice.state_event(room_id, "m.room.name") == name
    await _same_state(ranvier, alice, room_id)


async def test_a_synapse_user_joins_a_busy_room_hosted_by_ranvier(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    carol = f"@carol:{ranvier.server_name}"
    # Unnamed: a partial answer must keep the memberships of its heroes.
    room_id = await ranvier.create_room(carol, preset="public_chat")
    members = [f"@member{n}:{ranvier.server_name}" for n in range(8)]
    for member in members:
        await ranvier.join_room(member, room_id)
    dave = await synapse.register(synapse_http, localpart("dave"))
    joined = trio.Event()
    after_join: list[str] = []
    theirs: list[str] = []

    async def ranvier_traffic() -> None:
        for n in range(30):
            after = joined.is_set()  # as above
            member = members[n % len(members)]
            body = {"msgtype": "m.text", "body": f"busy {n}"}
            sent = [await ranvier.send_event(member, room_id, "m.room.message", body)]
            if n % 7 == 3:
                sent.append(await ranvier.leave_room(member, room_id))
                sent.append(await ranvier.join_room(member, room_id))
            if n % 9 == 5:
                topic = {"topic": f"{n}"}
                sent.append(
                    await ranvier.send_event(carol, room_id, "m.room.topic", topic, state_key="")
                )
            if after:
                after_join.extend(sent)
            await trio.sleep(0.01)

    async def synapse_side() -> None:
        await trio.sleep(0.1)
        await dave.join(room_id, via=ranvier.server_name)
        joined.set()
        for n in range(10):
            theirs.append(await dave.send_message(room_id, f"Synapse {n}"))
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ranvier_traffic)
        nursery.start_soon(synapse_side)

    async def everyone_joined() -> bool:
        # Synapse takes in what arrived during its join only after the resync.
        return await dave.joined_members(room_id) == {carol, *members, dave.user_id}

    await eventually(everyone_joined, "every member joined, as Synapse sees it")
    await eventually(lambda: on_synapse(dave, room_id, *after_join), "ranvier's events on Synapse")
    await eventually(lambda: in_dag(ranvier.storage, *theirs), "Synapse's messages on ranvier")
    await _same_state(ranvier, dave, room_id)

    # A second Synapse user joins on Synapse, which is in the room now: the
    # join reaches ranvier as a PDU.
    erin = await synapse.register(synapse_http, localpart("erin"))
    await erin.join(room_id, via=synapse.server_name)
    await eventually(
        lambda: _membership_is(ranvier.storage, room_id, erin.user_id, "join"),
        "a join made on Synapse, on ranvier",
    )
    await _talk(ranvier, carol, erin, room_id, "second Synapse user")
    await _same_state(ranvier, dave, room_id)


async def test_invites_each_way(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    # Synapse's user invites ranvier's into an invite-only room.
    alice = await synapse.register(synapse_http, localpart("alice"))
    room_id = await alice.create_room(preset="private_chat", name="Invite only, on Synapse")
    bob = f"@bob:{ranvier.server_name}"
    await alice.invite(room_id, bob)
    invite_id = (await alice.state_ids(room_id))[("m.room.member", bob)]
    invite = await _ranvier_event(ranvier.storage, invite_id)
    assert invite["content"]["membership"] == "invite"
    assert ranvier.server_name in invite["signatures"]
    join_id = await ranvier.join_room(bob, room_id, [synapse.server_name])
    await eventually(lambda: on_synapse(alice, room_id, join_id), "ranvier's join on Synapse")
    await _resynced(ranvier, room_id)

    # ranvier's user invites another Synapse user, who joins.
    zoe = await synapse.register(synapse_http, localpart("zoe"))
    await ranvier.invite(bob, room_id, zoe.user_id)
    await zoe.join(room_id, via=synapse.server_name)
    await eventually(
        lambda: _membership_is(ranvier.storage, room_id, zoe.user_id, "join"),
        "the invited Synapse user's join on ranvier",
    )
    await _same_state(ranvier, alice, room_id)

    # And into a room ranvier hosts: the invite reaches Synapse, whose user
    # sees it and joins.
    carol = f"@carol:{ranvier.server_name}"
    hosted = await ranvier.create_room(carol, preset="private_chat", name="Invite only, on ranvier")
    await ranvier.invite(carol, hosted, zoe.user_id)
    synced = await zoe.request("GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
    assert hosted in synced["rooms"]["invite"]
    await zoe.join(hosted, via=ranvier.server_name)
    assert await zoe.joined_members(hosted) == {carol, zoe.user_id}
    await _same_state(ranvier, zoe, hosted)


async def _resynced(hs: HomeServer, room_id: str) -> None:
    """Wait for ranvier's resync of the room to finish, and check it did."""
    with trio.move_on_after(_WAIT_SECONDS):
        await hs.wait_for_full_state(room_id)
    status = hs.resync_status().get(room_id)
    assert status is None, f"gave up after {_WAIT_SECONDS:.0f} s waiting for the resync: {status}"
    assert not await hs.storage.is_partial_state_room(room_id)
    assert await hs.storage.get_partial_state_events(room_id) == []


async def _membership_is(storage: Storage, room_id: str, user_id: str, membership: str) -> bool:
    return await _ranvier_membership(storage, room_id, user_id) == membership
