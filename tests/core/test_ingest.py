"""Ingestion of remote events into real storage.

The remote server is a stand-in holding its copy of the room in memory and
answering the three reads ingestion makes; keys come from a dict. Both are
the parts of other servers a test cannot start; everything of ours is real.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import msgspec
import pytest
import trio
import trio.testing
from _races import finish_partial_state

import ranvier.core.ingest as ingest_module
from ranvier.core import compute_event_context
from ranvier.core.context import event_to_persist
from ranvier.core.event_signatures import (
    THREAD_THRESHOLD,
    OffloadedSignatures,
    OffloadUnavailable,
    SignatureOffload,
    SignedMessage,
)
from ranvier.core.ingest import (
    EventVerifier,
    FederationIngester,
    IngestResult,
    PduOutcome,
    RoomLocks,
    Verdict,
)
from ranvier.errors import (
    InvalidSignatureError,
    MatrixError,
    PartialStateConflictError,
    StorageUnavailableError,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import generate_signing_key
from ranvier.signature_process import SignatureProcess
from ranvier.storage import EventToPersist, Storage
from ranvier.testing import KnownKeys, RemoteRooms, RoomBuilder, ingest, ingest_all

OURS = "ours.test"
REMOTE = "remote.test"
THIRD = "third.test"
EVIL = "evil.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"
CAROL = f"@carol:{THIRD}"
MALLORY = f"@mallory:{EVIL}"


class World:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.keys = {server: generate_signing_key("k1") for server in (OURS, REMOTE, THIRD, EVIL)}
        self.room = RoomBuilder(creator=ALICE, keys=self.keys)
        self.room.public_room(BOB, CAROL)
        self.remote = RemoteRooms(self.room)
        self.ingester = self.make_ingester(storage)

    def make_ingester(self, persister: Any, **kw: Any) -> FederationIngester:
        return FederationIngester(
            store=self.storage,
            persister=persister,
            client=self.remote,
            verifier=EventVerifier(KnownKeys(self.keys)),
            **kw,
        )

    async def stored(self, *events: Pdu) -> set[str]:
        return set(await self.storage.get_events([event.event_id for event in events]))


@pytest.fixture
async def world(storage: Storage) -> World:
    world = World(storage)
    await ingest_all(storage, list(world.room.events.values()))
    return world


async def _receive(world: World, event: Pdu, origin: str = REMOTE) -> IngestResult:
    return await world.ingester.on_receive_pdu(origin, event)


# Signatures and hashes


async def test_a_good_event_passes_and_a_tampered_one_is_redacted(world: World) -> None:
    verifier = EventVerifier(KnownKeys(world.keys))
    message = world.room.message(BOB, "signed words")
    tampered = Pdu.from_json(
        message.json | {"content": {"body": "other words"}}, world.room.version
    )
    assert tampered.event_id == message.event_id  # the ID covers the redacted form only
    good, redacted = await verifier.verify([message, tampered])
    assert good is message
    assert isinstance(redacted, Pdu)
    assert redacted.event_id == message.event_id
    assert redacted.content == {}
    assert redacted.json == redact(message.json, world.room.version)


async def test_bad_signatures_are_told_apart(world: World) -> None:
    verifier = EventVerifier(KnownKeys(world.keys))
    forged = world.room.message(BOB, key=generate_signing_key("k1"))
    unknown_key = world.room.message(BOB, key=generate_signing_key("k2"))
    no_signature = Pdu.from_json(
        world.room.message(BOB).json | {"signatures": {OURS: {}}}, world.room.version
    )
    # An extra signature with a key nobody knows is skipped.
    extra = world.room.message(BOB)
    extra_json = dict(extra.json)
    extra_json["signatures"] = {REMOTE: dict(extra.signatures[REMOTE]) | {"ed25519:old": "A" * 86}}
    with_extra = Pdu.from_json(extra_json, world.room.version)
    results = await verifier.verify([forged, unknown_key, no_signature, with_extra])
    assert isinstance(results[0], InvalidSignatureError)
    assert "does not match" in results[0].message
    assert isinstance(results[1], InvalidSignatureError)
    assert "only with keys that cannot be trusted" in results[1].message
    assert "ed25519:k2" in results[1].message
    assert isinstance(results[2], InvalidSignatureError)
    assert f"no signature from {REMOTE}" in results[2].message
    assert results[3] is with_extra


@pytest.mark.parametrize("chunk_size", [1, 3, 50])
async def test_verdicts_come_a_chunk_at_a_time_as_verify_has_them(
    world: World, chunk_size: int
) -> None:
    keys = KnownKeys(world.keys)
    verifier = EventVerifier(keys, threads=2, chunk_size=chunk_size)
    events = [world.room.message(BOB, f"words {n}") for n in range(7)]
    events[2] = world.room.message(BOB, key=generate_signing_key("k1"))
    events[5] = Pdu.from_json(
        events[5].json | {"content": {"body": "other words"}}, world.room.version
    )
    verdicts = [Verdict() for _ in events]
    await verifier.verify_each(events, verdicts)
    given = [await verdict.get() for verdict in verdicts]
    expected = await verifier.verify(events)
    assert [type(v) for v in given] == [type(v) for v in expected]
    assert isinstance(given[2], InvalidSignatureError)
    assert given[5] == expected[5]
    assert isinstance(given[5], Pdu)
    assert given[5].content == {}  # kept redacted
    assert [v for n, v in enumerate(given) if n not in (2, 5)] == [
        e for n, e in enumerate(events) if n not in (2, 5)
    ]


@pytest.mark.parametrize(("chunk_size", "threads"), [(1, 2), (3, 2), (3, 1), (50, 2)])
async def test_a_feed_gives_each_event_its_verdict_as_verify_has_it(
    world: World, chunk_size: int, threads: int
) -> None:
    verifier = EventVerifier(KnownKeys(world.keys), threads=threads, chunk_size=chunk_size)
    events = [world.room.message(BOB, f"words {n}") for n in range(7)]
    events[2] = world.room.message(BOB, key=generate_signing_key("k1"))
    events[5] = Pdu.from_json(
        events[5].json | {"content": {"body": "other words"}}, world.room.version
    )
    async with verifier.feed() as feed:
        verdicts = [await feed.add(event) for event in events]
        await feed.finish()
        given = [await verdict.get() for verdict in verdicts]
    expected = await verifier.verify(events)
    assert [type(v) for v in given] == [type(v) for v in expected]
    assert isinstance(given[2], InvalidSignatureError)
    assert isinstance(given[5], Pdu)
    assert given[5].content == {}  # kept redacted
    assert [v for n, v in enumerate(given) if n not in (2, 5)] == [
        e for n, e in enumerate(events) if n not in (2, 5)
    ]


async def test_a_task_waiting_for_a_verdict_checks_queued_chunks_itself(world: World) -> None:
    verifier = EventVerifier(KnownKeys(world.keys), threads=1, chunk_size=2)
    events = [world.room.message(BOB, f"words {n}") for n in range(5)]
    events[3] = world.room.message(BOB, key=generate_signing_key("k1"))
    with trio.fail_after(30):
        # Every thread the verifier may use is taken: only the waiting task
        # itself can check the chunks.
        async with verifier.feed() as feed, verifier._limiter:
            verdicts = [await feed.add(event) for event in events]
            await feed.finish()
            given = [await verdict.get() for verdict in verdicts]
    assert given[:3] == events[:3]
    assert given[4] == events[4]
    assert isinstance(given[3], InvalidSignatureError)


async def test_a_feed_left_without_events_or_unfinished_ends(world: World) -> None:
    verifier = EventVerifier(KnownKeys(world.keys), threads=2, chunk_size=2)
    with trio.fail_after(30):
        async with verifier.feed() as feed:
            await feed.finish()
        # Left without finish(), with a chunk queued: its threads still end.
        async with verifier.feed() as feed:
            verdicts = [await feed.add(world.room.message(BOB, f"w {n}")) for n in range(2)]
        assert all(isinstance(v, Pdu) for v in [await verdict.get() for verdict in verdicts])
    async with verifier.feed() as feed:
        await feed.finish()
        await feed.add(world.room.message(BOB))
        with pytest.raises(RuntimeError, match="finished"):
            await feed.add(world.room.message(BOB))


async def test_a_verdict_waits_until_given(world: World) -> None:
    verdict = Verdict()
    message = world.room.message(BOB)
    got: list[Pdu | MatrixError] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            got.append(await verdict.get())

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        verdict.give(message)
    assert got == [message]


def test_a_verifier_needs_a_thread_and_a_chunk() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        EventVerifier(KnownKeys({}), threads=0)
    with pytest.raises(ValueError, match="at least one thread"):
        EventVerifier(KnownKeys({}), chunk_size=0)


async def test_a_restricted_join_needs_the_authorising_servers_signature(
    world: World,
) -> None:
    verifier = EventVerifier(KnownKeys(world.keys))
    dave = f"@dave:{REMOTE}"
    content = {"membership": "join", "join_authorised_via_users_server": ALICE}
    join = world.room.send("m.room.member", dave, content, state_key=dave)
    (refused,) = await verifier.verify([join])
    assert isinstance(refused, InvalidSignatureError)
    assert f"no signature from {OURS}" in refused.message
    # Signed by the authorising server as well, it passes.
    cosigned = hash_and_sign_event(join.json, world.room.version, OURS, world.keys[OURS])
    (accepted,) = await verifier.verify([Pdu.from_json(cosigned, world.room.version)])
    assert isinstance(accepted, Pdu)


async def test_nothing_of_a_badly_signed_event_is_written(world: World) -> None:
    forged = world.room.message(BOB, key=generate_signing_key("k1"))
    with pytest.raises(InvalidSignatureError):
        await _receive(world, forged)
    assert await world.stored(forged) == set()


# Pushed events


async def test_a_pushed_event_is_written_and_a_repeat_changes_nothing(world: World) -> None:
    message = world.room.message(BOB)
    result = await _receive(world, message)
    assert not result.already_known
    assert result.error is None
    assert await world.storage.get_forward_extremities(world.room.room_id) == {message.event_id}
    again = await _receive(world, message)
    assert again.already_known
    assert world.remote.calls == []


async def test_a_pdu_of_another_room_version_than_its_room_is_refused(world: World) -> None:
    message = world.room.message(BOB)
    as_v11 = Pdu.from_json(message.json, "11")
    with pytest.raises(MatrixError, match="room version 11"):
        await _receive(world, as_v11)
    assert await world.stored(message) == set()


async def test_servers_speak_for_a_room_only_from_inside_it(world: World) -> None:
    world.room.keys[EVIL] = world.keys[EVIL]
    before = world.room.last
    intruder = world.room.message(MALLORY, auth=[world.room.create.event_id], prev=[before])
    with pytest.raises(MatrixError, match=f"{EVIL} has no member") as refused:
        await _receive(world, intruder, origin=EVIL)
    assert refused.value.errcode == "M_FORBIDDEN"
    # A member's event relayed by a server with no member is refused too...
    relayed = world.room.message(CAROL, "relayed", prev=[before])
    with pytest.raises(MatrixError, match=f"{EVIL} has no member"):
        await _receive(world, relayed, origin=EVIL)
    assert await world.stored(intruder, relayed) == set()
    # ...and taken when a server with a member relays it.
    assert (await _receive(world, relayed, origin=REMOTE)).error is None


async def test_an_event_failing_auth_is_kept_rejected(world: World) -> None:
    grab = world.room.power_levels(BOB, {BOB: 100})
    result = await _receive(world, grab)
    assert result.rejected_reason is not None
    assert result.error is not None
    assert result.error.errcode == "M_FORBIDDEN"
    stored = await world.storage.get_event(grab.event_id)
    assert stored is not None
    assert stored.rejected_reason == result.rejected_reason
    # Pushed again, it is known, and still rejected.
    again = await _receive(world, grab)
    assert again.already_known
    assert again.rejected_reason == result.rejected_reason
    assert again.error is not None


async def test_auth_events_we_lack_are_fetched_before_the_event_is_checked(
    world: World, storage: Storage
) -> None:
    # The remote has events we never saw: Dave's join and power levels
    # giving him 50. Only his topic, which cites both, is pushed.
    dave = f"@dave:{REMOTE}"
    room = world.room
    join = room.member(dave, "join")
    power = room.power_levels(ALICE, {ALICE: 100, dave: 50})
    topic = room.topic(dave, "dave's topic")
    result = await _receive(world, topic)
    assert result.error is None
    assert sorted(world.remote.called("event")) == sorted([join.event_id, power.event_id])
    stored = await storage.get_events([join.event_id, power.event_id, topic.event_id])
    assert set(stored) == {join.event_id, power.event_id, topic.event_id}
    assert all(row.rejected_reason is None for row in stored.values())
    # Fetched as outliers, they joined the room's DAG when the gap was filled.
    assert all(not row.outlier for row in stored.values())
    current = await storage.get_current_state_ids(room.room_id)
    assert current[("m.room.topic", "")] == topic.event_id


async def test_an_outlier_citing_a_rejected_event_is_rejected(world: World) -> None:
    room = world.room
    eve = f"@eve:{REMOTE}"
    # Bob's power grab is not allowed; Eve's topic cites the grab as its
    # power levels. Neither is known here; the topic is pushed with a prev
    # event we have.
    grab = room.power_levels(BOB, {BOB: 100, eve: 100})
    room.member(eve, "join", prev=[grab.event_id])
    eve_join = room.events[room.last]
    auth = [room.create.event_id, grab.event_id, eve_join.event_id]
    topic = room.topic(eve, "taken over", auth=auth, prev=[eve_join.event_id])
    result = await _receive(world, topic)
    assert result.rejected_reason is not None
    grab_row = await world.storage.get_event(grab.event_id)
    assert grab_row is not None
    assert grab_row.rejected_reason is not None
    current = await world.storage.get_current_state_ids(room.room_id)
    assert current.get(("m.room.topic", "")) != topic.event_id


async def test_events_citing_an_outlier_resting_on_a_rejected_event_are_rejected(
    world: World,
) -> None:
    """A rejected power levels event (R), a member event fetched as an
    outlier that cites R (O), two messages citing O (X, Y) and a sentinel
    after them (S): O, X and Y are rejected, S is accepted."""
    room = world.room
    bob_join = room.state[("m.room.member", BOB)]
    grab = room.draft("m.room.power_levels", BOB, {"users": {}}, state_key="")
    assert (await _receive(world, grab)).rejected_reason is not None
    outlier = room.draft_member(
        BOB,
        "join",
        content={"test": 1},
        auth=[room.create.event_id, room.state[("m.room.join_rules", "")], grab.event_id, bob_join],
    )
    cited = [
        room.create.event_id,
        room.state[("m.room.join_rules", "")],
        room.state[("m.room.power_levels", "")],
        bob_join,
        outlier.event_id,
    ]
    sent = [room.message(BOB, f"sent {n}", auth=cited) for n in (1, 2)]
    sentinel = room.message(BOB, "sentinel")

    outcomes = await world.ingester.receive_pdus(REMOTE, [e.raw for e in (*sent, sentinel)])

    assert [outcome.event_id for outcome in outcomes] == [e.event_id for e in (*sent, sentinel)]
    # O is fetched once, for X; Y finds it here, rejected.
    assert world.remote.called("event") == [outlier.event_id]
    rows = await world.storage.get_events([e.event_id for e in (outlier, *sent, sentinel)])
    assert rows[outlier.event_id].rejected_reason is not None
    assert all(rows[e.event_id].rejected_reason is not None for e in sent)
    assert rows[sentinel.event_id].rejected_reason is None
    assert outcomes[2].error is None
    extremities = await world.storage.get_forward_extremities(room.room_id)
    assert sentinel.event_id in extremities
    assert not extremities & {e.event_id for e in (grab, outlier, *sent)}
    current = await world.storage.get_current_state_ids(room.room_id)
    assert current[("m.room.member", BOB)] == bob_join
    assert current[("m.room.power_levels", "")] != grab.event_id


async def test_an_event_following_an_event_of_another_room_is_refused(world: World) -> None:
    # Taken, such an event would carry the other room's state into its own.
    room1 = world.room
    room1.topic(ALICE, "room one")
    await ingest_all(world.storage, room1.order[-1:])
    room2 = RoomBuilder(creator=ALICE, keys=world.keys)
    room2.public_room(BOB)
    world.remote.add(room2)
    await ingest_all(world.storage, room2.order)
    state = await world.storage.get_current_state_ids(room2.room_id)
    good = room2.message(BOB, "good")
    crossed = room2.message(BOB, "crossed", prev=[good.event_id, room1.last], state=room2.state)
    across = room2.message(BOB, "across", prev=[room1.last], state=room2.state)
    outcomes = await world.ingester.receive_pdus(REMOTE, [good.raw, crossed.raw, across.raw])
    assert outcomes[0].error is None
    for outcome in outcomes[1:]:
        assert outcome.error is not None
        assert outcome.error.errcode == "M_BAD_JSON"
        assert "prev_events must be events of the same room" in outcome.error.message
    assert await world.stored(good, crossed, across) == {good.event_id}
    # Pulled (to fill a gap, or backfilled), it is refused too.
    (pulled,) = await world.ingester.on_pulled_events(REMOTE, [across])
    assert pulled.error is not None
    assert pulled.error.errcode == "M_BAD_JSON"
    assert await world.stored(crossed, across) == set()
    assert await world.storage.get_current_state_ids(room2.room_id) == state
    assert room1.last not in (await world.storage.get_forward_extremities(room2.room_id))


# Gaps


async def test_a_gap_is_filled_with_get_missing_events(world: World) -> None:
    missed = [world.room.message(BOB, f"missed {n}") for n in range(4)]
    latest = world.room.message(CAROL, "latest")
    result = await _receive(world, latest)
    assert result.error is None
    assert world.remote.called("get_missing_events") == [REMOTE]
    assert world.remote.called("state_ids") == []
    for event in missed:
        assert await world.storage.get_event_state_groups(event.event_id) is not None
    assert await world.storage.get_forward_extremities(world.room.room_id) == {latest.event_id}


async def test_a_fork_with_a_gap_resolves_our_state_with_the_remote_one(world: World) -> None:
    room = world.room
    fork_point = room.last
    dave = f"@dave:{REMOTE}"
    # Our side: Alice sets the topic. Their side, unseen here: Dave joins,
    # then a long run of messages.
    ours = room.topic(ALICE, "ours", prev=[fork_point])
    await ingest_all(world.storage, [ours])
    dave_join = room.member(dave, "join", prev=[fork_point])
    theirs = [room.message(BOB, f"m{n}") for n in range(14)]
    merge = room.message(BOB, "merge", prev=[ours.event_id, theirs[-1].event_id])
    result = await _receive(world, merge)
    assert result.error is None
    # Ten came with get_missing_events; the state at the rest of the gap
    # came with /state_ids, its events as outliers.
    assert world.remote.called("get_missing_events") == [REMOTE]
    assert world.remote.called("state_ids") == [theirs[3].event_id]
    for event in theirs[4:]:
        assert await world.storage.get_event_state_groups(event.event_id) is not None
    dave_row = await world.storage.get_event(dave_join.event_id)
    assert dave_row is not None
    assert dave_row.outlier
    assert await world.storage.get_forward_extremities(room.room_id) == {merge.event_id}
    # The state after the merge has both sides' changes.
    current = await world.storage.get_current_state_ids(room.room_id)
    assert current[("m.room.topic", "")] == ours.event_id
    assert current[("m.room.member", dave)] == dave_join.event_id


class WithholdingRemote(RemoteRooms):
    """A remote that names some events in its answers but will not give them."""

    def __init__(self, room: RoomBuilder, withheld: set[str]) -> None:
        super().__init__(room)
        self.withheld = withheld

    async def get_event(self, destination: str, event_id: str) -> bytes:
        if event_id in self.withheld:
            await trio.lowlevel.checkpoint()
            self.calls.append(("event", event_id))
            raise MatrixError(f"no event {event_id}", errcode="M_NOT_FOUND", http_status=502)
        return await super().get_event(destination, event_id)


async def test_a_gap_whose_state_comes_without_an_auth_chain_is_filled(world: World) -> None:
    # A /state_ids answer may leave auth_chain_ids empty: the state's auth
    # events are then found among those held here or fetched one by one.
    room = world.room
    answer_of = world.remote.get_state_ids

    async def without_chain(destination: str, room_id: str, event_id: str) -> Any:
        answer = await answer_of(destination, room_id, event_id)
        return msgspec.structs.replace(answer, auth_chain_ids=())

    world.remote.get_state_ids = without_chain  # type: ignore[method-assign]
    dave = f"@dave:{REMOTE}"
    dave_join = room.member(dave, "join")
    theirs = [room.message(BOB, f"m{n}") for n in range(12)]
    result = await _receive(world, theirs[-1])
    assert result.error is None
    assert not result.soft_failed
    assert world.remote.called("state_ids") != []
    for event in theirs[2:]:
        assert await world.storage.get_event_state_groups(event.event_id) is not None
    current = await world.storage.get_current_state_ids(room.room_id)
    assert current[("m.room.member", dave)] == dave_join.event_id


async def test_state_resting_on_an_event_that_cannot_be_fetched_is_not_taken(
    world: World,
) -> None:
    """Dave's member events A to E, each citing the one before, come as
    state at a gap; B cannot be fetched. C, D and E rest on it and are
    rejected, and the state here never holds any of them."""
    room = world.room
    fork_point = room.last
    dave = f"@dave:{REMOTE}"
    ours = room.topic(ALICE, "ours", prev=[fork_point])
    await ingest_all(world.storage, [ours])
    chain = [room.member(dave, "join", prev=[fork_point])]
    for n in range(4):
        chain.append(room.member(dave, "join", content={"displayname": f"dave {n}"}))
    for earlier, later in itertools.pairwise(chain):
        assert earlier.event_id in later.auth_event_ids
    theirs = [room.message(BOB, f"m{n}") for n in range(14)]
    merge = room.message(BOB, "merge", prev=[ours.event_id, theirs[-1].event_id])
    remote = WithholdingRemote(room, {chain[1].event_id})
    ingester = FederationIngester(
        store=world.storage,
        persister=world.storage,
        client=remote,
        verifier=EventVerifier(KnownKeys(world.keys)),
    )

    await ingester.on_receive_pdu(REMOTE, merge)

    assert remote.called("state_ids") != []
    assert chain[1].event_id in remote.called("event")
    rows = await world.storage.get_events([e.event_id for e in chain])
    assert chain[0].event_id in rows
    taken = [
        e.event_id
        for e in chain[1:]
        if e.event_id in rows and rows[e.event_id].rejected_reason is None
    ]
    assert taken == []
    merged = await world.storage.get_event(merge.event_id)
    assert merged is not None
    assert merged.rejected_reason is None
    # The origin named E as Dave's membership at the gap; rejected here, it
    # is left out, and nothing else stands in for it.
    current = await world.storage.get_current_state_ids(room.room_id)
    assert ("m.room.member", dave) not in current
    assert current[("m.room.topic", "")] == ours.event_id


async def test_a_gap_the_origin_cannot_fill_is_an_error_with_nothing_written(
    world: World,
) -> None:
    room = world.room
    lost = room.message(BOB, "lost")
    latest = room.message(BOB, "latest")
    del world.remote.rooms[room.room_id].events[lost.event_id]  # the remote forgot it

    with pytest.raises(MatrixError) as failed:
        await _receive(world, latest)
    assert failed.value.http_status == 502
    assert await world.stored(latest, lost) == set()


class FloatServingRemote(RemoteRooms):
    """A remote whose copy of the event with ``bad_val`` carries a float,
    which no room version from 6 on allows, however it is asked for it."""

    def _break(self, raw: bytes) -> bytes:
        return raw.replace(b'"bad_val":11', b'"bad_val":1.1')

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[bytes]:
        found = await super().get_missing_events(
            destination,
            room_id,
            earliest_events=earliest_events,
            latest_events=latest_events,
            limit=limit,
            min_depth=min_depth,
        )
        return [self._break(raw) for raw in found]

    async def get_event(self, destination: str, event_id: str) -> bytes:
        return self._break(await super().get_event(destination, event_id))


async def test_a_missing_event_with_a_float_is_dropped_and_the_gap_stays(
    world: World,
) -> None:
    room = world.room
    ours = room.last
    bad = room.send("m.room.message", BOB, {"body": "m1", "bad_val": 11})
    good = room.message(BOB, "m2")
    remote = FloatServingRemote(room)
    ingester = FederationIngester(
        store=world.storage,
        persister=world.storage,
        client=remote,
        verifier=EventVerifier(KnownKeys(world.keys)),
    )

    with pytest.raises(MatrixError):
        await ingester.on_receive_pdu(REMOTE, good)
    assert await world.stored(bad, good) == set()
    assert await world.storage.get_forward_extremities(room.room_id) == {ours}
    # The next event finds the gap again and asks for it again; the float
    # is dropped again, and the rest is placed on the state the origin gives
    # at the event after it, which is kept as an outlier only.
    third = room.message(BOB, "m3")
    result = await ingester.on_receive_pdu(REMOTE, third)
    assert result.error is None
    assert remote.called("get_missing_events") == [REMOTE, REMOTE]
    assert remote.called("state_ids")[-1] == good.event_id
    assert await world.stored(bad) == set()
    rows = await world.storage.get_events([good.event_id, third.event_id])
    assert rows[good.event_id].outlier
    assert not rows[third.event_id].outlier
    assert rows[third.event_id].rejected_reason is None


async def test_an_event_refused_for_a_gap_is_taken_once_the_gap_is_filled(
    world: World,
) -> None:
    """B, whose prev event A the origin withholds, is refused and nothing of
    it kept; once A arrives, B sent again is accepted after it."""
    room = world.room
    event_a = room.send("m.event.a", BOB, {"event": "A"})
    event_b = room.send("m.event.b", BOB, {"event": "B"})
    withheld = world.remote.rooms[room.room_id].events.pop(event_a.event_id)

    with pytest.raises(MatrixError):
        await _receive(world, event_b)
    assert await world.stored(event_a, event_b) == set()

    world.remote.rooms[room.room_id].events[event_a.event_id] = withheld
    assert (await _receive(world, event_a)).error is None
    again = await _receive(world, event_b)
    assert again.error is None
    assert not again.already_known
    rows = await world.storage.get_events([event_a.event_id, event_b.event_id])
    assert all(row.rejected_reason is None and not row.outlier for row in rows.values())
    assert rows[event_a.event_id].stream_ordering < rows[event_b.event_id].stream_ordering
    assert await world.storage.get_forward_extremities(room.room_id) == {event_b.event_id}


# Gaps in a room joined over federation


class HistoryHandingRemote(RemoteRooms):
    """A remote that notes the ``min_depth`` it is asked with and pays it no
    heed: not having our newest events, it walks back past our join into
    the room's history before it.
    """

    def __init__(self, *rooms: RoomBuilder) -> None:
        super().__init__(*rooms)
        self.min_depths: list[int] = []

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[bytes]:
        self.min_depths.append(min_depth)
        return await super().get_missing_events(
            destination,
            room_id,
            earliest_events=earliest_events,
            latest_events=latest_events,
            limit=limit,
        )


class JoinedRoom:
    """Bob's room, with six messages before Alice (ours) joined it through
    his server: here, its state at the join as outliers, the join, and
    Alice's first message, which has not reached Bob's server yet.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.room = RoomBuilder(creator=BOB, keys=world.keys)
        self.room.public_room(CAROL)
        self.old = [self.room.message(BOB if n % 2 else CAROL, f"before {n}") for n in range(6)]
        self.fork_point = self.old[2]
        #: Bob's topic, sent before the join beside the later messages.
        self.old_topic = self.room.topic(
            BOB, "set before the join", prev=[self.fork_point.event_id], apply=False
        )
        self.join = self.room.member(ALICE, "join")
        self.on_its_way = self.room.message(ALICE, "on its way", apply=False)
        # Bob's server has not received it.
        del self.room.events[self.on_its_way.event_id]
        self.remote = HistoryHandingRemote(self.room)
        self.ingester = FederationIngester(
            store=world.storage,
            persister=world.storage,
            client=self.remote,
            verifier=EventVerifier(KnownKeys(world.keys)),
        )

    async def write_ours(self) -> None:
        storage = self.world.storage
        state = self.room.state_before(self.join.event_id)
        at_join = sorted(
            (self.room.events[event_id] for event_id in state.values()),
            key=lambda event: event.depth,
        )
        for event in at_join:
            await ingest(storage, event, outlier=True)
        await ingest(storage, self.join, state_ids_before=state)
        await ingest(storage, self.on_its_way)

    async def in_dag(self, *events: Pdu) -> set[str]:
        """Which of ``events`` are in the room's DAG here (not outliers)."""
        stored = await self.world.storage.get_events([event.event_id for event in events])
        return {event_id for event_id, row in stored.items() if not row.outlier}


