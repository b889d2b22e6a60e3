"""Forward extremities and current state when full state turns a partial-state
event's verdict around.

The rule checked throughout: a room's forward extremities are its accepted
events in the DAG (not outliers, not soft-failed, not rejected) that no
accepted event cites as a prev event; when there is exactly one, current
state is the state after it.
"""

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranvier.storage import EventToPersist, Storage, reads
from ranvier.storage.schema import migrate
from ranvier.storage.state_groups import read_state, store_state_group
from ranvier.storage.writes import (
    persist_events,
    store_partial_join,
    store_room,
    update_state_for_partial_event,
)

ROOM = "!room:example.org"
CREATE = ("m.room.create", "")
EventFactory = Callable[..., EventToPersist]


def _partial_room(conn: sqlite3.Connection) -> int:
    """Make ROOM a partial-state room; return its first state group."""
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", [])
    return store_state_group(conn, ROOM, None, {CREATE: "$create"})


def _member(
    make_event: EventFactory, event_id: str, before: int, **kwargs: object
) -> EventToPersist:
    """A state event of its own key, so that each one changes the state."""
    return make_event(
        event_id, type="m.room.member", state_key=f"@{event_id[1:]}:x", before=before, **kwargs
    )


def _state_after(conn: sqlite3.Connection, event_id: str) -> dict[tuple[str, str], str]:
    groups = reads.get_event_state_groups(conn, event_id)
    assert groups is not None
    return read_state(conn, groups.after)


def _extremities(conn: sqlite3.Connection) -> frozenset[str]:
    return reads.get_forward_extremities(conn, ROOM)


def test_a_sole_extremity_found_rejected_gives_way_to_its_prev_event(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            _member(make_event, "$a", base),
            _member(make_event, "$b", base, prev=("$a",), partial=True),
        ],
    )
    assert _extremities(conn) == {"$b"}
    assert ("m.room.member", "@b:x") in reads.get_current_state_ids(conn, ROOM)
    update_state_for_partial_event(conn, "$b", base, None, "not allowed")
    assert _extremities(conn) == {"$a"}
    # The room is back at the state after $a: $b's membership is gone.
    assert reads.get_current_state_ids(conn, ROOM) == _state_after(conn, "$a")
    assert ("m.room.member", "@b:x") not in reads.get_current_state_ids(conn, ROOM)


def test_a_rejected_event_found_accepted_becomes_the_extremity(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            _member(make_event, "$a", base),
            _member(make_event, "$b", base, prev=("$a",), partial=True, rejected="auth"),
        ],
    )
    assert _extremities(conn) == {"$a"}
    update_state_for_partial_event(conn, "$b", base, None, None)
    assert _extremities(conn) == {"$b"}
    assert reads.get_current_state_ids(conn, ROOM) == _state_after(conn, "$b")
    assert reads.get_current_state_ids(conn, ROOM)[("m.room.member", "@b:x")] == "$b"


def test_a_followed_event_found_rejected_leaves_its_prev_event_uncited(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            make_event("$a", before=base),
            make_event("$b", before=base, prev=("$a",), partial=True),
            make_event("$c", before=base, prev=("$b",)),
        ],
    )
    assert _extremities(conn) == {"$c"}
    update_state_for_partial_event(conn, "$b", base, None, "not allowed")
    # $c still follows $b, but $a is now cited by no accepted event.
    assert _extremities(conn) == {"$a", "$c"}


def test_a_followed_event_found_accepted_stays_behind_its_follower(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            make_event("$a", before=base),
            make_event("$b", before=base, prev=("$a",), partial=True, rejected="auth"),
            make_event("$c", before=base, prev=("$b",)),
        ],
    )
    assert _extremities(conn) == {"$a", "$c"}
    update_state_for_partial_event(conn, "$b", base, None, None)
    # $b takes $a's place, but $c already cites it.
    assert _extremities(conn) == {"$c"}


