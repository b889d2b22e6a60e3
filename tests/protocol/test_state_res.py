"""State resolution: the spec's scenarios, v2.1's changes, properties and cost.

The forked-room scenarios are the classic ones every implementation checks
(a ban racing a power change, a join racing a join rule change, topics
racing demotions, mainline order), built here as small DAGs: each event's
state is the resolution of the states after its ``prev_events``, and its
``auth_events`` are selected from that state, as a server would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from _builders import ALICE, BOB, CAROL, DAVE, EVE
from hypothesis import given, settings
from hypothesis import strategies as st

from ranvier.protocol.auth import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    StateKey,
    auth_state_keys,
    auth_types_for_event,
    membership_auth_types,
)
from ranvier.protocol.auth_chain import (
    auth_chain_difference,
    auth_edges_of,
    conflicted_state_subgraph,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.state_res import (
    ChangedState,
    StateDelta,
    StateMap,
    is_power_event,
    resolve_state,
    resolve_state_delta,
    resolve_state_delta_steps,
    resolve_state_steps,
    reverse_topological_power_order,
    separate_state,
)
from ranvier.testing import RoomBuilder, make_pdu

ZARA = "@zara:example.org"
TOPIC = ("m.room.topic", "")
POWER = ("m.room.power_levels", "")
JOIN_RULES = ("m.room.join_rules", "")


def member(user: str) -> StateKey:
    return ("m.room.member", user)


# --- A forked room, node by node -------------------------------------------------


@dataclass
class Node:
    sender: str
    type: str
    state_key: str | None = None
    content: dict[str, Any] = field(default_factory=dict)


def _join(user: str) -> Node:
    return Node(user, "m.room.member", user, {"membership": "join"})


# Every scenario starts from this room: Alice creates it, is admin, makes it
# public; Bob, Carol and Zara join; START and END are messages that bracket
# the scenario's own events.
INITIAL = {
    "CREATE": Node(ALICE, "m.room.create", "", {"creator": ALICE, "room_version": "10"}),
    "IMA": _join(ALICE),
    "IPOWER": Node(ALICE, "m.room.power_levels", "", {"users": {ALICE: 100}}),
    "IJR": Node(ALICE, "m.room.join_rules", "", {"join_rule": "public"}),
    "IMB": _join(BOB),
    "IMC": _join(CAROL),
    "IMZ": _join(ZARA),
    "START": Node(ZARA, "m.room.message", None, {"body": "start"}),
    "END": Node(ZARA, "m.room.message", None, {"body": "end"}),
}
INITIAL_CHAIN = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


class ForkedRoom:
    """Events named by node, each built on the resolved state of its parents."""

    def __init__(
        self, nodes: Mapping[str, Node], chains: Sequence[Sequence[str]], version: str = "10"
    ) -> None:
        self.version = version
        self.nodes = {**INITIAL, **nodes}
        parents: dict[str, set[str]] = {name: set() for name in self.nodes}
        for chain in [INITIAL_CHAIN, *chains]:
            for child, parent in itertools.pairwise(chain):
                parents[child].add(parent)
        # Build parents first; among ready nodes, in name order.
        order = reverse_topological_power_order(
            {name: sorted(ps) for name, ps in parents.items()},
            dict.fromkeys(parents, (0, 0)),
        )
        self.events: dict[str, Pdu] = {}
        self.ids: dict[str, str] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        for ts, name in enumerate(order):
            before = self.resolve([self.state_after[p] for p in sorted(parents[name])])
            pdu = self._build(name, before, [self.ids[p] for p in sorted(parents[name])], ts)
            self.ids[name] = pdu.event_id
            self.events[pdu.event_id] = pdu
            after = dict(before)
            if pdu.state_key is not None:
                after[(pdu.type, pdu.state_key)] = pdu.event_id
            self.state_after[name] = after

    def resolve(self, state_sets: Sequence[Mapping[StateKey, str]]) -> dict[StateKey, str]:
        if not state_sets:
            return {}
        return resolve_state(self.version, state_sets, self.events)

    def _build(self, name: str, before: Mapping[StateKey, str], prevs: list[str], ts: int) -> Pdu:
        node = self.nodes[name]
        fields: dict[str, Any] = {
            "type": node.type,
            "sender": node.sender,
            "content": node.content,
            "room_id": "!room:example.org",
            "prev_events": prevs,
            "origin_server_ts": ts,
            "depth": ts + 1,
        }
        if node.state_key is not None:
            fields["state_key"] = node.state_key
        draft = make_pdu(self.version, fields)
        fields["auth_events"] = sorted(
            before[key] for key in auth_types_for_event(draft) if key in before
        )
        return make_pdu(self.version, fields)

    def changed_at_end(self) -> dict[StateKey, str]:
        start, end = self.state_after["START"], self.state_after["END"]
        return {key: value for key, value in end.items() if start.get(key) != value}

    def state_of(self, *names: str) -> dict[StateKey, str]:
        state: dict[StateKey, str] = {}
        for name in names:
            pdu = self.events[self.ids[name]]
            assert pdu.state_key is not None
            state[(pdu.type, pdu.state_key)] = pdu.event_id
        return state


def _topic(sender: str, topic: str) -> Node:
    return Node(sender, "m.room.topic", "", {"topic": topic})


def _levels(sender: str, users: dict[str, int], **extra: Any) -> Node:
    return Node(sender, "m.room.power_levels", "", {"users": users, **extra})


def test_ban_beats_a_concurrent_power_change_by_the_banned() -> None:
    # Bob (50) changes the power levels while Alice bans him.
    room = ForkedRoom(
        {
            "PA": _levels(ALICE, {ALICE: 100, BOB: 50}),
            "MA": _join(ALICE),
            "MB": Node(ALICE, "m.room.member", BOB, {"membership": "ban"}),
            "PB": _levels(BOB, {ALICE: 100, BOB: 50}),
        },
        [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]],
    )
    assert room.changed_at_end() == room.state_of("PA", "MA", "MB")


def test_join_rule_change_beats_a_concurrent_join() -> None:
    room = ForkedRoom(
        {
            "JR": Node(ALICE, "m.room.join_rules", "", {"join_rule": "private"}),
            "ME": _join(EVE),
        },
        [["END", "JR", "START"], ["END", "ME", "START"]],
    )
    assert room.changed_at_end() == room.state_of("JR")


def test_power_changes_on_one_branch_apply_in_order() -> None:
    # Alice promotes Bob, Bob promotes Carol, Carol demotes herself; the
    # other branch only has Alice's promotion of Bob.
    room = ForkedRoom(
        {
            "PA": _levels(ALICE, {ALICE: 100, BOB: 50}),
            "PB": _levels(BOB, {ALICE: 100, BOB: 50, CAROL: 50}),
            "PC": _levels(CAROL, {ALICE: 100, BOB: 50, CAROL: 0}),
        },
        [["END", "PC", "PB", "PA", "START"], ["END", "PA"]],
    )
    assert room.changed_at_end() == room.state_of("PC")


def _topic_scenario_nodes() -> dict[str, Node]:
    return {
        "T1": _topic(ALICE, "t1"),
        "PA1": _levels(ALICE, {ALICE: 100, BOB: 50}),
        "T2": _topic(ALICE, "t2"),
        "PA2": _levels(ALICE, {ALICE: 100, BOB: 0}),
        "PB": _levels(BOB, {ALICE: 100, BOB: 50}),
        "T3": _topic(BOB, "t3"),
    }


def test_demotion_beats_the_demoted_users_topic() -> None:
    room = ForkedRoom(
        _topic_scenario_nodes(),
        [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]],
    )
    assert room.changed_at_end() == room.state_of("PA2", "T2")


def test_banned_users_topic_is_undone() -> None:
    room = ForkedRoom(
        {
            "T1": _topic(ALICE, "t1"),
            "PA": _levels(ALICE, {ALICE: 100, BOB: 50}),
            "T2": _topic(BOB, "t2"),
            "MB": Node(ALICE, "m.room.member", BOB, {"membership": "ban"}),
        },
        [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]],
    )
    assert room.changed_at_end() == room.state_of("T1", "MB", "PA")


def test_topic_after_a_merge_wins() -> None:
    nodes = _topic_scenario_nodes() | {
        "MZ1": Node(ZARA, "m.room.message", None, {"body": "merge"}),
        "T4": _topic(ALICE, "t4"),
    }
    room = ForkedRoom(
        nodes,
        [
            ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
            ["END", "MZ1", "T3", "PB", "PA1"],
        ],
    )
    assert room.changed_at_end() == room.state_of("T4", "PA2")


def test_mainline_order_beats_timestamps() -> None:
    # T4 is sent after T3, but it cites older power levels (PB, off the
    # mainline of PA2), so T3, which cites PA2, is applied last.
    nodes = {
        "T1": _topic(ALICE, "t1"),
        "PA1": _levels(ALICE, {ALICE: 100, BOB: 50}),
        "T2": _topic(ALICE, "t2"),
        "PA2": _levels(ALICE, {ALICE: 100, BOB: 50}, events={"m.room.power_levels": 100}),
        "PB": _levels(BOB, {ALICE: 100, BOB: 50}),
        "T3": _topic(BOB, "t3"),
        "T4": _topic(ALICE, "t4"),
    }
    room = ForkedRoom(
        nodes,
        [["END", "T3", "PA2", "T2", "PA1", "T1", "START"], ["END", "T4", "PB", "PA1"]],
    )
    assert (
        room.events[room.ids["T4"]].origin_server_ts > room.events[room.ids["T3"]].origin_server_ts
    )
    assert room.changed_at_end() == room.state_of("T3", "PA2")


def test_concurrent_joins_both_count() -> None:
    room = ForkedRoom(
        {"JD": _join(DAVE), "JE": _join(EVE)},
        [["END", "JD", "START"], ["END", "JE", "START"]],
    )
    assert room.changed_at_end() == room.state_of("JD", "JE")


def test_ties_in_the_topological_order_go_to_the_smaller_event_id() -> None:
    graph = {"l": ["o"], "m": ["n", "o"], "n": ["o"], "o": [], "p": ["o"]}
    key = dict.fromkeys(graph, (0, 0))
    assert reverse_topological_power_order(graph, key) == ["o", "l", "n", "m", "p"]


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        reverse_topological_power_order({"a": ["b"], "b": ["a"]}, {"a": (0, 0), "b": (0, 0)})


# --- v2.1 (room version 12) --------------------------------------------------------


class V12Room:
    """Events of a v12 room with exactly the auth events a test gives them."""

    def __init__(self) -> None:
        self.builder = RoomBuilder("12")
        self.create = self.builder.create
        self.events = {self.create.event_id: self.create}

    def add(
        self, sender: str, event_type: str, state_key: str, content: dict[str, Any], auth: list[Pdu]
    ) -> Pdu:
        pdu = self.builder.send(
            event_type,
            sender,
            content,
            state_key=state_key,
            auth=[a.event_id for a in auth],
            apply=False,
        )
        self.events[pdu.event_id] = pdu
        return pdu

    def resolve(self, *state_sets: list[Pdu]) -> dict[StateKey, str]:
        return resolve_state("12", [_state(pdus) for pdus in state_sets], self.events)


def _state(pdus: list[Pdu]) -> dict[StateKey, str]:
    state: dict[StateKey, str] = {}
    for pdu in pdus:
        assert pdu.state_key is not None
        state[(pdu.type, pdu.state_key)] = pdu.event_id
    return state


def test_v21_replays_the_conflicted_subgraph() -> None:
    room = V12Room()
    join = {"membership": "join"}
    ma = room.add(ALICE, "m.room.member", ALICE, join, [])
    power1 = room.add(ALICE, "m.room.power_levels", "", {"users": {}}, [ma])
    jr = room.add(ALICE, "m.room.join_rules", "", {"join_rule": "public"}, [ma, power1])
    mb = room.add(BOB, "m.room.member", BOB, join, [power1, jr])
    mc = room.add(CAROL, "m.room.member", CAROL, join, [power1, jr])
    power2 = room.add(ALICE, "m.room.power_levels", "", {"users": {BOB: 50}}, [ma, power1])
    power3 = room.add(BOB, "m.room.power_levels", "", {"users": {BOB: 50, CAROL: 50}}, [mb, power2])
    me1 = room.add(EVE, "m.room.member", EVE, join, [power3, jr])
    # Eve renames herself citing the first power levels directly and the
    # newest only through her join: a state naming power1 is stale.
    me2 = room.add(EVE, "m.room.member", EVE, join | {"displayname": "E"}, [power1, jr, me1])
    mz = room.add(ZARA, "m.room.member", ZARA, join, [power3, jr])

    stale = [room.create, ma, mb, mc, me2, power1, jr]
    sensible = [room.create, ma, mb, mc, mz, power3, jr]
    resolved = room.resolve(stale, sensible)
    # power2 is on the path from power3 down to power1, so it is replayed
    # and power3 stays; Eve's rename, in the power1 epoch, sorts before her
    # join, in the power3 epoch.
    assert resolved == _state([room.create, ma, mb, mc, me1, mz, power3, jr])

    edges = auth_edges_of(room.events)
    conflicted = {me2.event_id, mz.event_id, power1.event_id, power3.event_id}
    subgraph = conflicted_state_subgraph(conflicted, edges)
    assert power2.event_id in subgraph
    difference = auth_chain_difference([_state(stale).values(), _state(sensible).values()], edges)
    assert room.create.event_id not in subgraph | difference


@pytest.mark.parametrize("level", [101, 9_493_420, 2**53 - 1])
def test_v12_a_creator_sorts_above_any_listed_level(level: int) -> None:
    """Alice (the creator) and Bob, however high his listed level, change the
    join rules at once: power events apply from the most powerful sender
    down, so the creator's goes first and Bob's is the one that stays."""
    room = V12Room()
    join = {"membership": "join"}
    ma = room.add(ALICE, "m.room.member", ALICE, join, [])
    power = room.add(ALICE, "m.room.power_levels", "", {"users": {BOB: level}}, [ma])
    public = room.add(ALICE, "m.room.join_rules", "", {"join_rule": "public"}, [ma, power])
    mb = room.add(BOB, "m.room.member", BOB, join, [power, public])
    invite = room.add(ALICE, "m.room.join_rules", "", {"join_rule": "invite"}, [ma, power])
    knock = room.add(BOB, "m.room.join_rules", "", {"join_rule": "knock"}, [mb, power])
    base = [room.create, ma, mb, power]
    resolved = room.resolve([*base, invite], [*base, knock])
    assert resolved[("m.room.join_rules", "")] == knock.event_id
    assert room.resolve([*base, knock], [*base, invite]) == resolved


def test_v21_starts_from_an_empty_state() -> None:
    # Alice set invite-only, then left. A stale state (from a server that
    # got it wrong) still names the public join rules. From the
    # unconflicted state, where Alice has left, neither join rules event
    # would pass; from the auth events, the newer one does.
    room = V12Room()
    ma1 = room.add(ALICE, "m.room.member", ALICE, {"membership": "join"}, [])
    power = room.add(ALICE, "m.room.power_levels", "", {"users": {BOB: 100}}, [ma1])
    jr1 = room.add(ALICE, "m.room.join_rules", "", {"join_rule": "public"}, [ma1, power])
    mb = room.add(BOB, "m.room.member", BOB, {"membership": "join"}, [power, jr1])
    jr2 = room.add(ALICE, "m.room.join_rules", "", {"join_rule": "invite"}, [ma1, power])
    ma2 = room.add(ALICE, "m.room.member", ALICE, {"membership": "leave"}, [power, ma1])

    correct = [room.create, ma2, mb, power, jr2]
    stale = [room.create, ma2, mb, power, jr1]
    assert room.resolve(correct, stale) == _state(correct)
    # The same events resolved by v2 (room version 11 rules, v11 events)
    # lose the join rules altogether: that is the reset v2.1 fixes.
    old = RoomBuilder("11")
    old_ma1 = old.member(ALICE, "join")
    old_power = old.power_levels(ALICE, content={"users": {ALICE: 100, BOB: 100}})
    old_jr1 = old.join_rules(ALICE, "public")
    old_mb = old.member(BOB, "join")
    old_jr2 = old.join_rules(ALICE, "invite")
    old_ma2 = old.member(ALICE, "leave")
    assert old_ma1.event_id in old_ma2.auth_event_ids
    common = [old.create, old_ma2, old_mb, old_power]
    v2 = resolve_state("11", [_state([*common, old_jr2]), _state([*common, old_jr1])], old.events)
    assert JOIN_RULES not in v2


# --- Inputs: rejected events, missing events ---------------------------------------------


def _topic_race_winner(rejected_power: bool) -> str:
    """Who sets the topic when Bob's topic cites a promotion that may have been rejected."""
    room = public_room_events()
    fork, fork_at = dict(room.state), room.last
    room.send("m.room.topic", ALICE, {"topic": "alice"}, state_key="")
    alice_branch = dict(room.state)
    room.last = fork_at
    # Bob's branch: power levels promoting him, then his topic citing them.
    # The promotion is in neither state: only Bob's topic cites it. Citing
    # newer power levels, his topic is applied after Alice's, if allowed.
    promote = room.power_levels(ALICE, content={"users": {ALICE: 100, BOB: 50}})
    room.send("m.room.topic", BOB, {"topic": "bob"}, state_key="")
    bob_branch = room.state | {POWER: fork[POWER]}
    rejected = {promote.event_id} if rejected_power else set()
    resolved = resolve_state("10", [alice_branch, bob_branch], room.events, rejected=rejected)
    return room.events[resolved[TOPIC]].sender


