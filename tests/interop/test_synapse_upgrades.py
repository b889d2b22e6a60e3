"""Room upgrades between ranvier and a real Synapse, each way round.

A room Synapse hosts, with a member of ranvier's, is upgraded by its Synapse
admin (``POST /rooms/{roomId}/upgrade`` on Synapse): ranvier receives the
tombstone, its user follows it and joins the new room through the
tombstone's sender's server, ranvier then holds the new room's state as
Synapse does, and the user's tag and push rule of the old room follow him
there. The other way, a room ranvier hosts, with Synapse's members,
is upgraded through ranvier's own client API: Synapse receives the
tombstone, its user joins the new room through ranvier and finds the state
ranvier carried over (name, topic, join rules, power levels, bans). Rooms
of versions 10, 11 and 12 are upgraded to 12 (whose room IDs are the create
event's hash and whose creators hold power of their own), and of 10 to 11.

Then the creators of a version 12 room: a user of the other server named in
``additional_creators`` has a creator's power on both servers. Last, the
directory: on the upgrading server the room's local aliases and its place
in the public room list move to the new room, as the other server sees
them over federation. And each server upgrades a room the other made,
through a moderator of its own.

What ranvier has is read from its storage and through its handlers; what
Synapse has, through its client API. Arrival on either side is awaited by
polling, within a bound.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.config import Config, ListenerConfig, RateLimitConfig
from ranvier.errors import MatrixError
from ranvier.server import HomeServer, open_homeserver

from ._checks import WAIT_SECONDS, eventually, in_dag, localpart, on_synapse
from ._synapse import SynapseClientError, SynapseProcess, SynapseUser

_CREATE = ("m.room.create", "")
_POWER_LEVELS = ("m.room.power_levels", "")
_TOMBSTONE = ("m.room.tombstone", "")
_MEMBER = "m.room.member"
#: What both servers copy to the new room, besides the power levels.
_COPIED = ("m.room.name", "m.room.topic", "m.room.join_rules", "m.room.history_visibility")
_UPGRADES = pytest.mark.parametrize(
    ("old_version", "new_version"), [("10", "12"), ("11", "12"), ("12", "12"), ("10", "11")]
)


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


# --- ranvier, with its client API over HTTP ------------------------------------------


class _RanvierUser:
    """A user of ranvier's, with an access token for its client API."""

    def __init__(
        self, user_id: str, access_token: str, base_url: str, http: httpx.AsyncClient
    ) -> None:
        self.user_id = user_id
        self._token = access_token
        self._base_url = base_url
        self._http = http

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        answer = await self._http.request(
            method,
            self._base_url + path,
            json=body,
            headers={"Authorization": f"Bearer {self._token}"},
        )
        assert answer.is_success, (
            f"ranvier answered {method} {path} with {answer.status_code}: {answer.text}"
        )
        return answer.json()

    async def upgrade(self, room_id: str, body: dict[str, Any]) -> str:
        answer = await self.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/upgrade", body)
        assert set(answer) == {"replacement_room"}
        replacement: str = answer["replacement_room"]
        return replacement


@pytest.fixture
async def ranvier_hs(ranvier_config: Config) -> AsyncIterator[HomeServer]:
    """A ranvier HomeServer serving federation over TLS and its client API
    over plain HTTP on loopback, rate limits out of the way.
    """
    config = msgspec.structs.replace(
        ranvier_config,
        listeners=(
            *ranvier_config.listeners,
            ListenerConfig(type="client", host="127.0.0.1", port=0),
        ),
        ratelimit=RateLimitConfig(enabled=False),
    )
    async with open_homeserver(config) as hs:
        yield hs


@pytest.fixture
async def ranvier_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as http:
        yield http


async def _ranvier_user(hs: HomeServer, http: httpx.AsyncClient, name: str) -> _RanvierUser:
    registered = await hs.accounts.register(localpart(name), None)
    assert registered.access_token is not None
    (client,) = [bound for bound in hs.listeners if bound.config.type == "client"]
    return _RanvierUser(registered.user_id, registered.access_token, client.url, http)


