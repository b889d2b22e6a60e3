"""State resolution of a large room split in two forks: ranvier beside Synapse.

A room of 10,000 joined members, built from real hashed and signed events,
splits into two forks from one point, and each fork changes power levels
against the other:

- fork A: the creator promotes Carol to moderator, bans 20 members and
  later raises the level needed for the topic; Carol bans 100 members and
  sets the topic; 60 new members join (10 leave again), 40 members leave;
- fork B, on a server whose clock runs later: the creator promotes Dave
  (and not Carol); Dave kicks Carol and bans 30 members; the moderator Bob
  renames the room; 100 new members join (20 leave again), 50 members
  change their display names (some of them the ones Carol banned in A),
  40 members leave.

Resolving the two states puts a few hundred conflicted events through the
power ordering, the mainline ordering and the iterative auth checks, with
the other 10,000 members as unconflicted state. The same events, parsed by
each, go to ranvier's ``resolve_state`` and to Synapse's
``resolve_events_with_store``; the bench fails unless both give the same
state, so it is an interoperability check as well as a timing.

Two timings per implementation and room version, best of several runs
with the garbage collector off (as ``timeit`` does):

- *indexed*: both are handed the auth difference (and, from v12, the
  conflicted state subgraph) precomputed, as a storage index gives them in
  a server, and every event in a dict (Synapse fetches them from a store
  that is that dict); ranvier also gets the states as storage's state
  groups give them, the first fork's state and each state's changes
  against it, and returns the resolved state as changes over that base;
  only the resolution is timed;
- *in memory*: both get every event in memory and compute the auth
  difference themselves.

``speedup_vs_synapse`` is Synapse's indexed time over ranvier's, the
smallest over the room versions run. Synapse is installed by ``nox -s
bench`` only; without it this bench fails and says so.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ranvier.protocol.auth_chain import (
    auth_chain_difference,
    auth_edges_of,
    conflicted_state_subgraph,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import RoomVersion, StateResAlgorithm, get_room_version
from ranvier.protocol.signing import SigningKey
from ranvier.protocol.state_res import ChangedState, resolve_state, resolve_state_delta

ROOM_VERSIONS = ("10", "11", "12")
MEMBERS = 10_000
REPEATS = 10

ALICE = "@alice:hs1.example"
BOB = "@bob:hs2.example"
CAROL = "@carol:hs1.example"
DAVE = "@dave:hs2.example"

_T0 = 1_700_000_000_000
_FORK_A_TS = _T0 + 3_600_000
_FORK_B_TS = _T0 + 7_200_000

StateKey = tuple[str, str]
_T = TypeVar("_T")

_CREATE = ("m.room.create", "")
_POWER_LEVELS = ("m.room.power_levels", "")
_JOIN_RULES = ("m.room.join_rules", "")


def _member(index: int) -> str:
    return f"@user{index:05d}:hs{3 + index % 6}.example"


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _power_levels(rv: RoomVersion, users: Mapping[str, int]) -> dict[str, Any]:
    if rv.privileged_creators:
        # The creator's power is unlimited and may not be listed.
        users = {user: level for user, level in users.items() if user != ALICE}
    return {
        "ban": 50,
        "events": {
            "m.room.history_visibility": 100,
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.topic": 50,
        },
        "events_default": 0,
        "invite": 0,
        "kick": 50,
        "redact": 50,
        "state_default": 50,
        "users": dict(users),
        "users_default": 0,
    }


@dataclass
class _Fork:
    """The head of one line of the room's history: its state, last event and clock."""

    ts: int
    state: dict[StateKey, str] = field(default_factory=dict)
    last: str | None = None
    depth: int = 0

    def branch(self, ts: int) -> _Fork:
        return _Fork(ts, dict(self.state), self.last, self.depth)