def test_rejected_events_never_authorise_others() -> None:
    assert _topic_race_winner(rejected_power=False) == BOB
    assert _topic_race_winner(rejected_power=True) == ALICE


def test_events_missing_from_the_lookup_are_left_out() -> None:
    room = public_room_events()
    a = room.send("m.room.topic", ALICE, {"topic": "a"}, state_key="", apply=False)
    b = room.send("m.room.topic", ALICE, {"topic": "b"}, state_key="", apply=False)
    sets = [room.state | {TOPIC: a.event_id}, room.state | {TOPIC: b.event_id}]
    assert resolve_state("10", sets, room.events)[TOPIC] == b.event_id
    without_b = {k: v for k, v in room.events.items() if k != b.event_id}
    assert resolve_state("10", sets, without_b)[TOPIC] == a.event_id


def test_an_auth_difference_event_at_a_key_no_set_has_is_kept() -> None:
    room = public_room_events()
    bob_join = room.state[member(BOB)]
    a = room.send("m.room.topic", ALICE, {"topic": "a"}, state_key="", apply=False)
    b = room.send("m.room.topic", BOB, {"topic": "b"}, state_key="", apply=False)
    without_bob = {key: value for key, value in room.state.items() if key != member(BOB)}
    sets = [without_bob | {TOPIC: a.event_id}, without_bob | {TOPIC: b.event_id}]
    # Bob's topic cites his join, so the join is in the auth difference and
    # is replayed; Bob may not set the topic.
    expected = without_bob | {TOPIC: a.event_id, member(BOB): bob_join}
    assert resolve_state("10", sets, room.events) == expected
    for base in (without_bob, {}):
        deltas = [_delta_against(base, state_set) for state_set in sets]
        assert _apply(base, resolve_state_delta("10", base, deltas, room.events)) == expected