async def _ranvier_json(hs: HomeServer, event_id: str) -> dict[str, Any]:
    """The event as ranvier stored it, with its ID (which the PDU itself
    does not carry from room version 3 on).
    """
    row = await hs.storage.get_event(event_id)
    assert row is not None, event_id
    event: dict[str, Any] = msgspec.json.decode(row.json)
    return {**event, "event_id": event_id}


async def _ranvier_state(
    hs: HomeServer, room_id: str, key: tuple[str, str]
) -> dict[str, Any] | None:
    """The event at ``key`` of ranvier's current state of the room, if any."""
    event_id = (await hs.storage.get_current_state_ids(room_id)).get(key)
    return None if event_id is None else await _ranvier_json(hs, event_id)


async def _say(hs: HomeServer, user: str, room_id: str, text: str) -> str:
    return await hs.send_event(user, room_id, "m.room.message", {"msgtype": "m.text", "body": text})


async def _ranvier_refusal(attempt: Awaitable[object]) -> tuple[int, str]:
    try:
        await attempt
    except MatrixError as exc:
        return exc.http_status, exc.errcode
    raise AssertionError("ranvier accepted what it should have refused")


async def _synapse_refusal(attempt: Awaitable[object]) -> tuple[int, str | None]:
    try:
        await attempt
    except SynapseClientError as exc:
        return exc.status, msgspec.json.decode(exc.body).get("errcode")
    raise AssertionError("Synapse accepted what it should have refused")


# --- both ---------------------------------------------------------------------------


async def _same_state(
    hs: HomeServer, user: SynapseUser, room_id: str
) -> dict[tuple[str, str], str]:
    """Wait until both servers hold the same current state of the room (the
    same event at every key); return it.
    """
    last: list[dict[tuple[str, str], str]] = [{}, {}]

    async def agree() -> bool:
        ours = dict(await hs.storage.get_current_state_ids(room_id))
        theirs = await user.state_ids(room_id)
        last[:] = [ours, theirs]
        return ours == theirs

    try:
        await eventually(agree, f"the same current state of {room_id} on both servers")
    except AssertionError:
        ours, theirs = last
        only_ours = {k: v for k, v in ours.items() if theirs.get(k) != v}
        only_theirs = {k: v for k, v in theirs.items() if ours.get(k) != v}
        raise AssertionError(
            f"current states differ: ranvier has {only_ours}, Synapse has {only_theirs}"
        ) from None
    return last[0]


async def _exchange(
    hs: HomeServer, ours: str, theirs: SynapseUser, room_id: str, label: str
) -> None:
    """A message each way, each arriving whole on the other side."""
    from_synapse = await theirs.send_message(room_id, f"{label}: from Synapse")
    from_ranvier = await _say(hs, ours, room_id, f"{label}: from ranvier")
    await eventually(lambda: in_dag(hs.storage, from_synapse), f"{label}: Synapse's message")
    await eventually(
        lambda: on_synapse(theirs, room_id, from_ranvier), f"{label}: ranvier's message"
    )
    arrived = await _ranvier_json(hs, from_synapse)
    assert (arrived["sender"], arrived["content"]["body"]) == (
        theirs.user_id,
        f"{label}: from Synapse",
    )
    seen = await theirs.event(room_id, from_ranvier)
    assert seen is not None
    assert (seen["sender"], seen["content"]["body"]) == (ours, f"{label}: from ranvier")


async def _synapse_state(user: SynapseUser, room_id: str) -> dict[tuple[str, str], Any]:
    """The room's current state as Synapse shows it to ``user``: whole events
    (``/event`` does not serve those Synapse received with its join).
    """
    events = await user.request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state")
    return {(event["type"], event["state_key"]): event for event in events}


async def _synapse_upgrade(user: SynapseUser, room_id: str, body: dict[str, Any]) -> str:
    answer = await user.request(
        "POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/upgrade", body=body
    )
    replacement: str = answer["replacement_room"]
    return replacement


def _check_new_room_id(room_id: str, create: dict[str, Any], version: str) -> None:
    """From v12 a room's ID is its create event's reference hash, and the
    create event has no ``room_id``; before, it names the creating server.
    """
    if version == "12":
        assert room_id == "!" + create["event_id"][1:]
        assert "room_id" not in create
    else:
        assert create["room_id"] == room_id
        assert ":" in room_id