@pytest.fixture
async def joined(world: World) -> JoinedRoom:
    joined = JoinedRoom(world)
    await joined.write_ours()
    return joined


async def test_missing_events_from_before_our_join_are_neither_asked_for_nor_taken(
    world: World, joined: JoinedRoom
) -> None:
    room, storage = joined.room, world.storage
    assert await storage.get_min_depth(room.room_id) == joined.join.depth
    after = [room.message(BOB, f"after {n}") for n in range(2)]
    pushed = room.message(CAROL, "pushed")
    result = await joined.ingester.on_receive_pdu(REMOTE, pushed)
    assert result.error is None
    assert joined.remote.min_depths == [joined.join.depth]
    # The remote walked back past the join all the same; what it gave from
    # before it stayed out: no old message stored, no outlier of the state
    # at the join made part of the DAG.
    assert await world.stored(*joined.old) == set()
    state_at_join = [room.events[e] for e in room.state_before(joined.join.event_id).values()]
    assert await joined.in_dag(*state_at_join) == set()
    # The gap after the join is filled from what came back, no state fetched.
    assert world.remote.calls == []
    assert joined.remote.called("state_ids") == []
    assert await joined.in_dag(*after, pushed) == {e.event_id for e in [*after, pushed]}
    for event in after:
        assert await storage.get_event_state_groups(event.event_id) is not None
    assert await storage.get_forward_extremities(room.room_id) == {
        joined.on_its_way.event_id,
        pushed.event_id,
    }
    assert await storage.get_min_depth(room.room_id) == joined.join.depth