def test_of_two_cited_events_for_one_key_the_last_counts() -> None:
    room = RoomBuilder("10")
    room.member(ALICE, "join")
    room.power_levels(ALICE, content={"users": {ALICE: 100, BOB: 50}})
    room.join_rules(ALICE, "public")
    join = room.member(BOB, "join")
    leave = room.member(BOB, "leave")
    state = {key: value for key, value in room.state.items() if key != member(BOB)}
    cited = [room.create.event_id, state[POWER]]

    def topic_cites(*memberships: Pdu) -> str | None:
        topic = room.send(
            "m.room.topic",
            BOB,
            {"topic": "t"},
            state_key="",
            auth=cited + [m.event_id for m in memberships],
            apply=False,
        )
        sets = [state | {TOPIC: topic.event_id}, state]
        # No auth difference: Bob's membership comes from the topic's auth events only.
        return resolve_state("10", sets, room.events, auth_chain_difference=set()).get(TOPIC)

    assert topic_cites(leave, join) is not None
    assert topic_cites(join, leave) is None


def public_room_events(version: str = "10") -> RoomBuilder:
    room = RoomBuilder(version)
    room.member(ALICE, "join")
    users = {} if version == "12" else {ALICE: 100}
    room.power_levels(ALICE, content={"users": users})
    room.join_rules(ALICE, "public")
    room.member(BOB, "join")
    return room