def _without_users(levels: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in levels.items() if key != "users"}


# --- 1. Synapse hosts and upgrades ----------------------------------------------------


@_UPGRADES
async def test_a_room_upgraded_on_synapse_is_followed_by_ranvier(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier_hs: HomeServer,
    ranvier_http: httpx.AsyncClient,
    old_version: str,
    new_version: str,
) -> None:
    ranvier = ranvier_hs
    alice = await synapse.register(synapse_http, localpart("alice"))
    mallory = await synapse.register(synapse_http, localpart("mallory"))
    bob_client = await _ranvier_user(ranvier, ranvier_http, "bob")
    bob = bob_client.user_id
    old = await alice.create_room(
        preset="public_chat",
        room_version=old_version,
        name="Upgraded on Synapse",
        topic="moving soon",
    )
    await ranvier.join_room(bob, old, [synapse.server_name])
    # Bob's own settings of the room, which follow him to the new one.
    await bob_client.request(
        "PUT", f"/_matrix/client/v3/user/{_q(bob)}/rooms/{_q(old)}/tags/u.work", {"order": 0.5}
    )
    await bob_client.request(
        "PUT", f"/_matrix/client/v3/pushrules/global/room/{_q(old)}", {"actions": []}
    )
    await mallory.join(old, via=synapse.server_name)
    levels = await alice.state_event(old, "m.room.power_levels")
    # Bob above the default but no moderator: his level travels, and he
    # still cannot talk in the old room once it is closed.
    levels["users"][bob] = 10
    await alice.send_state(old, "m.room.power_levels", levels)
    await alice.request(
        "POST",
        f"/_matrix/client/v3/rooms/{_q(old)}/ban",
        body={"user_id": mallory.user_id, "reason": "spam"},
    )
    await _same_state(ranvier, alice, old)
    await _exchange(ranvier, bob, alice, old, "before the upgrade")

    new = await _synapse_upgrade(alice, old, {"new_version": new_version})

    # ranvier receives the tombstone, in the old room's current state.
    async def tombstoned() -> bool:
        return await _ranvier_state(ranvier, old, _TOMBSTONE) is not None

    await eventually(tombstoned, "the tombstone on ranvier")
    tombstone = await _ranvier_state(ranvier, old, _TOMBSTONE)
    assert tombstone is not None
    assert tombstone["sender"] == alice.user_id
    assert tombstone["content"]["replacement_room"] == new
    # Synapse closes the old room once the tombstone is sent: both servers
    # end with the same state, the tombstone and the raised levels in it.
    old_state = await _same_state(ranvier, alice, old)
    assert old_state[_TOMBSTONE] == tombstone["event_id"]
    closed = await _ranvier_state(ranvier, old, _POWER_LEVELS)
    assert closed is not None
    assert (closed["content"]["events_default"], closed["content"]["invite"]) == (50, 50)

    # Bob follows the tombstone through its sender's server.
    await ranvier.join_room(bob, new, [_server_of(tombstone["sender"])])
    with trio.fail_after(WAIT_SECONDS):
        await ranvier.wait_for_full_state(new)
    state = await _same_state(ranvier, alice, new)
    assert state[(_MEMBER, bob)]

    create = await _ranvier_json(ranvier, state[_CREATE])
    _check_new_room_id(new, create, new_version)
    assert create["sender"] == alice.user_id
    assert create["content"]["room_version"] == new_version
    predecessor = create["content"]["predecessor"]
    assert predecessor["room_id"] == old
    if new_version == "12":
        # The new room's ID comes from its create event, made before the
        # tombstone, which it therefore cannot name.
        assert "event_id" not in predecessor
    else:
        assert predecessor["event_id"] == tombstone["event_id"]
    assert create["content"] == await alice.state_event(new, "m.room.create")

    # The state Synapse copied: as it was in the old room, and as Synapse has it.
    for event_type in _COPIED:
        copied = await _ranvier_state(ranvier, new, (event_type, ""))
        assert copied is not None, event_type
        assert copied["sender"] == alice.user_id
        assert copied["content"] == await alice.state_event(new, event_type)
        was = await _ranvier_state(ranvier, old, (event_type, ""))
        assert was is not None
        assert copied["content"] == was["content"], event_type
    new_levels = await _ranvier_state(ranvier, new, _POWER_LEVELS)
    assert new_levels is not None
    assert new_levels["content"] == await alice.state_event(new, "m.room.power_levels")
    assert _without_users(new_levels["content"]) == _without_users(levels)
    expected_users = dict(levels["users"])
    if new_version == "12":
        # A creator's power is their own from v12: Alice is not listed.
        expected_users.pop(alice.user_id, None)
    assert new_levels["content"]["users"] == expected_users
    # Synapse carries bans over.
    ban = await _ranvier_state(ranvier, new, (_MEMBER, mallory.user_id))
    assert ban is not None
    assert ban["content"]["membership"] == "ban"
    assert ban["sender"] == alice.user_id

    await _exchange(ranvier, bob, alice, new, "after the upgrade")
    # The old room takes no more messages from Bob, as its levels now say.
    assert await _ranvier_refusal(_say(ranvier, bob, old, "still here?")) == (403, "M_FORBIDDEN")
    # Bob's tag and push rule of the old room came with him.
    tags = await bob_client.request(
        "GET", f"/_matrix/client/v3/user/{_q(bob)}/rooms/{_q(new)}/tags"
    )
    assert tags == {"tags": {"u.work": {"order": 0.5}}}
    rule = await bob_client.request("GET", f"/_matrix/client/v3/pushrules/global/room/{_q(new)}")
    assert (rule["rule_id"], rule["actions"], rule["enabled"]) == (new, [], True)