async def test_a_gap_reaching_back_before_our_join_is_filled_with_the_state_there(
    world: World, joined: JoinedRoom
) -> None:
    room, storage = joined.room, world.storage
    after = room.message(BOB, "after the join")
    # Bob merges his topic, sent before the join, into the room.
    merge = room.message(BOB, "merge", prev=[after.event_id, joined.old_topic.event_id])
    result = await joined.ingester.on_receive_pdu(REMOTE, merge)
    assert result.error is None
    assert joined.remote.min_depths == [joined.join.depth]
    # The topic came back below the join's depth and was not taken in; the
    # state at it was fetched instead, the topic itself as an outlier.
    assert joined.remote.called("state_ids") == [joined.old_topic.event_id]
    assert await world.stored(*joined.old) == set()
    assert await joined.in_dag(joined.old_topic) == set()
    assert await world.stored(joined.old_topic) == {joined.old_topic.event_id}
    assert await joined.in_dag(after, merge) == {after.event_id, merge.event_id}
    current = await storage.get_current_state_ids(room.room_id)
    assert current[("m.room.topic", "")] == joined.old_topic.event_id
    assert current[("m.room.member", ALICE)] == joined.join.event_id
    assert await storage.get_forward_extremities(room.room_id) == {
        joined.on_its_way.event_id,
        merge.event_id,
    }