# --- Building blocks ------------------------------------------------------------------


def test_separate_state() -> None:
    a = {("t", "1"): "$a", ("t", "2"): "$b", ("t", "3"): "$c"}
    b = {("t", "1"): "$a", ("t", "2"): "$x"}
    unconflicted, conflicted = separate_state([a, b])
    assert unconflicted == {("t", "1"): "$a"}
    assert conflicted == {("t", "2"): {"$b", "$x"}, ("t", "3"): {"$c"}}
    assert separate_state([a]) == (a, {})
    assert separate_state([]) == ({}, {})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.tuples(st.sampled_from("abc"), st.sampled_from("xy")),
            st.sampled_from(["$1", "$2", "$3"]),
        ),
        max_size=4,
    )
)
def test_separate_state_matches_the_definition(state_sets: list[dict[StateKey, str]]) -> None:
    unconflicted, conflicted = separate_state(state_sets)
    keys = set().union(*state_sets)
    for key in keys:
        values = [s.get(key) for s in state_sets]
        if len(set(values)) == 1:
            assert unconflicted[key] == values[0]
            assert key not in conflicted
        else:
            assert conflicted[key] == {v for v in values if v is not None}
            assert key not in unconflicted
    assert unconflicted.keys() | conflicted.keys() == keys


def _fresh(text: str) -> str:
    """An equal string that is another object."""
    return "".join([text[:1], text[1:]])