# --- 2. ranvier hosts and upgrades ----------------------------------------------------


@_UPGRADES
async def test_a_room_upgraded_on_ranvier_is_followed_by_synapse(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier_hs: HomeServer,
    ranvier_http: httpx.AsyncClient,
    old_version: str,
    new_version: str,
) -> None:
    ranvier = ranvier_hs
    carol = await _ranvier_user(ranvier, ranvier_http, "carol")
    old = await ranvier.create_room(
        carol.user_id,
        preset="public_chat",
        name="Upgraded on ranvier",
        topic="moving soon",
        room_version=old_version,
    )
    dave = await synapse.register(synapse_http, localpart("dave"))
    mallory = await synapse.register(synapse_http, localpart("mallory"))
    await dave.join(old, via=ranvier.server_name)
    await mallory.join(old, via=ranvier.server_name)
    levels_event = await _ranvier_state(ranvier, old, _POWER_LEVELS)
    assert levels_event is not None
    levels = {
        **levels_event["content"],
        "users": {**levels_event["content"]["users"], dave.user_id: 10},
    }
    await ranvier.send_event(carol.user_id, old, "m.room.power_levels", levels, state_key="")
    await ranvier.event_creator.ban(carol.user_id, old, mallory.user_id, reason="spam")
    await _same_state(ranvier, dave, old)
    await _exchange(ranvier, carol.user_id, dave, old, "before the upgrade")

    new = await carol.upgrade(old, {"new_version": new_version})

    # Synapse receives the tombstone.
    async def tombstoned() -> bool:
        return _TOMBSTONE in await dave.state_ids(old)

    await eventually(tombstoned, "the tombstone on Synapse")
    tombstone = await dave.state_event(old, "m.room.tombstone")
    assert tombstone["replacement_room"] == new
    old_state = await _same_state(ranvier, dave, old)
    tombstone_event = await _ranvier_json(ranvier, old_state[_TOMBSTONE])
    assert tombstone_event["sender"] == carol.user_id
    closed = await dave.state_event(old, "m.room.power_levels")
    assert (closed["events_default"], closed["invite"]) == (50, 50)
    # Synapse refuses Dave's next message there, as the raised levels say.
    assert await _synapse_refusal(dave.send_message(old, "still here?")) == (403, "M_FORBIDDEN")

    # Dave follows the tombstone through its sender's server: ranvier.
    await dave.join(new, via=_server_of(tombstone_event["sender"]))
    assert await dave.joined_members(new) == {carol.user_id, dave.user_id}
    state = await _same_state(ranvier, dave, new)

    create = await dave.state_event(new, "m.room.create")
    _check_new_room_id(new, await _ranvier_json(ranvier, state[_CREATE]), new_version)
    assert create["room_version"] == new_version
    predecessor = create["predecessor"]
    assert predecessor["room_id"] == old
    if new_version == "12":
        assert "event_id" not in predecessor
    else:
        # The last event of the old room before the upgrade, which Synapse has.
        assert await dave.event(old, predecessor["event_id"]) is not None
    for event_type in _COPIED:
        copied = await dave.state_event(new, event_type)
        was = await _ranvier_state(ranvier, old, (event_type, ""))
        assert was is not None
        assert copied == was["content"], event_type
    new_levels = await dave.state_event(new, "m.room.power_levels")
    assert _without_users(new_levels) == _without_users(levels)
    expected_users = dict(levels["users"])
    if new_version == "12":
        expected_users.pop(carol.user_id, None)
    assert new_levels["users"] == expected_users
    # Mallory stays banned: Synapse shows the ban, and her join is refused.
    ban = (await _synapse_state(dave, new))[(_MEMBER, mallory.user_id)]
    assert ban["event_id"] == state[(_MEMBER, mallory.user_id)]
    assert ban["sender"] == carol.user_id
    assert ban["content"] == {"membership": "ban", "reason": "spam"}
    # (Synapse, in the room through Dave, refuses it itself, with its own
    # errcode for a membership the current one does not allow.)
    with pytest.raises(SynapseClientError) as refused:
        await mallory.join(new, via=ranvier.server_name)
    assert refused.value.status == 403
    assert "banned" in refused.value.body

    await _exchange(ranvier, carol.user_id, dave, new, "after the upgrade")