async def test_a_room_with_no_dag_here_asks_for_no_missing_events(world: World) -> None:
    room = RoomBuilder(creator=BOB, keys=world.keys)
    room.public_room(CAROL)
    for event in room.order:
        await ingest(world.storage, event, outlier=True)
    assert await world.storage.get_min_depth(room.room_id) is None
    world.remote.add(room)
    room.message(BOB, "missed")
    pushed = room.message(BOB, "pushed")
    result = await _receive(world, pushed)
    assert result.error is None
    assert world.remote.called("get_missing_events") == []
    assert world.remote.called("state_ids") == [pushed.prev_event_ids[0]]
    assert await world.storage.get_event_state_groups(pushed.event_id) is not None


# Transactions' PDUs


async def test_receive_pdus_gives_one_outcome_per_pdu(world: World) -> None:
    room = world.room
    first = room.message(BOB, "one")
    second = room.message(BOB, "two")
    other = RoomBuilder(creator=BOB, keys=world.keys)
    stray = other.message(BOB)  # a room we are not in
    outcomes = await world.ingester.receive_pdus(
        REMOTE, [first.raw, b"[1, 2]", stray.raw, second.raw, b"{not json"]
    )
    assert [outcome.event_id for outcome in outcomes] == [
        first.event_id,
        None,
        stray.event_id,
        second.event_id,
        None,
    ]
    assert outcomes[0].error is None
    assert outcomes[3].error is None
    assert outcomes[2].error is not None
    assert outcomes[2].error.errcode == "M_NOT_FOUND"
    assert all(outcome.error is not None for outcome in (outcomes[1], outcomes[4]))
    # In order within the room: the second never looked like a gap.
    assert world.remote.calls == []