@st.composite
def related_state_maps(draw: st.DrawFn) -> list[dict[StateKey, str]]:
    """State maps copied from one map and changed, as a server derives states.

    Large enough for several slices of the comparison; changes include
    keys deleted and added back (which moves them to the end), equal
    values and keys that are other objects, and maps rebuilt in another
    order.
    """
    size = draw(st.integers(0, 700))
    first = {("m.room.member", f"@u{i}:example.org"): f"$e{i}" for i in range(size)}
    maps = [first]
    for _ in range(draw(st.integers(1, 3))):
        derived = dict(draw(st.sampled_from(maps)))
        keys = list(derived)
        for _ in range(draw(st.integers(0, 6))):
            action = draw(st.sampled_from(["set", "same", "add", "delete", "move", "same_key"]))
            if action == "add" or not keys:
                derived[("m.room.member", f"@new{draw(st.integers(0, 9))}:example.org")] = "$n"
                continue
            key = keys[draw(st.integers(0, len(keys) - 1))]
            if key not in derived:
                continue
            if action == "set":
                derived[key] = draw(st.sampled_from(["$x", "$y", "$e0"]))
            elif action == "same":
                derived[key] = _fresh(derived[key])
            elif action == "delete":
                del derived[key]
            elif action == "move":
                derived[key] = derived.pop(key)
            else:
                event_id = derived.pop(key)
                derived[(_fresh(key[0]), _fresh(key[1]))] = event_id
        if draw(st.booleans()):
            derived = dict(sorted(derived.items(), reverse=True))
        maps.append(derived)
    return maps


@settings(max_examples=200, deadline=None)
@given(related_state_maps())
def test_separate_state_of_maps_copied_from_one_another(
    state_sets: list[dict[StateKey, str]],
) -> None:
    unconflicted, conflicted = separate_state(state_sets)
    keys = set().union(*state_sets)
    for key in keys:
        values = [s.get(key) for s in state_sets]
        if len(set(values)) == 1:
            assert unconflicted[key] == values[0]
            assert key not in conflicted
        else:
            assert conflicted[key] == {v for v in values if v is not None}
            assert key not in unconflicted
    assert unconflicted.keys() | conflicted.keys() == keys


def test_the_keys_the_auth_checks_read_are_the_auth_events_selection() -> None:
    room = public_room_events()
    invite = room.draft_member(
        ALICE,
        "invite",
        CAROL,
        content={
            "third_party_invite": {"signed": {"mxid": CAROL, "token": "abc", "signatures": {}}}
        },
    )
    v12 = public_room_events("12")
    authorised = [
        make_pdu(
            version,
            {
                "type": "m.room.member",
                "sender": BOB,
                "state_key": BOB,
                "room_id": "!room:example.org",
                "content": {"membership": "join", "join_authorised_via_users_server": authoriser},
            },
        )
        for version in ("10", "11")
        for authoriser in (ALICE, BOB, 7)
    ]
    events = [
        *room.events.values(),
        *v12.events.values(),
        invite,
        room.draft_member(BOB, "knock"),
        room.draft_member(ALICE, "ban", BOB),
        room.draft("m.room.message", BOB, {"body": "hi"}),
        *authorised,
    ]
    for event in events:
        keys = auth_state_keys(event)
        assert len(set(keys)) == len(keys), event
        assert set(keys) == auth_types_for_event(event)
        if event.type == "m.room.create":
            assert membership_auth_types(event) == []
            continue
        every_event = (
            {POWER} if event.room_version.room_id_from_create_event else {POWER, CREATE_KEY}
        )
        personal = membership_auth_types(event)
        assert len(set(personal)) == len(personal), event
        assert set(personal) | every_event == auth_types_for_event(event)
        assert not set(personal) & every_event
        assert all(key is JOIN_RULES_KEY for key in personal if key == JOIN_RULES)
    assert ("m.room.third_party_invite", "abc") in auth_state_keys(invite)
    assert auth_state_keys(room.create) == ()