def test_one_branch_of_a_fork_found_rejected_and_accepted_again(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            _member(make_event, "$a", base),
            _member(make_event, "$b", base, prev=("$a",)),
            _member(make_event, "$c", base, prev=("$a",), partial=True),
        ],
    )
    assert _extremities(conn) == {"$b", "$c"}
    update_state_for_partial_event(conn, "$c", base, None, "not allowed")
    # $a is still cited by $b, so only $b is left, and the room is at its state.
    assert _extremities(conn) == {"$b"}
    assert reads.get_current_state_ids(conn, ROOM) == _state_after(conn, "$b")
    update_state_for_partial_event(conn, "$c", base, None, None)
    assert _extremities(conn) == {"$b", "$c"}
    # Two extremities: current state waits for the caller to resolve them.
    assert reads.get_current_state_ids(conn, ROOM) == _state_after(conn, "$b")


def test_prev_events_that_are_not_accepted_do_not_come_back(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            make_event("$outlier", outlier=True),
            make_event("$soft", before=base, soft_failed=True),
            make_event("$bad", before=base, rejected="auth"),
            make_event("$good", before=base),
            make_event(
                "$b",
                before=base,
                prev=("$outlier", "$soft", "$bad", "$good", "$never-seen"),
                partial=True,
            ),
        ],
    )
    assert _extremities(conn) == {"$b"}
    update_state_for_partial_event(conn, "$b", base, None, "not allowed")
    assert _extremities(conn) == {"$good"}