class _Unanswered:
    async def holds(self) -> list[bool]:
        await trio.lowlevel.checkpoint()
        raise OffloadUnavailable("it ended before answering")

    def when_answered(self, callback: Callable[[list[bool] | None], None]) -> None:
        callback(None)


class RefusingOffload:
    """An offload that cannot check anything, refusing each request when
    sent or when asked for its answer: threads must serve."""

    def __init__(self, at: Literal["send", "holds"]) -> None:
        self._at = at
        self.asked = 0

    async def send(self, messages: Sequence[SignedMessage]) -> OffloadedSignatures:
        await trio.lowlevel.checkpoint()
        self.asked += 1
        if self._at == "send":
            raise OffloadUnavailable("not running")
        return _Unanswered()


async def _big_transaction_with_a_forgery(
    world: World, offload: SignatureOffload
) -> tuple[list[Pdu], Pdu, list[PduOutcome]]:
    """A transaction of more than THREAD_THRESHOLD PDUs, one of them forged
    (and cited by no other), received through a verifier with ``offload``."""
    events = [world.room.message(BOB, f"words {n}") for n in range(THREAD_THRESHOLD + 4)]
    forged = world.room.message(
        BOB, "forged", key=generate_signing_key("k1"), prev=[events[9].event_id], apply=False
    )
    pdus = [event.raw for event in events]
    pdus.insert(10, forged.raw)
    ingester = FederationIngester(
        store=world.storage,
        persister=world.storage,
        client=world.remote,
        verifier=EventVerifier(KnownKeys(world.keys), offload=offload),
    )
    outcomes = await ingester.receive_pdus(REMOTE, pdus)
    return events, forged, outcomes


