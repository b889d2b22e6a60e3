from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from _rooms import ALICE, BOB, CAROL, DAVE

from ranvier.core.builder import build_event, prepare_event, wall_clock_ms
from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.auth import StateKey, auth_types_for_event
from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.protocol.events import MAX_PREV_EVENTS, Pdu
from ranvier.protocol.hashing import compute_room_id, content_hash_matches
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import (
    SigningKey,
    generate_signing_key,
    get_verify_key,
    verify_signed_json,
)
from ranvier.storage import StateMap, Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all, make_pdu

SERVER = "example.org"
KEY = generate_signing_key("1")


def _clock(start: int = 1_700_000_000_000) -> Any:
    counter = itertools.count(start)
    return lambda: next(counter)


async def _build(
    storage: Storage,
    template: Mapping[str, Any],
    version: str,
    *,
    key: SigningKey = KEY,
    **kwargs: Any,
) -> Pdu:
    return await build_event(
        template,
        room_version=version,
        store=storage,
        server_name=SERVER,
        signing_key=key,
        **kwargs,
    )


def _expected_auth(event: Pdu, state: Mapping[StateKey, str]) -> set[str]:
    return {state[key] for key in auth_types_for_event(event) if key in state}


async def _stored(storage: Storage, version: str = "10") -> RoomBuilder:
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(storage, list(room.events.values()))
    return room


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_a_create_event(storage: Storage, version: str) -> None:
    content: dict[str, Any] = {"room_version": version}
    template: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "sender": ALICE,
        "content": content,
    }
    if version == "10":
        content["creator"] = ALICE
    if version != "12":
        template["room_id"] = "!new:example.org"
    event = await _build(storage, template, version, clock=_clock(42))

    assert event.prev_event_ids == ()
    assert event.auth_event_ids == ()
    assert event.depth == 1
    assert event.origin_server_ts == 42
    assert event.content == content
    if version == "12":
        assert "room_id" not in event.json
        assert event.room_id == compute_room_id(event.json, version)
        assert event.room_id == "!" + event.event_id[1:]
    else:
        assert event.room_id == "!new:example.org"
    assert content_hash_matches(event.json)
    verify_signed_json(redact(event.json, version), SERVER, get_verify_key(KEY))
    # The template is not changed.
    assert set(template) == {"type", "state_key", "sender", "content"} | (
        set() if version == "12" else {"room_id"}
    )


@pytest.mark.parametrize("version", ["10", "12"])
async def test_a_message_follows_the_room(storage: Storage, version: str) -> None:
    room = await _stored(storage, version)
    last = room.events[room.last]
    template = {"type": "m.room.message", "sender": BOB, "room_id": room.room_id}
    event = await _build(
        storage, template | {"content": {"body": "hi"}}, version, clock=_clock(7_000)
    )

    assert event.prev_event_ids == (room.last,)
    assert event.depth == last.depth + 1
    assert event.origin_server_ts == 7_000
    state = room.state_after[room.last]
    assert set(event.auth_event_ids) == _expected_auth(event, state)
    # Create, power levels and Bob's join; from v12 the room ID stands for the create event.
    cited = {room.events[auth_id].type for auth_id in event.auth_event_ids}
    if version == "12":
        assert cited == {"m.room.power_levels", "m.room.member"}
    else:
        assert cited == {"m.room.create", "m.room.power_levels", "m.room.member"}
    verify_signed_json(redact(event.json, version), SERVER, get_verify_key(KEY))
    assert content_hash_matches(event.json)
    # It passes the auth checks as built.
    outcome = await ingest(storage, event)
    assert outcome.failure is None
    assert await storage.get_forward_extremities(room.room_id) == {event.event_id}


async def test_a_membership_cites_the_target_and_join_rules(storage: Storage) -> None:
    room = await _stored(storage)
    invite = await _build(
        storage,
        {
            "type": "m.room.member",
            "state_key": DAVE,
            "sender": ALICE,
            "room_id": room.room_id,
            "content": {"membership": "invite"},
        },
        "10",
    )
    state = room.state_after[room.last]
    assert set(invite.auth_event_ids) == {
        state[("m.room.create", "")],
        state[("m.room.power_levels", "")],
        state[("m.room.member", ALICE)],
        state[("m.room.join_rules", "")],
    }
    assert (await ingest(storage, invite)).failure is None
    # A user with a membership: their leave cites it.
    leave = await _build(
        storage,
        {
            "type": "m.room.member",
            "state_key": CAROL,
            "sender": CAROL,
            "room_id": room.room_id,
            "content": {"membership": "leave"},
        },
        "10",
    )
    assert state[("m.room.member", CAROL)] in leave.auth_event_ids
    assert state[("m.room.join_rules", "")] not in leave.auth_event_ids