# --- 3. the creators of a v12 room --------------------------------------------------


async def test_an_additional_creator_on_synapse_holds_power_in_a_room_hosted_by_ranvier(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier_hs: HomeServer,
    ranvier_http: httpx.AsyncClient,
) -> None:
    ranvier = ranvier_hs
    carol = await _ranvier_user(ranvier, ranvier_http, "carol")
    frank = (await ranvier.accounts.register(localpart("frank"), None)).user_id
    old = await ranvier.create_room(carol.user_id, preset="public_chat", room_version="11")
    dave = await synapse.register(synapse_http, localpart("dave"))
    await dave.join(old, via=ranvier.server_name)
    await ranvier.join_room(frank, old)
    levels_event = await _ranvier_state(ranvier, old, _POWER_LEVELS)
    assert levels_event is not None
    levels = {**levels_event["content"], "users": {**levels_event["content"]["users"], frank: 100}}
    await ranvier.send_event(carol.user_id, old, "m.room.power_levels", levels, state_key="")
    await _same_state(ranvier, dave, old)

    new = await carol.upgrade(old, {"new_version": "12", "additional_creators": [dave.user_id]})

    await ranvier.join_room(frank, new)
    await dave.join(new, via=ranvier.server_name)
    await _same_state(ranvier, dave, new)
    create = await dave.state_event(new, "m.room.create")
    assert create["additional_creators"] == [dave.user_id]
    new_levels = await dave.state_event(new, "m.room.power_levels")
    # Neither creator is listed; Frank keeps his 100.
    assert new_levels["users"] == {frank: 100}

    # Frank, at 100, may not ban Dave, whose creator's power is above any
    # level: ranvier refuses it.
    assert await _ranvier_refusal(ranvier.event_creator.ban(frank, new, dave.user_id)) == (
        403,
        "M_FORBIDDEN",
    )
    # Dave, listed nowhere in the power levels, demotes Frank: Synapse lets
    # its user, and ranvier accepts the event into the room's state.
    demoted = await dave.send_state(new, "m.room.power_levels", {**new_levels, "users": {frank: 0}})
    await eventually(lambda: in_dag(ranvier.storage, demoted), "Dave's power levels on ranvier")
    state = await _same_state(ranvier, dave, new)
    assert state[_POWER_LEVELS] == demoted
    # And a state event only creators may send, by the levels he set.
    only_creators = {**new_levels, "users": {frank: 0}, "state_default": 1000}
    raised = await dave.send_state(new, "m.room.power_levels", only_creators)
    named = await dave.send_state(new, "m.room.name", {"name": "Dave's now"})
    await eventually(lambda: in_dag(ranvier.storage, raised, named), "Dave's state on ranvier")
    state = await _same_state(ranvier, dave, new)
    assert state[("m.room.name", "")] == named
    # Carol, the other creator, may too; Frank may not.
    await ranvier.send_event(
        carol.user_id, new, "m.room.topic", {"topic": "creators only"}, state_key=""
    )
    assert await _ranvier_refusal(
        ranvier.send_event(frank, new, "m.room.topic", {"topic": "me too"}, state_key="")
    ) == (403, "M_FORBIDDEN")
    await _same_state(ranvier, dave, new)
    assert (await dave.state_event(new, "m.room.topic")) == {"topic": "creators only"}