def _only_the_forgery_fails(events: list[Pdu], forged: Pdu, outcomes: list[PduOutcome]) -> None:
    assert [outcome.event_id for outcome in outcomes] == [
        *(event.event_id for event in events[:10]),
        forged.event_id,
        *(event.event_id for event in events[10:]),
    ]
    failed = outcomes.pop(10)
    assert isinstance(failed.error, InvalidSignatureError)
    assert "does not match" in failed.error.message
    assert [outcome.error for outcome in outcomes] == [None] * len(events)


async def test_a_big_transaction_is_checked_by_the_signature_process(world: World) -> None:
    process = SignatureProcess()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            events, forged, outcomes = await _big_transaction_with_a_forgery(world, process)
            nursery.cancel_scope.cancel()
    _only_the_forgery_fails(events, forged, outcomes)
    assert process.starts == 1
    assert await world.stored(forged, *events) == {event.event_id for event in events}


@pytest.mark.parametrize("at", ["send", "holds"])
async def test_threads_check_a_big_transaction_the_offload_cannot(
    world: World, at: Literal["send", "holds"]
) -> None:
    offload = RefusingOffload(at)
    events, forged, outcomes = await _big_transaction_with_a_forgery(world, offload)
    _only_the_forgery_fails(events, forged, outcomes)
    # Each chunk was offered to it first.
    assert offload.asked == 3
    assert await world.stored(forged, *events) == {event.event_id for event in events}


class _HeldAnswer:
    """An offload's answer, given when the test gives it."""

    def __init__(self) -> None:
        self._given = trio.Event()
        self._verdicts: list[bool] | None = None
        self._callbacks: list[Callable[[list[bool] | None], None]] = []

    def give(self, verdicts: list[bool] | None) -> None:
        self._verdicts = verdicts
        self._given.set()
        for callback in self._callbacks:
            callback(verdicts)

    async def holds(self) -> list[bool]:
        await self._given.wait()
        if self._verdicts is None:
            raise OffloadUnavailable("it ended before answering")
        return self._verdicts

    def when_answered(self, callback: Callable[[list[bool] | None], None]) -> None:
        self._callbacks.append(callback)


class HeldOffload:
    """An offload that answers each request only when the test says."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, _HeldAnswer]] = []

    async def send(self, messages: Sequence[SignedMessage]) -> OffloadedSignatures:
        await trio.lowlevel.checkpoint()
        answer = _HeldAnswer()
        self.requests.append((len(messages), answer))
        return answer


@asynccontextmanager
async def _held_feed(world: World) -> AsyncIterator[tuple[HeldOffload, list[Pdu], list[Verdict]]]:
    """A feed given THREAD_THRESHOLD + 4 of Bob's messages, in chunks its
    offload holds until the test answers them; the block runs in the feed's."""
    offload = HeldOffload()
    verifier = EventVerifier(KnownKeys(world.keys), offload=offload)
    events = [world.room.message(BOB, f"words {n}") for n in range(THREAD_THRESHOLD + 4)]
    with trio.fail_after(10):
        async with verifier.feed(len(events)) as feed:
            verdicts = [await feed.add(event) for event in events]
            await feed.finish()
            yield offload, events, verdicts