async def test_forks_are_joined_and_auth_events_come_from_their_resolved_state(
    storage: Storage,
) -> None:
    room = await _stored(storage)
    base = room.last
    old_power = room.state_after[base][("m.room.power_levels", "")]
    raised = room.power_levels(ALICE, {ALICE: 100, BOB: 50, CAROL: 50}, prev=[base])
    message = room.message(BOB, prev=[base])
    other = room.message(CAROL, prev=[base])
    await ingest_all(storage, [raised, message, other])
    assert await storage.get_forward_extremities(room.room_id) == {
        raised.event_id,
        message.event_id,
        other.event_id,
    }
    template = {"type": "m.room.message", "sender": CAROL, "room_id": room.room_id, "content": {}}

    joined = await _build(storage, template, "10")
    assert set(joined.prev_event_ids) == {raised.event_id, message.event_id, other.event_id}
    assert joined.depth == raised.depth + 1
    power = [i for i in joined.auth_event_ids if room.events[i].type == "m.room.power_levels"]
    assert power == [raised.event_id]

    # Prev events given: the state after exactly them, resolved when they differ.
    after_one = await _build(storage, template, "10", prev_event_ids=[message.event_id])
    assert after_one.prev_event_ids == (message.event_id,)
    assert old_power in after_one.auth_event_ids
    assert raised.event_id not in after_one.auth_event_ids
    after_two = await _build(
        storage, template, "10", prev_event_ids=[other.event_id, raised.event_id]
    )
    assert after_two.prev_event_ids == (other.event_id, raised.event_id)
    assert raised.event_id in after_two.auth_event_ids
    assert old_power not in after_two.auth_event_ids


async def test_at_most_twenty_prev_events_the_deepest(storage: Storage) -> None:
    room = await _stored(storage)
    base = room.last
    branches = []
    # 25 branches of 1 to 4 messages: extremities of several depths.
    for i in range(25):
        prev = base
        for _ in range(1 + i % 4):
            prev = room.message(BOB, f"branch {i}", prev=[prev]).event_id
        branches.append(prev)
    await ingest_all(storage, [e for e in room.events.values() if e.depth > 6])
    extremities = await storage.get_forward_extremities(room.room_id)
    assert extremities == set(branches)

    event = await _build(
        storage,
        {"type": "m.room.message", "sender": CAROL, "room_id": room.room_id, "content": {}},
        "10",
    )
    assert len(event.prev_event_ids) == MAX_PREV_EVENTS
    rows = await storage.get_events(extremities)
    expected = sorted(rows.values(), key=lambda r: (r.depth, r.stream_ordering), reverse=True)
    assert list(event.prev_event_ids) == [r.event_id for r in expected[:MAX_PREV_EVENTS]]
    left_out = set(extremities) - set(event.prev_event_ids)
    assert max(rows[e].depth for e in left_out) <= min(rows[e].depth for e in event.prev_event_ids)
    assert event.depth == max(r.depth for r in rows.values()) + 1
    # Writing it joins the twenty; the five left out remain for a later event.
    assert (await ingest(storage, event)).failure is None
    assert await storage.get_forward_extremities(room.room_id) == left_out | {event.event_id}


async def test_depth_is_capped(storage: Storage) -> None:
    room = await _stored(storage)
    state = room.state_after[room.last]
    fields = {
        "type": "m.room.message",
        "sender": BOB,
        "room_id": room.room_id,
        "content": {},
        "prev_events": [room.last],
        "depth": CANONICAL_INT_MAX,
    }
    draft = make_pdu("10", fields)
    deepest = make_pdu("10", fields | {"auth_events": sorted(_expected_auth(draft, state))})
    assert (await ingest(storage, deepest)).failure is None

    event = await _build(
        storage,
        {"type": "m.room.message", "sender": BOB, "room_id": room.room_id, "content": {}},
        "10",
    )
    assert event.prev_event_ids == (deepest.event_id,)
    assert event.depth == CANONICAL_INT_MAX