class _RoomBuilder:
    """Builds a room's events as their servers would: auth events chosen, hashed, signed.

    Every event is signed by its sender's server, all with one key: the
    signatures are real but state resolution does not check them, and one
    key keeps the build short.
    """

    def __init__(self, room_version: str, key: SigningKey) -> None:
        self.rv = get_room_version(room_version)
        self.key = key
        self.events: dict[str, Pdu] = {}
        self.room_id = "" if self.rv.room_id_from_create_event else "!bench:hs1.example"

    def _auth_events(
        self, fork: _Fork, kind: str, sender: str, content: Mapping[str, Any], state_key: str | None
    ) -> list[str]:
        # The spec's auth events selection, from the fork's current state.
        if kind == _CREATE[0]:
            return []
        keys: list[StateKey] = [] if self.rv.room_id_from_create_event else [_CREATE]
        keys += [_POWER_LEVELS, ("m.room.member", sender)]
        if kind == "m.room.member" and state_key is not None:
            keys.append(("m.room.member", state_key))
            if content.get("membership") in ("join", "invite", "knock"):
                keys.append(_JOIN_RULES)
        cited = dict.fromkeys(fork.state[key] for key in keys if key in fork.state)
        return list(cited)

    def send(
        self,
        fork: _Fork,
        kind: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = "",
    ) -> Pdu:
        fork.ts += 7
        fork.depth += 1
        event: dict[str, Any] = {
            "auth_events": self._auth_events(fork, kind, sender, content, state_key),
            "content": content,
            "depth": fork.depth,
            "origin_server_ts": fork.ts,
            "prev_events": [] if fork.last is None else [fork.last],
            "sender": sender,
            "type": kind,
        }
        if self.room_id:
            event["room_id"] = self.room_id
        if state_key is not None:
            event["state_key"] = state_key
        signed = hash_and_sign_event(event, self.rv, _server_of(sender), self.key)
        pdu = Pdu.from_json(signed, self.rv)
        if not self.room_id:
            self.room_id = pdu.room_id
        self.events[pdu.event_id] = pdu
        fork.last = pdu.event_id
        if state_key is not None:
            fork.state[(kind, state_key)] = pdu.event_id
        return pdu

    def membership(
        self, fork: _Fork, sender: str, target: str, membership: str, **extra: Any
    ) -> Pdu:
        return self.send(fork, "m.room.member", sender, {"membership": membership, **extra}, target)


@dataclass
class _Room:
    room_version: str
    room_id: str
    events: dict[str, Pdu]
    state_sets: list[dict[StateKey, str]]


def _build_room(room_version: str, key: SigningKey) -> _Room:
    builder = _RoomBuilder(room_version, key)
    rv = builder.rv
    common = _Fork(_T0)
    create_content: dict[str, Any] = {"room_version": room_version}
    if not rv.implicit_room_creator:
        create_content["creator"] = ALICE
    builder.send(common, "m.room.create", ALICE, create_content)
    builder.membership(common, ALICE, ALICE, "join", displayname="Alice")
    levels = {ALICE: 100, BOB: 50}
    builder.send(common, "m.room.power_levels", ALICE, _power_levels(rv, levels))
    builder.send(common, "m.room.join_rules", ALICE, {"join_rule": "public"})
    builder.send(common, "m.room.history_visibility", ALICE, {"history_visibility": "shared"})
    builder.send(common, "m.room.name", ALICE, {"name": "Benchmark plaza"})
    builder.send(common, "m.room.topic", ALICE, {"topic": "Everyone welcome"})
    for user in (BOB, CAROL, DAVE):
        builder.membership(common, user, user, "join")
    for index in range(MEMBERS):
        builder.membership(common, _member(index), _member(index), "join")

    fork_a = common.branch(_FORK_A_TS)
    promoted_a = levels | {CAROL: 50}
    builder.send(fork_a, "m.room.power_levels", ALICE, _power_levels(rv, promoted_a))
    for index in range(20):
        builder.membership(fork_a, ALICE, _member(index), "ban", reason="spam")
    for index in range(100, 200):
        builder.membership(fork_a, CAROL, _member(index), "ban", reason="raid")
    builder.send(fork_a, "m.room.topic", CAROL, {"topic": "Raid cleaned up"})
    for index in range(60):
        newcomer = f"@newa{index:03d}:hs1.example"
        builder.membership(fork_a, newcomer, newcomer, "join")
    for index in range(10):
        newcomer = f"@newa{index:03d}:hs1.example"
        builder.membership(fork_a, newcomer, newcomer, "leave")
    for index in range(200, 240):
        builder.membership(fork_a, _member(index), _member(index), "leave")
    stricter = _power_levels(rv, promoted_a)
    stricter["events"]["m.room.topic"] = 75
    builder.send(fork_a, "m.room.power_levels", ALICE, stricter)

    fork_b = common.branch(_FORK_B_TS)
    builder.send(fork_b, "m.room.power_levels", ALICE, _power_levels(rv, levels | {DAVE: 75}))
    builder.membership(fork_b, DAVE, CAROL, "leave", reason="abuse of ban powers")
    for index in range(300, 330):
        builder.membership(fork_b, DAVE, _member(index), "ban", reason="spam")
    builder.send(fork_b, "m.room.name", BOB, {"name": "Benchmark square"})
    for index in range(100):
        newcomer = f"@newb{index:03d}:hs2.example"
        builder.membership(fork_b, newcomer, newcomer, "join")
    for index in range(20):
        newcomer = f"@newb{index:03d}:hs2.example"
        builder.membership(fork_b, newcomer, newcomer, "leave")
    for index in range(150, 200):
        user = _member(index)
        builder.membership(fork_b, user, user, "join", displayname=f"Member {index}")
    for index in range(400, 440):
        builder.membership(fork_b, _member(index), _member(index), "leave")

    return _Room(room_version, builder.room_id, builder.events, [fork_a.state, fork_b.state])