async def test_a_chunks_verdicts_are_given_as_the_offload_answers(world: World) -> None:
    async with _held_feed(world) as (offload, events, verdicts):
        assert [count for count, _ in offload.requests] == [8, 8, 4]
        first, second, third = (answer for _, answer in offload.requests)
        second.give([True] * 7 + [False])
        # Given as the answer is read, not by a task that must run first.
        with trio.testing.assert_no_checkpoints():
            given = [await verdict.get() for verdict in verdicts[8:16]]
        assert given[:7] == events[8:15]
        assert isinstance(given[7], InvalidSignatureError)
        first.give([True] * 8)
        third.give([True] * 4)
        assert [await verdict.get() for verdict in verdicts[:8]] == events[:8]
        assert [await verdict.get() for verdict in verdicts[16:]] == events[16:]


async def test_a_chunk_the_offload_cannot_answer_is_checked_in_a_thread(world: World) -> None:
    async with _held_feed(world) as (offload, events, verdicts):
        for _, answer in offload.requests:
            answer.give(None)
        assert [await verdict.get() for verdict in verdicts] == events


async def test_an_answer_after_the_feed_is_left_is_dropped_quietly(world: World) -> None:
    async with _held_feed(world) as (offload, _, _):
        pass
    # Nobody waits for these verdicts now; nothing may start for them.
    (_, unanswerable), (_, answered), _ = offload.requests
    unanswerable.give(None)
    answered.give([True] * 8)


async def test_a_verdict_that_cannot_be_judged_fails_its_event_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    judge = ingest_module._after_signatures
    async with _held_feed(world) as (offload, events, verdicts):

        def failing(event: Pdu, failure: MatrixError | None) -> Pdu | MatrixError:
            if event.event_id == events[3].event_id:
                raise RuntimeError("a bug")
            return judge(event, failure)

        monkeypatch.setattr(ingest_module, "_after_signatures", failing)
        for count, answer in offload.requests:
            # Whoever reads the answer goes on: nothing reaches it.
            answer.give([True] * count)
        given = [await verdict.get() for verdict in verdicts]
    failed = given.pop(3)
    assert isinstance(failed, MatrixError)
    assert failed.errcode == "M_UNKNOWN"
    assert given == events[:3] + events[4:]


async def test_storage_being_down_fails_the_whole_transaction(world: World) -> None:
    class Down:
        async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> Any:
            await trio.lowlevel.checkpoint()
            raise StorageUnavailableError("the storage actor is not running")

        async def store_room(self, room_id: str, room_version: str) -> None:
            raise StorageUnavailableError("the storage actor is not running")

        async def store_state_group(self, room_id: str, prev: int | None, delta: Any) -> int:
            raise StorageUnavailableError("the storage actor is not running")

    message = world.room.message(BOB)
    # Not a result for the PDU (the sender would drop it) but the
    # transaction's failure, as itself, so the sender sends it again.
    with pytest.raises(StorageUnavailableError):
        await world.make_ingester(Down()).receive_pdus(REMOTE, [message.raw])


async def test_an_event_failing_only_against_current_state_is_soft_failed(
    world: World,
) -> None:
    room = world.room
    before_ban = room.last
    ban = room.member(ALICE, "ban", BOB)
    await ingest_all(world.storage, [ban])
    # Bob's message forks from before his ban.
    late = room.message(BOB, "from before the ban", prev=[before_ban])
    result = await _receive(world, late)
    assert result.soft_failed
    assert result.error is None
    stored = await world.storage.get_event(late.event_id)
    assert stored is not None
    assert stored.soft_failed
    assert await world.storage.get_forward_extremities(room.room_id) == {ban.event_id}


async def test_events_after_a_soft_failed_one_are_taken_as_ever(world: World) -> None:
    # A second event resting on a soft-failed one is soft-failed too, not an
    # error; an event of a member citing it is taken and becomes the room's
    # sole extremity, and the ban stays in the state.
    room = world.room
    before_ban = room.last
    ban = room.member(ALICE, "ban", BOB)
    await ingest_all(world.storage, [ban])
    first = room.message(BOB, "one", prev=[before_ban])
    second = room.message(BOB, "two", prev=[first.event_id])
    outcomes = await world.ingester.receive_pdus(REMOTE, [first.raw, second.raw])
    for outcome in outcomes:
        assert outcome.error is None
        assert outcome.result is not None
        assert outcome.result.soft_failed
    assert await world.storage.get_forward_extremities(room.room_id) == {ban.event_id}
    merge = room.message(CAROL, "merge", prev=[ban.event_id, second.event_id])
    result = await _receive(world, merge, origin=THIRD)
    assert result.error is None
    assert not result.soft_failed
    assert result.rejected_reason is None
    assert await world.storage.get_forward_extremities(room.room_id) == {merge.event_id}
    assert world.remote.calls == []
    current = await world.storage.get_current_state_ids(room.room_id)
    assert current[("m.room.member", BOB)] == ban.event_id


async def test_rooms_of_a_transaction_are_handled_concurrently(
    world: World, storage: Storage
) -> None:
    slow_room = world.room
    fast_room = RoomBuilder(creator=ALICE, keys=world.keys)
    fast_room.public_room(BOB)
    await ingest_all(storage, list(fast_room.events.values()))
    slow_room.message(BOB, "missed")
    slow = slow_room.message(BOB, "after a gap")
    fast = fast_room.message(BOB, "no gap")
    fast_written = trio.Event()

    class Watching:
        """Storage, with a signal once the fast room's event is written."""

        async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> Any:
            written = await storage.persist_events(events, **kw)
            if any(event.event_id == fast.event_id for event in events):
                fast_written.set()
            return written

        async def store_room(self, room_id: str, room_version: str) -> None:
            await storage.store_room(room_id, room_version)

        async def store_state_group(self, room_id: str, prev: int | None, delta: Any) -> int:
            return await storage.store_state_group(room_id, prev, delta)

    world.remote.rooms[fast_room.room_id] = fast_room
    # The slow room's gap is answered only once the fast room's event is
    # written: handled one room after another, this would never finish.
    world.remote.hold_missing_events = fast_written
    ingester = world.make_ingester(Watching())
    with trio.fail_after(30):
        outcomes = await ingester.receive_pdus(REMOTE, [slow.raw, fast.raw])
    assert [outcome.error for outcome in outcomes] == [None, None]
    assert len(ingester.room_locks) == 0