async def test_an_additional_creator_on_ranvier_holds_power_in_a_room_hosted_by_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    alice = await synapse.register(synapse_http, localpart("alice"))
    grace = await synapse.register(synapse_http, localpart("grace"))
    bob = (await ranvier.accounts.register(localpart("bob"), None)).user_id
    old = await alice.create_room(preset="public_chat", room_version="11")
    await ranvier.join_room(bob, old, [synapse.server_name])
    await grace.join(old, via=synapse.server_name)
    levels = await alice.state_event(old, "m.room.power_levels")
    levels["users"][grace.user_id] = 100
    await alice.send_state(old, "m.room.power_levels", levels)
    await _same_state(ranvier, alice, old)

    new = await _synapse_upgrade(alice, old, {"new_version": "12", "additional_creators": [bob]})

    await grace.join(new, via=synapse.server_name)
    await ranvier.join_room(bob, new, [synapse.server_name])
    with trio.fail_after(WAIT_SECONDS):
        await ranvier.wait_for_full_state(new)
    await _same_state(ranvier, alice, new)
    create = await _ranvier_state(ranvier, new, _CREATE)
    assert create is not None
    assert create["content"]["additional_creators"] == [bob]
    new_levels = await _ranvier_state(ranvier, new, _POWER_LEVELS)
    assert new_levels is not None
    assert new_levels["content"]["users"] == {grace.user_id: 100}

    # Grace, at 100, may not kick Bob: Synapse refuses it.
    kick = grace.request("POST", f"/_matrix/client/v3/rooms/{_q(new)}/kick", body={"user_id": bob})
    assert await _synapse_refusal(kick) == (403, "M_FORBIDDEN")
    # Bob, listed nowhere, demotes Grace: ranvier lets him, and Synapse
    # takes the event into the room's state.
    content = {**new_levels["content"], "users": {grace.user_id: 0}, "state_default": 1000}
    demoted = await ranvier.send_event(bob, new, "m.room.power_levels", content, state_key="")
    await eventually(lambda: on_synapse(alice, new, demoted), "Bob's power levels on Synapse")
    state = await _same_state(ranvier, alice, new)
    assert state[_POWER_LEVELS] == demoted
    named = await ranvier.send_event(bob, new, "m.room.name", {"name": "Bob's now"}, state_key="")
    await eventually(lambda: on_synapse(alice, new, named), "Bob's name on Synapse")
    state = await _same_state(ranvier, alice, new)
    assert state[("m.room.name", "")] == named
    assert await _synapse_refusal(grace.send_state(new, "m.room.name", {"name": "Grace's"})) == (
        403,
        "M_FORBIDDEN",
    )


# --- 4. the directory follows the room -------------------------------------------------


