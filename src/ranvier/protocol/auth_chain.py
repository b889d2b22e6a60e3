"""Auth chains, the auth difference and the conflicted state subgraph.

State resolution needs two sets computed over the graph that ``auth_events``
links form: the *auth difference* of the state sets being resolved, and
(from v2.1) the *conflicted state subgraph*. Storage computes them from an
index over millions of events; the functions here compute them from the
graph itself, for callers that hold the events in memory and for tests.

The graph is given as a function from an event ID to the IDs that event
cites (:data:`AuthEdges`), so these work on bare IDs as well as on
:class:`~ranvier.protocol.events.Pdu` objects (:func:`auth_edges_of`). An
event the function does not know cites nothing.

The edges are the ``auth_events`` each event lists. From room version 12
events no longer cite the create event; it is not added back here, so the
create event is in no auth chain of such a room, which changes neither set.

The auth difference is read here as Synapse computes it, not word for
word. The spec says: "The auth difference is calculated by first
calculating the full auth chain for each state S_i, that is the union of
the auth chains for each event in S_i, and then taking every event that
doesn't appear in every auth chain", where an event's auth chain holds the
events it cites, recursively, and not the event itself. Synapse counts
each state set's own events as part of its full auth chain: its chain
cover index and its walk over events not yet stored both start from the
state sets' events (ruma's own state resolution tests build the chains
the same way). The two readings differ only at events every state set
holds, the unconflicted state: word for word, one that some set's chain
cites and another's does not is in the auth difference and is replayed;
as Synapse reads it, such an event is in every full chain and never is.
Replaying it changes resolved states, in every room version: in v2 an
unconflicted power levels event pulls the conflicted events of its auth
chain into the power ordering, and in v2.1, which replays from an empty
state, an unconflicted event puts its key into the state that later
events are checked against and, if it is power levels, gives the mainline
ordering a start it would not have. Two servers that resolve the same
states differently fork the room for good, which is worse than departing
from a sentence the deployed network does not follow, so ranvier computes
what Synapse computes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from ranvier.protocol.events import Pdu

__all__ = [
    "AuthEdges",
    "auth_chain",
    "auth_chain_difference",
    "auth_edges_of",
    "conflicted_state_subgraph",
]

#: The auth graph: the IDs of the events a given event cites in ``auth_events``.
AuthEdges = Callable[[str], Iterable[str]]


def auth_edges_of(events: Mapping[str, Pdu]) -> AuthEdges:
    """The auth graph of the events in ``events``; other events cite nothing."""

    def edges(event_id: str) -> Iterable[str]:
        event = events.get(event_id)
        return event.auth_event_ids if event is not None else ()

    return edges


def auth_chain(
    event_ids: Iterable[str], edges: AuthEdges, *, stop_at: Collection[str] = ()
) -> set[str]:
    """The union of the auth chains of ``event_ids``.

    An event of ``event_ids`` is in the result only if another one (or one
    of their auth events) cites it: an auth chain does not contain its own
    event. Walking stops at the events of ``stop_at``, which are left out:
    callers pass a chain they already have.
    """
    chain: set[str] = set()
    stack = [auth_id for event_id in event_ids for auth_id in edges(event_id)]
    while stack:
        event_id = stack.pop()
        if event_id in chain or event_id in stop_at:
            continue
        chain.add(event_id)
        stack.extend(edges(event_id))
    return chain


def auth_chain_difference(state_sets: Sequence[Iterable[str]], edges: AuthEdges) -> set[str]:
    """The events in some but not all of the state sets' full auth chains.

    A state set's full auth chain is its events and the union of their auth
    chains (see the module's docstring for why its own events count). An
    event every set holds is in every full chain, and so is its auth chain,
    so each set's other events are walked, stopping where they meet the
    shared events; the shared events' own chain is walked only when that
    leaves candidates, to take out those it holds.
    """
    sets = [set(state_set) for state_set in state_sets]
    if len(sets) < 2:
        return set()
    shared = sets[0].intersection(*sets[1:])
    reached = []
    for state_set in sets:
        own = state_set - shared
        reached.append(own | auth_chain(own, edges, stop_at=shared))
    candidates = reached[0].union(*reached[1:]) - reached[0].intersection(*reached[1:])
    if candidates:
        candidates -= auth_chain(shared, edges)
    return candidates


def conflicted_state_subgraph(conflicted: Iterable[str], edges: AuthEdges) -> set[str]:
    """The events on auth-event paths from one conflicted event to another.

    This is the *conflicted state subgraph* of state resolution v2.1: the
    union of every path, following ``auth_events``, that starts at an event
    of ``conflicted`` and ends at another, endpoints included. A conflicted
    event with no such path to or from another is not in it.

    It walks the auth chains of the conflicted events once, marking which
    events lead back to a conflicted event.
    """
    targets = set(conflicted)
    # Every event reachable from a conflicted event by at least one edge.
    below = auth_chain(targets, edges)
    # Whether each event reachable from the conflicted ones reaches a
    # conflicted event (itself counting), found depth-first without recursion.
    leads_to_target: dict[str, bool] = {}
    for start in targets | below:
        if start in leads_to_target:
            continue
        stack: list[tuple[str, list[str]]] = [(start, list(edges(start)))]
        found = {start: start in targets}
        while stack:
            node, pending = stack[-1]
            if pending:
                child = pending.pop()
                if child in leads_to_target:
                    found[node] = found[node] or leads_to_target[child]
                elif child not in found:
                    found[child] = child in targets
                    stack.append((child, list(edges(child))))
                continue
            stack.pop()
            leads_to_target[node] = found[node]
            if stack:
                parent = stack[-1][0]
                found[parent] = found[parent] or found[node]
    subgraph: set[str] = set()
    for event_id in targets | below:
        if not leads_to_target[event_id]:
            continue
        if event_id not in targets:
            # Reached from a conflicted event, and leads on to one.
            subgraph.add(event_id)
        elif event_id in below or any(
            leads_to_target.get(child, False) for child in edges(event_id)
        ):
            # A conflicted endpoint of a path of at least one edge.
            subgraph.add(event_id)
    return subgraph