def _conflicted_events(state_sets: Sequence[Mapping[StateKey, str]]) -> tuple[int, set[str]]:
    """The number of conflicted keys and the conflicted events, found plainly."""
    keys = set().union(*(state_set.keys() for state_set in state_sets))
    conflicted_keys = 0
    events: set[str] = set()
    for key in keys:
        values = {state_set.get(key) for state_set in state_sets}
        if len(values) > 1:
            conflicted_keys += 1
            events |= {value for value in values if value is not None}
    return conflicted_keys, events


def _best_of(prepare: Callable[[], Callable[[], _T]], repeats: int) -> tuple[float, _T]:
    """The shortest run of the call that ``prepare`` sets up afresh each time, and its result.

    Setting up is not timed. The collector is off while timing, as in
    ``timeit``: a collection then depends on what ran before, not on the
    code timed.
    """
    best = float("inf")
    result: _T | None = None
    for _ in range(repeats):
        call = prepare()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        best = min(best, elapsed)
    assert result is not None
    return best, result


def _check_same(room: _Room, results: Mapping[str, Mapping[StateKey, str]]) -> dict[StateKey, str]:
    (first_name, first), *others = results.items()
    reference = dict(first)
    for name, other in others:
        theirs = dict(other)
        if theirs == reference:
            continue
        differing = sorted(
            key for key in reference.keys() | theirs.keys() if reference.get(key) != theirs.get(key)
        )
        shown = ", ".join(
            f"{key}: {reference.get(key)} vs {theirs.get(key)}" for key in differing[:5]
        )
        raise RuntimeError(
            f"room version {room.room_version}: {first_name} and {name} resolve the state"
            f" differently at {len(differing)} keys: {shown}"
        )
    if any(reference == state_set for state_set in room.state_sets):
        raise RuntimeError(
            f"room version {room.room_version}: the resolved state is one of the forks'"
            " states; the forks' conflicts were meant to be resolved against each other"
        )
    return reference