def test_power_events() -> None:
    room = public_room_events()
    assert is_power_event(room.events[room.state[POWER]])
    assert is_power_event(room.events[room.state[JOIN_RULES]])
    assert not is_power_event(room.events[room.state[member(BOB)]])
    assert not is_power_event(room.create)
    kick = room.draft_member(ALICE, "leave", BOB)
    ban = room.draft_member(ALICE, "ban", BOB)
    leave = room.draft_member(BOB, "leave")
    assert is_power_event(kick)
    assert is_power_event(ban)
    assert not is_power_event(leave)
    assert not is_power_event(room.draft("m.room.topic", ALICE, {}, state_key=""))


# --- Properties ---------------------------------------------------------------------------

ACTORS = [ALICE, BOB, CAROL]


@st.composite
def forked_histories(draw: st.DrawFn) -> tuple[str, RoomBuilder, list[dict[StateKey, str]]]:
    """A room whose history forks into branches that each add a few events.

    Events are built on their branch's state, authorised or not: state
    resolution must cope with both.
    """
    version = draw(st.sampled_from(["10", "12"]))
    room = public_room_events(version)
    room.member(CAROL, "join")
    base = dict(room.state)
    branches = []
    for _ in range(draw(st.integers(2, 4))):
        room.last = base[member(CAROL)]
        for _ in range(draw(st.integers(0, 4))):
            sender = draw(st.sampled_from(ACTORS))
            kind = draw(st.sampled_from(["topic", "levels", "ban", "join_rules", "leave", "join"]))
            target = draw(st.sampled_from([*ACTORS, DAVE]))
            if kind == "topic":
                room.send("m.room.topic", sender, {"topic": f"by {sender}"}, state_key="")
            elif kind == "levels":
                level = draw(st.sampled_from([0, 50, 100]))
                users = {target: level} if version != "12" or target != ALICE else {}
                if version != "12":
                    users.setdefault(ALICE, 100)
                room.power_levels(sender, content={"users": users})
            elif kind == "join_rules":
                room.join_rules(sender, draw(st.sampled_from(["public", "invite"])))
            else:
                room.member(sender, kind, target if kind == "ban" else sender)
        branches.append(dict(room.state))
    return version, room, branches


@settings(max_examples=40, deadline=None)
@given(history=forked_histories(), data=st.data())
def test_resolution_does_not_depend_on_the_order_of_the_state_sets(
    history: tuple[str, RoomBuilder, list[dict[StateKey, str]]], data: st.DataObject
) -> None:
    version, room, branches = history
    expected = resolve_state(version, branches, room.events)
    shuffled = data.draw(st.permutations(branches))
    assert resolve_state(version, shuffled, room.events) == expected
    # A set given twice changes nothing either.
    assert resolve_state(version, [*shuffled, shuffled[0]], room.events) == expected


@settings(max_examples=40, deadline=None)
@given(history=forked_histories())
def test_resolving_one_state_set_returns_it(
    history: tuple[str, RoomBuilder, list[dict[StateKey, str]]],
) -> None:
    version, room, branches = history
    for branch in branches:
        assert resolve_state(version, [branch], room.events) == branch
        assert resolve_state(version, [branch, dict(branch)], room.events) == branch


@settings(max_examples=40, deadline=None)
@given(history=forked_histories())
def test_the_auth_difference_leaves_the_unconflicted_state_alone(
    history: tuple[str, RoomBuilder, list[dict[StateKey, str]]],
) -> None:
    version, room, branches = history
    difference = auth_chain_difference([b.values() for b in branches], auth_edges_of(room.events))
    unconflicted, conflicted = separate_state(branches)
    # An event every set holds is in every full auth chain.
    assert not difference & set(unconflicted.values())
    # The conflicted events are replayed whatever the difference says, so a
    # difference without them (as core computes it) resolves the same.
    conflicted_ids: set[str] = set().union(*conflicted.values())
    expected = resolve_state(version, branches, room.events)
    without = resolve_state(
        version, branches, room.events, auth_chain_difference=difference - conflicted_ids
    )
    assert without == expected


# --- States given as changes against a base ------------------------------------------------


def _delta_against(base: StateMap, state: StateMap) -> dict[StateKey, str | None]:
    """The changes that turn ``base`` into ``state``."""
    delta: dict[StateKey, str | None] = {
        key: event_id for key, event_id in state.items() if base.get(key) != event_id
    }
    delta.update(dict.fromkeys(key for key in base if key not in state))
    return delta


def _apply(base: StateMap, delta: StateDelta) -> dict[StateKey, str]:
    state = dict(base)
    for key, event_id in delta.items():
        if event_id is None:
            del state[key]
        else:
            state[key] = event_id
    return state


