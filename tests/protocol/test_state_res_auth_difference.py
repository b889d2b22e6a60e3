"""The auth difference as deployed servers compute it, in the rooms where the
two readings of the spec resolve differently.

Read word for word, a state set's full auth chain leaves out the set's own
events, so an unconflicted event that one side's events cite and the
other's do not is in the auth difference and is replayed. Synapse counts
each set's events as part of its own chain, so an unconflicted event never
is. Each room here resolves one way under each reading; the expected states
are worked out by hand from the rules (the comments follow the steps) and
are what Synapse 1.163 resolves them to. Each test also resolves with the
word-for-word difference, passed in, to show that the room tells the two
apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from _builders import ALICE, BOB, CAROL

from ranvier.protocol.auth import StateKey
from ranvier.protocol.auth_chain import auth_chain_difference, auth_edges_of
from ranvier.protocol.events import Pdu
from ranvier.protocol.state_res import resolve_state, separate_state
from ranvier.testing import RoomBuilder

TOPIC = ("m.room.topic", "")
BOB_MEMBER = ("m.room.member", BOB)


@dataclass
class _Case:
    room: RoomBuilder
    state_sets: list[dict[StateKey, str]]
    #: The unconflicted events a word-for-word reading would replay.
    literal_extra: set[str]


def _ids(*events: Pdu) -> set[str]:
    return {event.event_id for event in events}


def renames_around_a_power_change() -> tuple[_Case, dict[str, Pdu]]:
    """v11: an unconflicted power levels event citing a conflicted membership.

    Bob (100) renames himself to "y" on one side and to "x" on the other,
    a moment later; there he then changes the power levels (P), citing his
    "x" membership. Where the two sides merge, P and "x" go through the
    power ordering and "y", applied after them, stays; Alice then sets the
    topic (T), citing P. The states after P and after T hold the same P.
    """
    room = RoomBuilder("11", ALICE)
    room.public_room(BOB, users={ALICE: 100, BOB: 100})
    fork = room.last
    y = room.member(BOB, "join", content={"displayname": "y"})
    x = room.member(BOB, "join", content={"displayname": "x"}, prev=[fork])
    p = room.power_levels(BOB, {ALICE: 100, BOB: 100, CAROL: 50})
    merged = resolve_state(
        "11", [room.state_after[p.event_id], room.state_after[y.event_id]], room.events
    )
    assert merged[BOB_MEMBER] == y.event_id
    t = room.topic(ALICE, "t", prev=[p.event_id, y.event_id], state=merged)
    case = _Case(room, [room.state_after[p.event_id], room.state_after[t.event_id]], _ids(p))
    return case, {"x": x, "y": y, "p": p, "t": t}


def test_an_unconflicted_power_event_is_not_replayed() -> None:
    case, named = renames_around_a_power_change()
    room, sets = case.room, case.state_sets
    x, y, p, t = named["x"], named["y"], named["p"], named["t"]
    unconflicted, conflicted = separate_state(sets)
    assert unconflicted[("m.room.power_levels", "")] == p.event_id
    assert conflicted == {BOB_MEMBER: _ids(x, y), TOPIC: _ids(t)}

    # P cites "x", so both full chains hold "x"; "y" and T are on one side.
    difference = auth_chain_difference([s.values() for s in sets], auth_edges_of(room.events))
    assert difference == _ids(y, t)

    # Nothing to order by power: by mainline, "x" and "y" both cite the
    # first power levels and "y" is older, so "y", then "x", then T (which
    # cites P) apply over the unconflicted state. "x" stays.
    resolved = resolve_state("11", sets, room.events)
    assert resolved[BOB_MEMBER] == x.event_id
    assert resolved[TOPIC] == t.event_id
    assert resolved == unconflicted | {BOB_MEMBER: x.event_id, TOPIC: t.event_id}

    # Word for word, T's side cites P and the other does not: P is
    # replayed, takes "x" into the power ordering ahead of "y", and "y" stays.
    literal = resolve_state(
        "11", sets, room.events, auth_chain_difference=difference | case.literal_extra
    )
    assert literal[BOB_MEMBER] == y.event_id


def a_topic_from_before_a_demotion() -> tuple[_Case, dict[str, Pdu]]:
    """v12: a conflicted topic citing older power levels than the unconflicted ones.

    Bob (50) sets the topic (Z), from a server whose clock runs ahead, and
    Alice then demotes him (U). After U one side has a message from Alice,
    the other Alice's topic (Z2), which cites U and Alice's membership.
    """
    room = RoomBuilder("12", ALICE)
    room.public_room(BOB, users={BOB: 50})
    z = room.topic(BOB, "bob", extra={"origin_server_ts": room.ts + 60_000})
    u = room.power_levels(ALICE, {BOB: 0})
    room.message(ALICE, "still here")
    left = dict(room.state)
    z2 = room.topic(ALICE, "alice", prev=[u.event_id])
    alice = room.state[("m.room.member", ALICE)]
    case = _Case(room, [left, dict(room.state)], _ids(u, room.events[alice]))
    return case, {"z": z, "u": u, "z2": z2}


def test_v21_replays_no_unconflicted_event() -> None:
    case, named = a_topic_from_before_a_demotion()
    room, sets = case.room, case.state_sets
    z, u, z2 = named["z"], named["u"], named["z2"]
    unconflicted, conflicted = separate_state(sets)
    assert unconflicted[("m.room.power_levels", "")] == u.event_id
    assert conflicted == {TOPIC: _ids(z, z2)}
    assert z.origin_server_ts > z2.origin_server_ts

    difference = auth_chain_difference([s.values() for s in sets], auth_edges_of(room.events))
    assert difference == _ids(z, z2)

    # From an empty state, with no power event to replay, there is no
    # power levels event to build a mainline from: the topics go in
    # timestamp order, each checked against its own auth events where the
    # state has nothing. Z2 (Alice, the creator) passes; Z, stamped later,
    # passes against the power levels it cites, where Bob has 50, and stays.
    resolved = resolve_state("12", sets, room.events)
    assert resolved == unconflicted | {TOPIC: z.event_id}

    # Word for word, Z2's side cites U and Alice's membership: U is
    # replayed, the mainline runs from U, Z (citing the older power
    # levels) comes first and fails against U, and Z2 stays.
    literal = resolve_state(
        "12", sets, room.events, auth_chain_difference=difference | case.literal_extra
    )
    assert literal[TOPIC] == z2.event_id


def a_topic_a_merge_took_out() -> tuple[_Case, dict[str, Pdu]]:
    """v12, with every clock right: a topic that a merge rejected, met again.

    Bob (50) sets the topic (Z) and Alice then demotes him (U). Where that
    side merges with a side that saw neither, U is replayed first and Z,
    citing the older power levels, fails against it: the merged state has
    U and no topic. Carol then joins (C), citing U. Meanwhile Alice, on the
    first side, sends a message: its state still holds Z and U.
    """
    room = RoomBuilder("12", ALICE)
    room.public_room(BOB, users={BOB: 50})
    fork = room.last
    z = room.topic(BOB, "bob")
    u = room.power_levels(ALICE, {BOB: 0})
    merged = resolve_state(
        "12", [room.state_after[u.event_id], room.state_after[fork]], room.events
    )
    assert TOPIC not in merged
    room.message(ALICE, "merge", prev=[u.event_id, fork], state=merged)
    c = room.member(CAROL, "join")
    room.message(ALICE, "still on the first side", prev=[u.event_id])
    bob = room.state[BOB_MEMBER]
    case = _Case(room, [dict(room.state), room.state_after[c.event_id]], _ids(u, room.events[bob]))
    return case, {"z": z, "u": u, "c": c}


def test_v21_does_not_replay_power_levels_every_set_holds() -> None:
    case, named = a_topic_a_merge_took_out()
    room, sets = case.room, case.state_sets
    z, u, c = named["z"], named["u"], named["c"]
    unconflicted, conflicted = separate_state(sets)
    assert unconflicted[("m.room.power_levels", "")] == u.event_id
    assert conflicted == {TOPIC: _ids(z), ("m.room.member", CAROL): _ids(c)}
    assert z.origin_server_ts < c.origin_server_ts

    difference = auth_chain_difference([s.values() for s in sets], auth_edges_of(room.events))
    assert difference == _ids(z, c)

    # No power event to replay and no path between Z and C: from an empty
    # state, with no mainline, Z then C in timestamp order, each checked
    # against its own auth events. Both pass, and the topic is back.
    resolved = resolve_state("12", sets, room.events)
    assert resolved == unconflicted | {TOPIC: z.event_id, ("m.room.member", CAROL): c.event_id}

    # Word for word, C's side cites U and Z's side cites Bob's join: both
    # are replayed, U first, and Z fails against it as in the merge.
    literal = resolve_state(
        "12", sets, room.events, auth_chain_difference=difference | case.literal_extra
    )
    assert TOPIC not in literal
    assert literal[("m.room.member", CAROL)] == c.event_id