def _measure(room: _Room, synapse: Any) -> dict[str, Any]:
    rv = get_room_version(room.room_version)
    edges = auth_edges_of(room.events)
    conflicted_keys, conflicted = _conflicted_events(room.state_sets)
    difference = auth_chain_difference([s.values() for s in room.state_sets], edges)
    subgraph: set[str] = set()
    if rv.state_res is StateResAlgorithm.V2_1:
        subgraph = conflicted_state_subgraph(conflicted, edges)

    def ranvier_indexed() -> Callable[[], Mapping[StateKey, str]]:
        base = room.state_sets[0]
        deltas: list[dict[StateKey, str | None]] = [
            {key: event_id for key, event_id in state_set.items() if base.get(key) != event_id}
            for state_set in room.state_sets
        ]
        for delta, state_set in zip(deltas, room.state_sets, strict=True):
            delta.update(dict.fromkeys(base.keys() - state_set.keys()))
        return lambda: ChangedState(
            base,
            resolve_state_delta(
                rv,
                base,
                deltas,
                room.events,
                auth_chain_difference=difference,
                conflicted_subgraph=subgraph,
            ),
        )

    def ranvier_in_memory() -> Callable[[], Mapping[StateKey, str]]:
        return lambda: resolve_state(rv, room.state_sets, room.events)

    def synapse_indexed() -> Callable[[], Mapping[StateKey, str]]:
        resolver: Callable[[], Mapping[StateKey, str]] = synapse.resolver(
            room.state_sets, auth_difference=difference, conflicted_subgraph=subgraph
        )
        return resolver

    def synapse_in_memory() -> Callable[[], Mapping[StateKey, str]]:
        resolver: Callable[[], Mapping[StateKey, str]] = synapse.resolver(room.state_sets)
        return resolver

    runs = {
        "ranvier": ranvier_indexed,
        "Synapse": synapse_indexed,
        "ranvier (in memory)": ranvier_in_memory,
        "Synapse (in memory)": synapse_in_memory,
    }
    seconds: dict[str, float] = {}
    results: dict[str, Mapping[StateKey, str]] = {}
    for name, prepare in runs.items():
        seconds[name], results[name] = _best_of(prepare, REPEATS)
    _check_same(room, results)

    full_conflicted = conflicted | difference | subgraph
    prefix = f"v{room.room_version}_"
    figures: dict[str, Any] = {
        "state_events": len(room.state_sets[0]),
        "conflicted_keys": conflicted_keys,
        "conflicted_events": len(conflicted),
        "auth_difference_events": len(difference),
    }
    if rv.state_res is StateResAlgorithm.V2_1:
        figures["conflicted_subgraph_events"] = len(subgraph)
    figures |= {
        "full_conflicted_events": len(full_conflicted),
        "ranvier_ms": round(seconds["ranvier"] * 1000, 2),
        "synapse_ms": round(seconds["Synapse"] * 1000, 2),
        "speedup_vs_synapse": round(seconds["Synapse"] / seconds["ranvier"], 2),
        "ranvier_in_memory_ms": round(seconds["ranvier (in memory)"] * 1000, 2),
        "synapse_in_memory_ms": round(seconds["Synapse (in memory)"] * 1000, 2),
        "in_memory_speedup_vs_synapse": round(
            seconds["Synapse (in memory)"] / seconds["ranvier (in memory)"], 2
        ),
    }
    return {prefix + name: value for name, value in figures.items()}


def _load_synapse() -> Any:
    try:
        from bench import _synapse_state_res
    except ImportError as exc:
        raise RuntimeError(
            "the state resolution benchmark compares ranvier with Synapse, and matrix-synapse"
            f" cannot be imported ({exc}); run it with `nox -s bench -- state_res`, which"
            " installs it, or `pip install matrix-synapse`"
        ) from exc
    return _synapse_state_res


def _events_json(events: Iterable[Pdu]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(event.event_id, event.json) for event in events]


def run() -> dict[str, Any]:
    adapter = _load_synapse()
    key = SigningKey(bytes(range(32)), "a_bnch")
    figures: dict[str, Any] = {"synapse_version": adapter.SYNAPSE_VERSION, "members": MEMBERS}
    per_version: dict[str, Any] = {}
    speedups: list[float] = []
    for version in ROOM_VERSIONS:
        if not adapter.supports_room_version(version):
            per_version[f"v{version}_skipped"] = (
                f"Synapse {adapter.SYNAPSE_VERSION} does not know room version {version}"
            )
            continue
        started = time.perf_counter()
        room = _build_room(version, key)
        synapse = adapter.SynapseRoom(version, room.room_id, _events_json(room.events.values()))
        per_version[f"v{version}_build_s"] = round(time.perf_counter() - started, 2)
        measured = _measure(room, synapse)
        speedups.append(measured[f"v{version}_speedup_vs_synapse"])
        per_version |= measured
    if not speedups:
        raise RuntimeError(f"Synapse {adapter.SYNAPSE_VERSION} knows none of {ROOM_VERSIONS}")
    figures["speedup_vs_synapse"] = min(speedups)
    return figures | per_version