class _StateReadCounter(Storage):
    """Storage that counts reads of whole state maps."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.whole_reads = 0
        self.narrow_reads: list[Collection[StateKey]] = []

    async def get_state_ids(self, state_group: int) -> StateMap:
        self.whole_reads += 1
        return await super().get_state_ids(state_group)

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        self.whole_reads += 1
        return await super().get_current_state_ids(room_id)

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> StateMap:
        self.narrow_reads.append(keys)
        return await super().get_state_ids_for_keys(state_group, keys)


async def test_only_the_auth_keys_are_read(tmp_path: Path, nursery: trio.Nursery) -> None:
    counting = _StateReadCounter(tmp_path / "counting.db")
    await nursery.start(counting.run)
    room = await _stored(counting)
    counting.whole_reads = 0
    counting.narrow_reads.clear()
    event = await _build(
        counting,
        {"type": "m.room.message", "sender": BOB, "room_id": room.room_id, "content": {}},
        "10",
    )
    assert counting.whole_reads == 0
    assert [set(keys) for keys in counting.narrow_reads] == [auth_types_for_event(event)]


async def test_prepare_leaves_hashing_and_signing_to_the_sender(storage: Storage) -> None:
    # A remote user joining through us: their server signs what we prepare.
    room = await _stored(storage)
    prepared = await prepare_event(
        {
            "type": "m.room.member",
            "state_key": DAVE,
            "sender": DAVE,
            "room_id": room.room_id,
            "content": {"membership": "join"},
        },
        room_version="10",
        store=storage,
        clock=_clock(5),
    )
    assert "hashes" not in prepared
    assert "signatures" not in prepared
    assert prepared["prev_events"] == [room.last]
    assert prepared["depth"] == room.events[room.last].depth + 1
    assert prepared["origin_server_ts"] == 5
    state = room.state_after[room.last]
    assert set(prepared["auth_events"]) == {
        state[("m.room.create", "")],
        state[("m.room.power_levels", "")],
        state[("m.room.join_rules", "")],
    }
    # Only Dave's server may sign it.
    with pytest.raises(MatrixError, match=r"not a user of example\.org") as caught:
        await _build(
            storage,
            {k: prepared[k] for k in ("type", "state_key", "sender", "room_id", "content")},
            "10",
        )
    assert caught.value.errcode == "M_INVALID_PARAM"


def test_the_wall_clock_is_in_milliseconds() -> None:
    # Between 2020 and 2100.
    assert 1_577_836_800_000 < wall_clock_ms() < 4_102_444_800_000


async def test_bad_templates_are_refused(storage: Storage) -> None:
    room = await _stored(storage)
    message = {"type": "m.room.message", "sender": BOB, "room_id": room.room_id, "content": {}}

    for field in ("depth", "prev_events", "auth_events", "hashes", "signatures"):
        with pytest.raises(BadJsonError, match=f"must not set {field}"):
            await _build(storage, message | {field: 1}, "10")
    with pytest.raises(BadJsonError, match="needs a room_id"):
        await _build(storage, {k: v for k, v in message.items() if k != "room_id"}, "10")
    with pytest.raises(BadJsonError, match="content"):
        await _build(storage, message | {"content": "hi"}, "10")
    with pytest.raises(BadJsonError, match="no prev events"):
        await _build(
            storage,
            {"type": "m.room.create", "state_key": "", "sender": BOB, "content": {}},
            "12",
            prev_event_ids=[room.last],
        )
    with pytest.raises(BadJsonError, match="room_id"):
        await _build(
            storage,
            {
                "type": "m.room.create",
                "state_key": "",
                "sender": BOB,
                "content": {},
                "room_id": "!x:example.org",
            },
            "12",
        )

    with pytest.raises(MatrixError, match="no event here") as caught:
        await _build(storage, message | {"room_id": "!elsewhere:example.org"}, "10")
    assert caught.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError, match="not stored here") as caught:
        await _build(storage, message, "10", prev_event_ids=["$missing"])
    assert caught.value.errcode == "M_NOT_FOUND"

    # An outlier has no state to take auth events from.
    outlier = room.message(BOB)
    await ingest(storage, outlier, outlier=True)
    with pytest.raises(MatrixError, match="outlier") as caught:
        await _build(storage, message, "10", prev_event_ids=[outlier.event_id])
    assert caught.value.errcode == "M_NOT_FOUND"

    with pytest.raises(MatrixError, match=r"not a user of example\.org"):
        await _build(storage, message | {"sender": DAVE}, "10")
    # Nothing was written by any of these.
    assert await storage.get_forward_extremities(room.room_id) == set(outlier.prev_event_ids)
