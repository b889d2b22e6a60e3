"""Auth chains, the auth difference and the conflicted subgraph, checked
against the spec's definitions computed the slow way on random DAGs."""

from __future__ import annotations

from _builders import ALICE, BOB
from hypothesis import given, settings
from hypothesis import strategies as st

from ranvier.protocol.auth_chain import (
    auth_chain,
    auth_chain_difference,
    auth_edges_of,
    conflicted_state_subgraph,
)
from ranvier.testing import RoomBuilder

Graph = dict[str, list[str]]


@st.composite
def dags(draw: st.DrawFn) -> Graph:
    """Events 0..n-1, each citing some earlier ones."""
    size = draw(st.integers(1, 14))
    graph: Graph = {}
    for i in range(size):
        earlier = [str(j) for j in range(i)]
        graph[str(i)] = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
    return graph


def _reachable(graph: Graph, start: str) -> set[str]:
    """Everything reachable from ``start`` by one or more edges (its auth chain)."""
    seen: set[str] = set()
    frontier = list(graph[start])
    while frontier:
        node = frontier.pop()
        if node not in seen:
            seen.add(node)
            frontier.extend(graph[node])
    return seen


@settings(max_examples=150, deadline=None)
@given(graph=dags(), data=st.data())
def test_auth_chain_difference_matches_the_definition(graph: Graph, data: st.DataObject) -> None:
    nodes = sorted(graph)
    state_sets = data.draw(st.lists(st.lists(st.sampled_from(nodes)), min_size=1, max_size=4))
    # Each set's full chain: its events and everything they reach.
    chains = [set(s).union(*(_reachable(graph, e) for e in s)) for s in state_sets]
    expected: set[str] = set().union(*chains) - chains[0].intersection(*chains[1:])
    assert auth_chain_difference(state_sets, graph.__getitem__) == expected


@settings(max_examples=150, deadline=None)
@given(graph=dags(), data=st.data())
def test_conflicted_subgraph_matches_the_definition(graph: Graph, data: st.DataObject) -> None:
    nodes = sorted(graph)
    conflicted = set(data.draw(st.lists(st.sampled_from(nodes))))
    # x is on a path from one conflicted event to another when some
    # conflicted event reaches x (or is x) and x reaches some conflicted
    # event (or is one), the whole path having at least one edge.
    expected = set()
    for x in nodes:
        below_x = _reachable(graph, x)
        from_conflicted = any(x in _reachable(graph, c) for c in conflicted)
        to_conflicted = bool(below_x & conflicted)
        on_path = from_conflicted and to_conflicted
        endpoint = x in conflicted and (from_conflicted or to_conflicted)
        if on_path or endpoint:
            expected.add(x)
    assert conflicted_state_subgraph(conflicted, graph.__getitem__) == expected


def test_auth_chain_leaves_out_its_own_events_unless_cited() -> None:
    graph: Graph = {"A": [], "B": ["A"], "C": ["B"]}
    assert auth_chain(["C"], graph.__getitem__) == {"A", "B"}
    assert auth_chain(["C", "B"], graph.__getitem__) == {"A", "B"}
    assert auth_chain(["C"], graph.__getitem__, stop_at={"B"}) == set()


def test_a_shared_event_cited_on_one_side_only_is_not_in_the_difference() -> None:
    # Both sets hold B; only the first also holds C, which cites B. Each
    # set's own events are in its full chain, so B is in both.
    graph: Graph = {"A": [], "B": ["A"], "C": ["B"]}
    assert auth_chain_difference([["B", "C"], ["B"]], graph.__getitem__) == {"C"}
    # Events only one side reaches are, whether or not a set holds them.
    graph = {"A": [], "B": ["A"], "B2": ["B"], "C": ["B2"], "D": ["A"]}
    assert auth_chain_difference([["C", "D"], ["D"]], graph.__getitem__) == {"B", "B2", "C"}
    # A set's event cited by a shared event is in every full chain.
    graph = {"A": [], "X": ["A"], "Y": ["A"], "P": ["X"]}
    assert auth_chain_difference([["X", "P"], ["Y", "P"]], graph.__getitem__) == {"Y"}


def test_lone_conflicted_events_are_not_a_subgraph() -> None:
    graph: Graph = {"A": [], "B": ["A"], "C": ["A"]}
    assert conflicted_state_subgraph({"B", "C"}, graph.__getitem__) == set()
    assert conflicted_state_subgraph({"B", "A"}, graph.__getitem__) == {"A", "B"}


def test_edges_of_pdus_and_unknown_events() -> None:
    room = RoomBuilder("10")
    join = room.member(ALICE, "join")
    edges = auth_edges_of(room.events)
    assert list(edges(join.event_id)) == [room.create.event_id]
    assert list(edges("$unknown")) == []
    bob = room.member(BOB, "join")
    assert auth_chain([bob.event_id], edges) == set(bob.auth_event_ids)