async def test_a_cancelled_ingestion_leaves_the_room_free_and_can_run_again(
    world: World,
) -> None:
    missed = world.room.message(BOB, "missed")
    latest = world.room.message(BOB, "latest")
    world.remote.hold_missing_events = trio.Event()  # never set: the remote hangs
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive, world, latest)
            await world.remote.asked_for_missing.wait()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert len(world.ingester.room_locks) == 0
    assert await world.stored(missed, latest) == set()
    # Sent again, it goes through.
    world.remote.hold_missing_events = None
    result = await _receive(world, latest)
    assert result.error is None
    assert await world.stored(missed, latest) == {missed.event_id, latest.event_id}


async def test_room_locks_order_one_room_and_free_themselves() -> None:
    locks = RoomLocks()
    order: list[str] = []

    async def hold(room_id: str, name: str, wait: trio.Event | None = None) -> None:
        async with locks.hold(room_id):
            order.append(f"{name} in")
            if wait is not None:
                await wait.wait()
            order.append(f"{name} out")

    release = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "!a:x", "first", release)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "!a:x", "second")
        nursery.start_soon(hold, "!b:x", "other room")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first in", "other room in", "other room out"]
        assert len(locks) == 1
        release.set()
    assert order[3:] == ["first out", "second in", "second out"]
    assert len(locks) == 0


# Partial state


async def _partial_room(world: World) -> Pdu:
    """Mark the room partial, and write Bob's next message with partial state."""
    room, storage = world.room, world.storage
    await storage.store_partial_join(
        room.room_id, room.version, room.last, joined_via=REMOTE, servers_in_room=[REMOTE]
    )
    message = room.message(BOB, "written with partial state")
    context = await compute_event_context(
        message,
        storage,
        storage,
        state_ids_before=room.state_before(message.event_id),
        partial_state=True,
    )
    await storage.persist_events([event_to_persist(message, context)])
    assert await storage.get_partial_state_events(room.room_id) == [message.event_id]
    return message


class ClearsPartialStateFirst:
    """Storage, with the room's partial state finished just before the
    first write of ``event_id``: the race with the un-partial-state task,
    made to happen.
    """

    def __init__(self, storage: Storage, room_id: str, event_id: str) -> None:
        self.storage = storage
        self.room_id = room_id
        self.event_id = event_id
        self.writes: list[bool] = []

    async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> Any:
        mine = [event for event in events if event.event_id == self.event_id]
        if mine:
            assert mine[0].context is not None
            self.writes.append(mine[0].context.partial_state)
            if len(self.writes) == 1:
                await finish_partial_state(self.storage, self.room_id)
        return await self.storage.persist_events(events, **kw)

    async def store_room(self, room_id: str, room_version: str) -> None:
        await self.storage.store_room(room_id, room_version)

    async def store_state_group(self, room_id: str, prev: int | None, delta: Any) -> int:
        return await self.storage.store_state_group(room_id, prev, delta)


async def test_a_partial_state_conflict_recomputes_the_context_once(world: World) -> None:
    await _partial_room(world)
    event = world.room.message(BOB, "after the partial one")
    persister = ClearsPartialStateFirst(world.storage, world.room.room_id, event.event_id)
    ingester = world.make_ingester(persister)
    result = await ingester.on_receive_pdu(REMOTE, event)
    # Tried with partial state, refused, tried again with full state.
    assert persister.writes == [True, False]
    assert result.error is None
    assert result.context is not None
    assert not result.context.partial_state
    assert not await world.storage.is_partial_state_room(world.room.room_id)
    assert await world.storage.get_partial_state_events(world.room.room_id) == []
    assert await world.storage.get_forward_extremities(world.room.room_id) == {event.event_id}


async def test_a_second_conflict_is_an_error_for_that_event(world: World) -> None:
    event = world.room.message(BOB)

    class AlwaysConflicting(ClearsPartialStateFirst):
        """Storage whose room keeps losing its partial state under the write."""

        async def persist_events(self, events: Sequence[EventToPersist], **kw: Any) -> Any:
            if any(e.event_id == self.event_id for e in events):
                self.writes.append(True)
                raise PartialStateConflictError()
            return await self.storage.persist_events(events, **kw)

    persister = AlwaysConflicting(world.storage, world.room.room_id, event.event_id)
    with pytest.raises(MatrixError, match="changed under it twice"):
        await world.make_ingester(persister).on_receive_pdu(REMOTE, event)
    assert persister.writes == [True, True]
    assert await world.stored(event) == set()


async def test_pulled_events_are_retried_after_a_conflict_too(world: World) -> None:
    await _partial_room(world)
    pulled = world.room.message(BOB, "pulled")
    pushed = world.room.message(BOB, "pushed")
    persister = ClearsPartialStateFirst(world.storage, world.room.room_id, pulled.event_id)
    ingester = world.make_ingester(persister)
    result = await ingester.on_receive_pdu(REMOTE, pushed)
    assert result.error is None
    assert world.remote.called("get_missing_events") == [REMOTE]
    assert persister.writes == [True, False]
    assert await world.storage.get_event_state_groups(pulled.event_id) is not None


# Events that would start the room over


async def test_a_second_create_event_for_a_known_room_is_refused(world: World) -> None:
    room = world.room
    state_before = await world.storage.get_current_state_ids(room.room_id)
    extremities = await world.storage.get_forward_extremities(room.room_id)
    content = {"room_version": room.version, "creator": ALICE, "again": True}
    # Signed by the room's own server, so only this check stands in its way.
    second = room.send("m.room.create", ALICE, content, state_key="", prev=[], auth=[])
    assert second.event_id != room.create.event_id
    with pytest.raises(MatrixError, match=r"already has its m\.room\.create") as refused:
        await _receive(world, second, origin=OURS)
    assert refused.value.errcode == "M_FORBIDDEN"
    pulled = await world.ingester.on_pulled_events(OURS, [second])
    assert [outcome.error.errcode for outcome in pulled if outcome.error] == ["M_FORBIDDEN"]
    assert await world.stored(second) == set()
    assert await world.storage.get_current_state_ids(room.room_id) == state_before
    assert await world.storage.get_forward_extremities(room.room_id) == extremities
    # The room's own create event, sent again, is known and changes nothing.
    again = await _receive(world, room.create, origin=OURS)
    assert again.already_known


async def test_an_event_with_no_prev_events_is_refused(world: World) -> None:
    room = world.room
    orphan = room.message(BOB, "from nowhere", prev=[], auth=[room.create.event_id])
    with pytest.raises(MatrixError, match="no prev_events") as refused:
        await _receive(world, orphan)
    assert refused.value.errcode == "M_BAD_JSON"
    assert await world.stored(orphan) == set()
    assert world.remote.calls == []