async def test_aliases_and_the_room_list_move_with_a_room_upgraded_on_ranvier(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier_hs: HomeServer,
    ranvier_http: httpx.AsyncClient,
) -> None:
    ranvier = ranvier_hs
    carol = await _ranvier_user(ranvier, ranvier_http, "carol")
    marker = localpart("lounge")
    created = await carol.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            "preset": "public_chat",
            "room_version": "10",
            "name": f"{marker} on ranvier",
            "room_alias_name": marker,
            "visibility": "public",
        },
    )
    old = created["room_id"]
    alias = f"#{marker}:{ranvier.server_name}"
    other = f"#{marker}-too:{ranvier.server_name}"
    await carol.request("PUT", f"/_matrix/client/v3/directory/room/{_q(other)}", {"room_id": old})
    canonical = {"alias": alias, "alt_aliases": [other]}
    await carol.request(
        "PUT", f"/_matrix/client/v3/rooms/{_q(old)}/state/m.room.canonical_alias/", canonical
    )
    dave = await synapse.register(synapse_http, localpart("dave"))
    await dave.join(old, via=ranvier.server_name)

    new = await carol.upgrade(old, {"new_version": "12"})

    # Synapse asks ranvier where the aliases point, and for its room list.
    for name in (alias, other):
        found = await dave.request("GET", f"/_matrix/client/v3/directory/room/{_q(name)}")
        assert found["room_id"] == new, name
    listed = await dave.request(
        "POST",
        "/_matrix/client/v3/publicRooms",
        params={"server": ranvier.server_name},
        body={"filter": {"generic_search_term": marker}},
    )
    assert [room["room_id"] for room in listed["chunk"]] == [new]
    assert listed["chunk"][0]["canonical_alias"] == alias
    # The new room has the canonical alias; the old one no longer names the moved aliases.
    await dave.join(new, via=ranvier.server_name)
    await _same_state(ranvier, dave, new)
    assert await dave.state_event(new, "m.room.canonical_alias") == canonical
    await _same_state(ranvier, dave, old)
    assert await dave.state_event(old, "m.room.canonical_alias") == {}


async def test_aliases_and_the_room_list_move_with_a_room_upgraded_on_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    alice = await synapse.register(synapse_http, localpart("alice"))
    marker = localpart("lounge")
    old = await alice.create_room(
        preset="public_chat",
        room_version="10",
        name=f"{marker} on Synapse",
        room_alias_name=marker,
        visibility="public",
    )
    alias = f"#{marker}:{synapse.server_name}"
    bob = (await ranvier.accounts.register(localpart("bob"), None)).user_id
    await ranvier.join_room(bob, old, [synapse.server_name])

    new = await _synapse_upgrade(alice, old, {"new_version": "12"})

    found = await ranvier.room_directory.resolve(alias)
    assert found.room_id == new

    async def listed_anew() -> bool:
        page = await ranvier.room_list.public_rooms(server=synapse.server_name, search=marker)
        return [room["room_id"] for room in page["chunk"]] == [new]

    await eventually(listed_anew, "the new room in Synapse's room list")
    await ranvier.join_room(bob, new, [synapse.server_name])
    await _same_state(ranvier, alice, new)
    canonical = await _ranvier_state(ranvier, new, ("m.room.canonical_alias", ""))
    assert canonical is not None
    assert canonical["content"]["alias"] == alias


# --- 5. the upgrader a member of the other server ----------------------------------------