def _bases(branches: list[dict[StateKey, str]]) -> list[dict[StateKey, str]]:
    """States to give the branches as changes against: any state will do."""
    shared = {
        key: event_id
        for key, event_id in branches[0].items()
        if all(branch.get(key) == event_id for branch in branches)
    }
    # A key no branch has, naming an event nobody knows.
    stale = branches[0] | {("m.room.topic", "stale"): "$gone"}
    return [shared, *branches, {}, stale]


@settings(max_examples=60, deadline=None)
@given(history=forked_histories(), data=st.data())
def test_the_delta_form_resolves_as_whole_maps_do(
    history: tuple[str, RoomBuilder, list[dict[StateKey, str]]], data: st.DataObject
) -> None:
    version, room, branches = history
    expected = resolve_state(version, branches, room.events)
    base = data.draw(st.sampled_from(_bases(branches)))
    deltas = [_delta_against(base, branch) for branch in branches]
    indexed = data.draw(st.booleans())
    if indexed:
        edges = auth_edges_of(room.events)
        difference = auth_chain_difference([b.values() for b in branches], edges)
        _, conflicted = separate_state(branches)
        subgraph = conflicted_state_subgraph(set().union(*conflicted.values()), edges)
        delta = resolve_state_delta(
            version,
            base,
            deltas,
            room.events,
            auth_chain_difference=difference,
            conflicted_subgraph=subgraph,
        )
    else:
        delta = resolve_state_delta(version, base, deltas, room.events)
    assert _apply(base, delta) == expected
    # Only real changes: no entry the base already has, no removal of a key it lacks.
    assert all(base.get(key) != event_id for key, event_id in delta.items())
    view = ChangedState(base, delta)
    assert dict(view) == expected
    assert len(view) == len(expected)
    assert all(view.get(key) == expected.get(key) for key in base.keys() | delta.keys())


def test_a_changed_state_reads_through_to_its_base() -> None:
    base = {TOPIC: "$t", POWER: "$p", member(BOB): "$b"}
    view = ChangedState(
        base, {TOPIC: "$t2", member(BOB): None, member(CAROL): "$c", JOIN_RULES: None}
    )
    assert view[TOPIC] == "$t2"
    assert view[POWER] == "$p"
    assert view[member(CAROL)] == "$c"
    with pytest.raises(KeyError):
        view[member(BOB)]
    assert JOIN_RULES not in view
    assert sorted(view) == sorted([TOPIC, POWER, member(CAROL)])
    assert len(view) == 3
    assert view == {TOPIC: "$t2", POWER: "$p", member(CAROL): "$c"}
    assert base == {TOPIC: "$t", POWER: "$p", member(BOB): "$b"}


def test_the_delta_form_with_no_or_one_state_set() -> None:
    room = public_room_events()
    base = dict(room.state)
    assert resolve_state_delta("10", base, [], room.events) == dict.fromkeys(base)
    topic = room.send("m.room.topic", ALICE, {"topic": "t"}, state_key="")
    only = {TOPIC: topic.event_id, POWER: base[POWER], member(BOB): None}
    assert resolve_state_delta("10", base, [only], room.events) == {
        TOPIC: topic.event_id,
        member(BOB): None,
    }
    assert resolve_state_delta("10", base, [{}, {}], room.events) == {}


def test_keys_every_set_changes_alike_are_unconflicted() -> None:
    room = public_room_events()
    room.member(CAROL, "join")
    base = dict(room.state)
    a = room.send("m.room.topic", ALICE, {"topic": "a"}, state_key="", apply=False)
    b = room.send("m.room.topic", BOB, {"topic": "b"}, state_key="", apply=False)
    name = room.send("m.room.name", ALICE, {"name": "n"}, state_key="", apply=False)
    # Both sets name the room alike and lack Carol alike; only the topic conflicts.
    alike = {("m.room.name", ""): name.event_id, member(CAROL): None}
    deltas = [alike | {TOPIC: a.event_id}, alike | {TOPIC: b.event_id}]
    delta = resolve_state_delta("10", base, deltas, room.events)
    assert delta == alike | {TOPIC: a.event_id}  # Bob may not set the topic
    full = [_apply(base, d) for d in deltas]
    assert _apply(base, delta) == resolve_state("10", full, room.events)


class _RecordingState(Mapping[StateKey, str]):
    """A base state that notes the keys resolution reads and refuses to be walked."""

    def __init__(self, state: Mapping[StateKey, str]) -> None:
        self.state = state
        self.read: set[StateKey] = set()

    def __getitem__(self, key: StateKey) -> str:
        self.read.add(key)
        return self.state[key]

    def __iter__(self) -> Iterator[StateKey]:
        raise AssertionError("resolution must not walk the base state")

    def __len__(self) -> int:
        raise AssertionError("resolution must not count the base state")