def test_a_soft_failed_event_moves_nothing_either_way(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(
        conn,
        [
            make_event("$a", before=base),
            make_event("$b", before=base, prev=("$a",), partial=True, soft_failed=True),
        ],
    )
    update_state_for_partial_event(conn, "$b", base, None, "not allowed")
    assert _extremities(conn) == {"$a"}
    update_state_for_partial_event(conn, "$b", base, None, None)
    assert _extremities(conn) == {"$a"}


def test_an_event_with_nothing_accepted_before_it_leaves_no_extremity(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _partial_room(conn)
    persist_events(conn, [_member(make_event, "$a", base, partial=True)])
    update_state_for_partial_event(conn, "$a", base, None, "not allowed")
    assert _extremities(conn) == frozenset()
    update_state_for_partial_event(conn, "$a", base, None, None)
    assert _extremities(conn) == {"$a"}
    assert reads.get_current_state_ids(conn, ROOM) == _state_after(conn, "$a")


def _steps_to_reject(conn: sqlite3.Connection, make_event: EventFactory, room_size: int) -> int:
    """SQLite virtual-machine steps taken to reject a partial event at the
    end of a chain of ``room_size`` events.
    """
    base = _partial_room(conn)
    chain = [make_event("$m0", before=base)]
    for n in range(1, room_size):
        chain.append(make_event(f"$m{n}", before=base, prev=(f"$m{n - 1}",)))
    chain.append(make_event("$tip", before=base, prev=(chain[-1].event_id,), partial=True))
    persist_events(conn, chain)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    update_state_for_partial_event(conn, "$tip", base, None, "not allowed")
    conn.set_progress_handler(None, 0)
    assert _extremities(conn) == {f"$m{room_size - 1}"}
    return steps


def test_a_changed_verdict_costs_the_same_in_a_small_room_and_a_big_one(
    make_event: EventFactory,
) -> None:
    small_db, big_db = _fresh_db(), _fresh_db()
    small = _steps_to_reject(small_db, make_event, 10)
    big = _steps_to_reject(big_db, make_event, 3000)
    small_db.close()
    big_db.close()
    # A scan of the room's events would take hundreds of times as many.
    assert big < 2 * small, (small, big)


async def test_through_the_storage_actor(storage: Storage, make_event: EventFactory) -> None:
    await storage.store_partial_join(ROOM, "10", "$join", "hs.example", ["hs.example"])
    base = await storage.store_state_group(ROOM, None, {CREATE: "$create"})
    await storage.persist_events(
        [
            make_event("$a", before=base),
            make_event("$b", before=base, prev=("$a",), partial=True),
        ]
    )
    await storage.update_state_for_partial_event("$b", base, None, "not allowed")
    assert await storage.get_forward_extremities(ROOM) == {"$a"}
    await storage.update_state_for_partial_event("$b", base, None, None)
    assert await storage.get_forward_extremities(ROOM) == {"$b"}
    assert await storage.get_partial_state_events(ROOM) == []


# The property: any room, any sequence of verdict changes.


@dataclass
class _Room:
    """A room as the test means it to be, independent of what is stored."""

    #: The prev events of each event in the DAG (outliers are not in it).
    prevs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    soft_failed: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)

    def accepted(self, event_id: str) -> bool:
        return event_id in self.prevs and not ({event_id} & (self.soft_failed | self.rejected))

    def extremities(self) -> frozenset[str]:
        cited = {prev for child in self.prevs if self.accepted(child) for prev in self.prevs[child]}
        return frozenset(e for e in self.prevs if self.accepted(e) and e not in cited)


@st.composite
def _rooms_and_flips(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], list[str], list[tuple[int, bool]]]:
    """Events (as ``make_event`` arguments, in the order they are written:
    a prev event may come after its children), outliers, and verdict changes
    (an index into the events and whether it is now rejected).
    """
    outliers = [f"$o{n}" for n in range(draw(st.integers(0, 2)))]
    count = draw(st.integers(1, 10))
    events: list[dict[str, Any]] = []
    for n in range(count):
        citable = [f"$e{m}" for m in range(n)] + outliers + ["$never-seen"]
        prev = tuple(draw(st.lists(st.sampled_from(citable), max_size=3, unique=True)))
        state = draw(st.booleans())
        events.append(
            {
                "event_id": f"$e{n}",
                "type": "m.room.member" if state else "m.room.message",
                "state_key": f"@e{n}:x" if state else None,
                "prev": prev,
                "partial": draw(st.booleans()),
                "rejected": draw(st.sampled_from([None, None, "auth"])),
                "soft_failed": draw(st.integers(0, 4)) == 0,
            }
        )
    order = draw(st.permutations(events))
    flips = draw(st.lists(st.tuples(st.integers(0, count - 1), st.booleans()), max_size=12))
    return order, outliers, flips


def _fresh_db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("PRAGMA foreign_keys = ON")
    migrate(db)
    store_room(db, ROOM, "10")
    return db


def _check(db: sqlite3.Connection, room: _Room) -> None:
    extremities = reads.get_forward_extremities(db, ROOM)
    assert extremities == room.extremities()
    if len(extremities) == 1:
        (sole,) = extremities
        assert reads.get_current_state_ids(db, ROOM) == _state_after(db, sole)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=_rooms_and_flips())
def test_extremities_keep_the_rule_through_any_verdict_changes(
    make_event: EventFactory,
    case: tuple[list[dict[str, Any]], list[str], list[tuple[int, bool]]],
) -> None:
    specs, outliers, flips = case
    db = _fresh_db()
    base = _partial_room(db)
    room = _Room()
    persist_events(db, [make_event(event_id, outlier=True) for event_id in outliers])
    for spec in specs:
        event_id = spec["event_id"]
        persist_events(db, [make_event(before=base, **spec)])
        room.prevs[event_id] = spec["prev"]
        if spec["soft_failed"]:
            room.soft_failed.add(event_id)
        if spec["rejected"] is not None:
            room.rejected.add(event_id)
        _check(db, room)
    for index, rejected in flips:
        event_id = f"$e{index}"
        update_state_for_partial_event(db, event_id, base, None, "auth" if rejected else None)
        (room.rejected.add if rejected else room.rejected.discard)(event_id)
        _check(db, room)
    db.close()