async def test_a_room_synapse_made_is_upgraded_by_a_moderator_on_ranvier(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier_hs: HomeServer,
    ranvier_http: httpx.AsyncClient,
) -> None:
    ranvier = ranvier_hs
    alice = await synapse.register(synapse_http, localpart("alice"))
    mallory = await synapse.register(synapse_http, localpart("mallory"))
    bob = await _ranvier_user(ranvier, ranvier_http, "bob")
    old = await alice.create_room(
        preset="public_chat", room_version="10", name="Made on Synapse", topic="for now"
    )
    await ranvier.join_room(bob.user_id, old, [synapse.server_name])
    await mallory.join(old, via=synapse.server_name)
    levels = await alice.state_event(old, "m.room.power_levels")
    levels["users"][bob.user_id] = 100
    await alice.send_state(old, "m.room.power_levels", levels)
    await alice.request(
        "POST",
        f"/_matrix/client/v3/rooms/{_q(old)}/ban",
        body={"user_id": mallory.user_id, "reason": "spam"},
    )
    with trio.fail_after(WAIT_SECONDS):
        await ranvier.wait_for_full_state(old)
    await _same_state(ranvier, alice, old)

    new = await bob.upgrade(old, {"new_version": "12"})

    # Synapse takes the tombstone and the closing power levels from ranvier.
    old_state = await _same_state(ranvier, alice, old)
    tombstone = (await _synapse_state(alice, old))[_TOMBSTONE]
    assert tombstone["event_id"] == old_state[_TOMBSTONE]
    assert (tombstone["sender"], tombstone["content"]["replacement_room"]) == (bob.user_id, new)
    closed = await alice.state_event(old, "m.room.power_levels")
    assert (closed["events_default"], closed["invite"]) == (50, 50)

    await alice.join(new, via=_server_of(bob.user_id))
    state = await _same_state(ranvier, alice, new)
    create = await _ranvier_json(ranvier, state[_CREATE])
    _check_new_room_id(new, create, "12")
    assert create["sender"] == bob.user_id
    assert await alice.state_event(new, "m.room.create") == {
        "room_version": "12",
        "predecessor": {"room_id": old},
    }
    for event_type in _COPIED:
        assert await alice.state_event(new, event_type) == await alice.state_event(
            old, event_type
        ), event_type
    # Bob is the new room's creator; Alice keeps her 100.
    assert (await alice.state_event(new, "m.room.power_levels"))["users"] == {alice.user_id: 100}
    ban = (await _synapse_state(alice, new))[(_MEMBER, mallory.user_id)]
    assert (ban["sender"], ban["content"]) == (bob.user_id, {"membership": "ban", "reason": "spam"})
    await _exchange(ranvier, bob.user_id, alice, new, "after the upgrade")


async def test_a_room_ranvier_made_is_upgraded_by_a_moderator_on_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    carol = (await ranvier.accounts.register(localpart("carol"), None)).user_id
    old = await ranvier.create_room(
        carol, preset="public_chat", room_version="11", name="Made on ranvier", topic="for now"
    )
    dave = await synapse.register(synapse_http, localpart("dave"))
    await dave.join(old, via=ranvier.server_name)
    levels_event = await _ranvier_state(ranvier, old, _POWER_LEVELS)
    assert levels_event is not None
    users = {**levels_event["content"]["users"], dave.user_id: 100}
    await ranvier.send_event(
        carol, old, "m.room.power_levels", {**levels_event["content"], "users": users}, state_key=""
    )
    await _same_state(ranvier, dave, old)
    # Synapse upgrades once its own resync of the room is done.
    assert await dave.joined_members(old) == {carol, dave.user_id}

    new = await _synapse_upgrade(dave, old, {"new_version": "12"})

    async def tombstoned() -> bool:
        return await _ranvier_state(ranvier, old, _TOMBSTONE) is not None

    await eventually(tombstoned, "the tombstone on ranvier")
    old_state = await _same_state(ranvier, dave, old)
    tombstone = await _ranvier_json(ranvier, old_state[_TOMBSTONE])
    assert (tombstone["sender"], tombstone["content"]["replacement_room"]) == (dave.user_id, new)
    closed = await _ranvier_state(ranvier, old, _POWER_LEVELS)
    assert closed is not None
    assert closed["sender"] == dave.user_id
    assert (closed["content"]["events_default"], closed["content"]["invite"]) == (50, 50)

    await ranvier.join_room(carol, new, [_server_of(tombstone["sender"])])
    with trio.fail_after(WAIT_SECONDS):
        await ranvier.wait_for_full_state(new)
    state = await _same_state(ranvier, dave, new)
    create = await _ranvier_json(ranvier, state[_CREATE])
    _check_new_room_id(new, create, "12")
    assert create["content"]["predecessor"] == {"room_id": old}
    for event_type in _COPIED:
        copied = await _ranvier_state(ranvier, new, (event_type, ""))
        was = await _ranvier_state(ranvier, old, (event_type, ""))
        assert copied is not None
        assert was is not None
        assert (copied["sender"], copied["content"]) == (dave.user_id, was["content"])
    new_levels = await _ranvier_state(ranvier, new, _POWER_LEVELS)
    assert new_levels is not None
    assert new_levels["content"]["users"] == {carol: 100}
    await _exchange(ranvier, carol, dave, new, "after the upgrade")