@pytest.mark.parametrize("version", ["10", "12"])
def test_the_delta_form_reads_the_base_only_where_it_must(version: str) -> None:
    room = public_room_events(version)
    room.member(CAROL, "join")
    members = {member(f"@m{i}:example.org"): f"$member{i}" for i in range(50_000)}
    base = _RecordingState(room.state | members)
    a = room.send("m.room.topic", ALICE, {"topic": "a"}, state_key="", apply=False)
    b = room.send("m.room.topic", BOB, {"topic": "b"}, state_key="", apply=False)
    ban = room.draft_member(ALICE, "ban", CAROL)
    room.events[ban.event_id] = ban
    deltas = [{TOPIC: a.event_id}, {TOPIC: b.event_id, member(CAROL): ban.event_id}]
    lookup = _RecordingEvents(room.events)
    delta = resolve_state_delta(version, base, deltas, lookup, auth_chain_difference=set())
    assert delta == {TOPIC: a.event_id, member(CAROL): ban.event_id}
    assert len(base.read) < 10, base.read
    assert not any(event_id.startswith("$member") for event_id in lookup.asked)


def test_the_delta_form_yields_while_it_works() -> None:
    room, sets = _many_conflicting_joins(200)
    base = sets[0]
    steps = resolve_state_delta_steps(
        "10", base, [{}, _delta_against(base, sets[1])], room.events, yield_every=10
    )
    yields = 0
    try:
        while True:
            next(steps)
            yields += 1
    except StopIteration as done:
        delta = done.value
    assert _apply(base, delta) == sets[1]
    assert yields >= 20


# --- Checkpoints and cost ------------------------------------------------------------------


def _many_conflicting_joins(count: int) -> tuple[RoomBuilder, list[dict[StateKey, str]]]:
    room = public_room_events()
    base, base_at = dict(room.state), room.last
    joined = dict(base)
    for i in range(count):
        user = f"@user{i}:example.org"
        room.last = base_at
        pdu = room.member(user, "join")
        joined[member(user)] = pdu.event_id
    return room, [base, joined]


def test_resolution_yields_while_it_works() -> None:
    room, sets = _many_conflicting_joins(200)
    steps = resolve_state_steps("10", sets, room.events, yield_every=10)
    yields = 0
    try:
        while True:
            next(steps)
            yields += 1
    except StopIteration as done:
        resolved = done.value
    assert resolved == resolve_state("10", sets, room.events) == sets[1]
    # 200 replayed joins and their sorting, in steps of 10.
    assert yields >= 20


class _RecordingEvents(Mapping[str, Pdu]):
    """The caller's event lookup, noting which events resolution asked for."""

    def __init__(self, events: Mapping[str, Pdu]) -> None:
        self.events = events
        self.asked: set[str] = set()

    def __getitem__(self, event_id: str) -> Pdu:
        self.asked.add(event_id)
        return self.events[event_id]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("resolution must not list every event")

    def __len__(self) -> int:
        raise AssertionError("resolution must not count every event")


@pytest.mark.parametrize("version", ["10", "12"])
def test_a_large_room_with_a_small_conflict_costs_little(version: str) -> None:
    room = public_room_events(version)
    room.member(CAROL, "join")
    base = dict(room.state)
    # 50,000 members the resolution must never look at: their events are
    # not even in the lookup.
    members = {member(f"@m{i}:example.org"): f"$member{i}" for i in range(50_000)}
    big = base | members
    a = room.send("m.room.topic", ALICE, {"topic": "a"}, state_key="", apply=False)
    b = room.send("m.room.topic", BOB, {"topic": "b"}, state_key="", apply=False)
    ban = room.draft_member(ALICE, "ban", CAROL)
    room.events[ban.event_id] = ban
    sets = [big | {TOPIC: a.event_id}, big | {TOPIC: b.event_id, member(CAROL): ban.event_id}]
    lookup = _RecordingEvents(room.events)
    resolved = resolve_state(version, sets, lookup, auth_chain_difference=set())
    assert resolved[TOPIC] == a.event_id  # Bob may not set the topic
    assert resolved[member(CAROL)] == ban.event_id
    assert len(resolved) == len(big) + 1
    assert not any(event_id.startswith("$member") for event_id in lookup.asked)
    assert len(lookup.asked) < 20


def test_create_event_counts_once_in_v12_lookups() -> None:
    room = public_room_events("12")
    a = room.send("m.room.topic", ALICE, {"topic": "a"}, state_key="", apply=False)
    b = room.send("m.room.topic", ALICE, {"topic": "b"}, state_key="", apply=False)
    sets = [room.state | {TOPIC: a.event_id}, room.state | {TOPIC: b.event_id}]
    assert CREATE_KEY in room.state
    without_create = {k: v for k, v in room.events.items() if k != room.create.event_id}
    # Without its create event no v12 event can be authorised: neither topic applies.
    assert TOPIC not in resolve_state("12", sets, without_create)
    assert resolve_state("12", sets, room.events)[TOPIC] == b.event_id


async def test_an_async_driver_lets_other_tasks_run_during_a_resolution() -> None:
    room, sets = _many_conflicting_joins(300)
    ticks = 0
    resolved: dict[StateKey, str] = {}

    async def resolve() -> None:
        nonlocal resolved
        steps = resolve_state_steps("10", sets, room.events, yield_every=20)
        try:
            while True:
                next(steps)
                await trio.lowlevel.checkpoint()
        except StopIteration as done:
            resolved = done.value
        nursery.cancel_scope.cancel()

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        nursery.start_soon(resolve)
    assert resolved == sets[1]
    assert ticks >= 10
