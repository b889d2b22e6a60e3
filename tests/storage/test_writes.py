import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranvier.errors import MatrixError, PartialStateConflictError, PartialStateEventsRemainError
from ranvier.storage import reads
from ranvier.storage.records import (
    DestinationRetry,
    EventToPersist,
    ReceivedTransaction,
    ServerKey,
)
from ranvier.storage.schema import migrate
from ranvier.storage.state_groups import read_state, store_state_group
from ranvier.storage.writes import (
    _FILL_EDGES_SQL,
    PersistEvents,
    clear_partial_state,
    persist_events,
    record_transaction,
    set_current_state,
    store_destination_retry,
    store_partial_join,
    store_room,
    store_server_keys,
    update_state_for_partial_event,
)

ROOM = "!room:example.org"
CREATE = ("m.room.create", "")
EventFactory = Callable[..., EventToPersist]


def _base(conn: sqlite3.Connection) -> int:
    return store_state_group(conn, ROOM, None, {CREATE: "$create"})


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_events_are_stored_byte_for_byte_with_edges_in_stream_order(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    first = make_event("$a", before=base, auth=("$create",))
    second = make_event("$b", before=base, prev=("$a",), auth=("$create", "$a"))
    orderings = persist_events(conn, [first, second])
    assert orderings["$a"] < orderings["$b"]
    stored = reads.get_event(conn, "$b")
    assert stored is not None
    assert stored.json == second.json
    assert (stored.stream_ordering, stored.depth, stored.outlier) == (orderings["$b"], 1, False)
    assert conn.execute(
        "SELECT prev_event_id FROM event_edges WHERE event_id = '$b'"
    ).fetchall() == [("$a",)]
    assert sorted(
        conn.execute("SELECT auth_event_id FROM event_auth WHERE event_id = '$b'").fetchall()
    ) == [("$a",), ("$create",)]
    third = persist_events(conn, [make_event("$c", before=base, prev=("$b",))])
    assert third["$c"] > orderings["$b"]


def test_an_event_stored_twice_is_written_once(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    event = make_event("$a", before=base)
    first = persist_events(conn, [event])
    again = persist_events(conn, [event])
    assert first == again
    assert _count(conn, "events") == 1
    assert _count(conn, "event_to_state_groups") == 1


def test_outliers_have_no_state_and_move_nothing(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$a", before=base)])
    persist_events(
        conn,
        [make_event("$out", prev=("$a",), outlier=True, type="m.room.member", state_key="@b:x")],
    )
    assert reads.get_event_state_groups(conn, "$out") is None
    assert reads.get_forward_extremities(conn, ROOM) == {"$a"}
    assert (CREATE in reads.get_current_state_ids(conn, ROOM)) is True
    assert ("m.room.member", "@b:x") not in reads.get_current_state_ids(conn, ROOM)
    stored = reads.get_event(conn, "$out")
    assert stored is not None
    assert stored.outlier


def test_an_outlier_joins_the_dag_at_the_end_of_the_stream(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    early = persist_events(conn, [make_event("$out", outlier=True)])["$out"]
    later = persist_events(conn, [make_event("$a", before=base)])["$a"]
    placed = persist_events(conn, [make_event("$out", before=base, prev=("$a",))])["$out"]
    assert early < later < placed
    stored = reads.get_event(conn, "$out")
    assert stored is not None
    assert not stored.outlier
    assert reads.get_event_state_groups(conn, "$out") is not None
    assert reads.get_forward_extremities(conn, ROOM) == {"$out"}
    # An outlier arriving again does not undo that.
    persist_events(conn, [make_event("$out", outlier=True)])
    stored = reads.get_event(conn, "$out")
    assert stored is not None
    assert not stored.outlier


def test_state_after_is_derived_from_the_state_before(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(
        conn,
        [
            make_event("$msg", before=base),
            make_event(
                "$join", before=base, prev=("$msg",), type="m.room.member", state_key="@b:x"
            ),
            make_event(
                "$bad",
                before=base,
                prev=("$msg",),
                type="m.room.name",
                state_key="",
                rejected="auth",
            ),
        ],
    )
    msg = reads.get_event_state_groups(conn, "$msg")
    join = reads.get_event_state_groups(conn, "$join")
    bad = reads.get_event_state_groups(conn, "$bad")
    assert msg is not None
    assert join is not None
    assert bad is not None
    assert msg.after == msg.before == base
    assert bad.after == bad.before == base
    assert join.before == base
    assert read_state(conn, join.after) == {CREATE: "$create", ("m.room.member", "@b:x"): "$join"}
    # The derived group is a one-row delta, not a copy.
    assert conn.execute(
        "SELECT prev_group, row_count FROM state_groups WHERE id = ?", (join.after,)
    ).fetchone() == (base, 1)


def test_forward_extremities_follow_forks_and_merges(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(
        conn, [make_event("$a", before=base), make_event("$b", before=base, prev=("$a",))]
    )
    assert reads.get_forward_extremities(conn, ROOM) == {"$b"}
    persist_events(conn, [make_event("$c", before=base, prev=("$a",))])
    assert reads.get_forward_extremities(conn, ROOM) == {"$b", "$c"}
    persist_events(conn, [make_event("$d", before=base, prev=("$b", "$c"))])
    assert reads.get_forward_extremities(conn, ROOM) == {"$d"}
    # Rejected and soft-failed events never become extremities.
    persist_events(
        conn,
        [
            make_event("$r", before=base, prev=("$d",), rejected="auth"),
            make_event("$s", before=base, prev=("$d",), soft_failed=True),
        ],
    )
    assert reads.get_forward_extremities(conn, ROOM) == {"$d"}


def test_one_write_of_forks_and_lines_leaves_their_tips(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$root", before=base)])
    # In one write: a line of three after $root, a fork off its middle, an
    # event cited only by a rejected one, and one whose only child is soft failed.
    persist_events(
        conn,
        [
            make_event("$l1", before=base, prev=("$root",)),
            make_event("$l2", before=base, prev=("$l1",)),
            make_event("$l3", before=base, prev=("$l2",)),
            make_event("$fork", before=base, prev=("$l1",)),
            make_event("$tip", before=base, prev=("$root",)),
            make_event("$rejected", before=base, prev=("$tip",), rejected="auth"),
            make_event("$soft", before=base, prev=("$fork",), soft_failed=True),
        ],
    )
    assert reads.get_forward_extremities(conn, ROOM) == {"$l3", "$fork", "$tip"}
    # The same events written one at a time leave the same tips.
    conn.execute("DELETE FROM forward_extremities")
    conn.execute("INSERT INTO forward_extremities (room_id, event_id) VALUES (?, '$root')", (ROOM,))
    for name, prev in (("$m1", "$root"), ("$m2", "$m1"), ("$m3", "$m1")):
        persist_events(conn, [make_event(name, before=base, prev=(prev,))])
    assert reads.get_forward_extremities(conn, ROOM) == {"$m2", "$m3"}


def test_an_event_with_children_already_is_not_an_extremity(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$child", before=base, prev=("$parent",))])
    persist_events(conn, [make_event("$parent", before=base)])
    assert reads.get_forward_extremities(conn, ROOM) == {"$child"}


def test_a_prev_edge_is_found_by_ordering_once_its_prev_event_is_stored(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    first = persist_events(conn, [make_event("$first", before=base)])["$first"]
    persist_events(conn, [make_event("$child", before=base, prev=("$parent", "$first"))])

    def prev_orderings() -> dict[str, int | None]:
        return dict(conn.execute("SELECT prev_event_id, prev_ordering FROM event_prev_edges"))

    assert prev_orderings() == {"$first": first, "$parent": None}
    # Storing the prev event later fills its ordering in.
    parent = persist_events(conn, [make_event("$parent", before=base)])["$parent"]
    assert prev_orderings() == {"$first": first, "$parent": parent}
    # Prev events stored together each fill in their own edges.
    persist_events(conn, [make_event("$late", before=base, prev=("$one", "$two"))])
    stored = persist_events(
        conn, [make_event("$one", before=base), make_event("$two", before=base, prev=("$one",))]
    )
    rows = conn.execute(
        "SELECT prev_event_id, prev_ordering FROM event_prev_edges"
        " WHERE event_ordering = (SELECT stream_ordering FROM events WHERE event_id = '$late')"
    )
    assert dict(rows) == {"$one": stored["$one"], "$two": stored["$two"]}
    # And so does a prev event written one by one (here, as it is given twice).
    persist_events(conn, [make_event("$later", before=base, prev=("$three",))])
    again = make_event("$three", before=base)
    three = persist_events(conn, [again, again])["$three"]
    rows = conn.execute("SELECT prev_ordering FROM event_prev_edges WHERE prev_event_id = '$three'")
    assert rows.fetchall() == [(three,)]
    # Edges of prev events not stored are found by ID, through the partial
    # index: through the other, every such edge would be read.
    for sql, params in (
        (_FILL_EDGES_SQL.format(marks="?,?"), ("$x", "$y")),
        (reads._CITED_SQL.format(marks="?"), ("$x", "$x")),
    ):
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "event_prev_edges_unstored_prev (prev_event_id=?)" in plan


def test_current_state_follows_the_sole_extremity_or_the_last_event(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    member = ("m.room.member", "@b:x")
    persist_events(conn, [make_event("$join", before=base, type=member[0], state_key=member[1])])
    assert reads.get_current_state_ids(conn, ROOM) == {CREATE: "$create", member: "$join"}
    joined = reads.get_event_state_groups(conn, "$join")
    assert joined is not None
    # Two branches and no resolved state named: the state after the last
    # event written, until the branches merge.
    persist_events(
        conn,
        [
            make_event(
                "$name", before=joined.after, prev=("$join",), type="m.room.name", state_key=""
            ),
            make_event(
                "$topic", before=joined.after, prev=("$join",), type="m.room.topic", state_key=""
            ),
        ],
    )
    assert reads.get_current_state_ids(conn, ROOM) == {
        CREATE: "$create",
        member: "$join",
        ("m.room.topic", ""): "$topic",
    }
    name = reads.get_event_state_groups(conn, "$name")
    assert name is not None
    resolved = store_state_group(conn, ROOM, name.after, {("m.room.topic", ""): "$topic"})
    persist_events(conn, [make_event("$merge", before=resolved, prev=("$name", "$topic"))])
    assert reads.get_current_state_ids(conn, ROOM) == {
        CREATE: "$create",
        member: "$join",
        ("m.room.name", ""): "$name",
        ("m.room.topic", ""): "$topic",
    }


def test_a_named_current_state_group_wins(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$a", before=base), make_event("$b", before=base)])
    resolved = store_state_group(conn, ROOM, base, {("m.room.name", ""): "$resolved-name"})
    persist_events(
        conn, [make_event("$c", before=base, prev=("$a",))], current_state_groups={ROOM: resolved}
    )
    assert reads.get_forward_extremities(conn, ROOM) == {"$b", "$c"}
    assert reads.get_current_state_ids(conn, ROOM) == {
        CREATE: "$create",
        ("m.room.name", ""): "$resolved-name",
    }


def test_current_state_moves_between_unrelated_groups(conn: sqlite3.Connection) -> None:
    first = store_state_group(conn, ROOM, None, {CREATE: "$c", ("m.room.name", ""): "$n1"})
    set_current_state(conn, ROOM, first)
    second = store_state_group(conn, ROOM, None, {CREATE: "$c", ("m.room.topic", ""): "$t"})
    set_current_state(conn, ROOM, second)
    assert reads.get_current_state_ids(conn, ROOM) == {CREATE: "$c", ("m.room.topic", ""): "$t"}
    # Back along a delta that removes a key.
    third = store_state_group(conn, ROOM, second, {("m.room.topic", ""): None})
    set_current_state(conn, ROOM, third)
    assert reads.get_current_state_ids(conn, ROOM) == {CREATE: "$c"}


def test_current_state_moves_across_thousands_of_keys(conn: sqlite3.Connection) -> None:
    """A move across more changed keys than are compared one by one (the
    first after a big room's resync) compares the whole states in SQL: keys
    added, changed, removed along a chain of deltas, and kept, all come out
    as the group has them.
    """
    members = {("m.room.member", f"@u{n}:x"): f"$join{n}" for n in range(3_000)}
    root = store_state_group(conn, ROOM, None, {CREATE: "$c", ("m.room.topic", ""): "$t"})
    set_current_state(conn, ROOM, root)
    grown = store_state_group(conn, ROOM, root, members)
    changed = store_state_group(
        conn,
        ROOM,
        grown,
        {
            ("m.room.member", "@u1:x"): "$leave1",
            ("m.room.member", "@u2:x"): None,
            ("m.room.topic", ""): None,
        },
    )
    again = store_state_group(conn, ROOM, changed, {("m.room.member", "@u1:x"): "$rejoin1"})
    set_current_state(conn, ROOM, again)
    expected = read_state(conn, again)
    assert expected[("m.room.member", "@u1:x")] == "$rejoin1"
    assert ("m.room.member", "@u2:x") not in expected
    assert ("m.room.topic", "") not in expected
    assert reads.get_current_state_ids(conn, ROOM) == expected
    # And back again, which removes thousands of keys.
    set_current_state(conn, ROOM, root)
    assert reads.get_current_state_ids(conn, ROOM) == {CREATE: "$c", ("m.room.topic", ""): "$t"}
    assert conn.execute("SELECT COUNT(*) FROM temp.moving_state").fetchone() == (0,)


def test_soft_failed_events_keep_their_state_but_not_the_room(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$a", before=base)])
    persist_events(
        conn,
        [
            make_event(
                "$ban",
                before=base,
                prev=("$a",),
                type="m.room.member",
                state_key="@b:x",
                soft_failed=True,
            )
        ],
    )
    groups = reads.get_event_state_groups(conn, "$ban")
    assert groups is not None
    assert groups.after != groups.before
    assert reads.get_current_state_ids(conn, ROOM) == {CREATE: "$create"}
    assert reads.get_forward_extremities(conn, ROOM) == {"$a"}


def test_state_groups_of_another_room_are_refused(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    store_room(conn, "!other:x", "10")
    other = store_state_group(conn, "!other:x", None, {CREATE: "$o"})
    with pytest.raises(MatrixError, match="not of") as caught:
        persist_events(conn, [make_event("$a", before=other)])
    assert caught.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError, match="does not exist"):
        persist_events(conn, [make_event("$b", before=12345)])


def test_a_room_keeps_its_version(conn: sqlite3.Connection, make_event: EventFactory) -> None:
    store_room(conn, ROOM, "10")
    with pytest.raises(MatrixError, match="version 10, not 11") as caught:
        store_room(conn, ROOM, "11")
    assert caught.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError, match="version 10, not 9"):
        persist_events(conn, [make_event("$a", outlier=True, version="9")])


def test_partial_state_rows_and_the_foreign_key(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    # Not (or no longer) a partial-state room: the event is refused.
    with pytest.raises(PartialStateConflictError, match=r"\$early has partial state"):
        persist_events(conn, [make_event("$early", before=base, partial=True)])
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", ["a.example", "hs.example"])
    persist_events(conn, [make_event("$join", before=base, partial=True)])
    assert reads.get_partial_state_events(conn, ROOM) == ["$join"]
    rooms = reads.get_partial_state_rooms(conn)
    assert rooms[ROOM].servers == {"a.example", "hs.example"}
    assert (rooms[ROOM].join_event_id, rooms[ROOM].joined_via) == ("$join", "hs.example")
    with pytest.raises(PartialStateEventsRemainError) as remain:
        clear_partial_state(conn, ROOM)
    assert remain.value.room_id == ROOM
    update_state_for_partial_event(conn, "$join", base, None, None)
    assert reads.get_partial_state_events(conn, ROOM) == []
    assert clear_partial_state(conn, ROOM) is True
    assert not reads.is_partial_state_room(conn, ROOM)
    assert _count(conn, "partial_state_rooms_servers") == 0
    assert clear_partial_state(conn, ROOM) is False


def test_a_second_partial_join_is_refused(conn: sqlite3.Connection) -> None:
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", [])
    with pytest.raises(MatrixError, match="already has partial state"):
        store_partial_join(conn, ROOM, "10", "$join2", "hs.example", [])


def test_full_state_for_a_partial_event(conn: sqlite3.Connection, make_event: EventFactory) -> None:
    partial = _base(conn)
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", [])
    persist_events(
        conn,
        [
            make_event(
                "$join", before=partial, type="m.room.member", state_key="@me:x", partial=True
            )
        ],
    )
    full = store_state_group(conn, ROOM, partial, {("m.room.member", "@other:x"): "$other"})
    update_state_for_partial_event(conn, "$join", full, None, None)
    groups = reads.get_event_state_groups(conn, "$join")
    assert groups is not None
    assert groups.before == full
    # It is the sole extremity, so current state follows its new state.
    assert reads.get_current_state_ids(conn, ROOM) == {
        CREATE: "$create",
        ("m.room.member", "@other:x"): "$other",
        ("m.room.member", "@me:x"): "$join",
    }


def test_a_partial_event_found_rejected_stops_being_an_extremity(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", [])
    persist_events(
        conn,
        [make_event("$a", before=base), make_event("$b", before=base, prev=("$a",), partial=True)],
    )
    update_state_for_partial_event(conn, "$b", base, None, "not allowed")
    stored = reads.get_event(conn, "$b")
    assert stored is not None
    assert stored.rejected_reason == "not allowed"
    assert "$b" not in reads.get_forward_extremities(conn, ROOM)


def test_updating_unknown_or_outlier_events_is_refused(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    with pytest.raises(MatrixError, match="not stored here") as unknown:
        update_state_for_partial_event(conn, "$nope", base, None, None)
    assert unknown.value.errcode == "M_NOT_FOUND"
    persist_events(conn, [make_event("$out", outlier=True)])
    with pytest.raises(MatrixError, match="is an outlier"):
        update_state_for_partial_event(conn, "$out", base, None, None)


def test_received_transactions(conn: sqlite3.Connection) -> None:
    txn = ReceivedTransaction(
        origin="hs.example",
        transaction_id="t1",
        response_code=200,
        response_json=b"{}",
        received_ts=5,
    )
    record_transaction(conn, txn)
    assert reads.get_received_transaction(conn, "hs.example", "t1") == txn
    assert reads.get_received_transaction(conn, "hs.example", "t2") is None


def _key(valid_until: int, verify_key: bytes) -> ServerKey:
    return ServerKey(
        server_name="hs.example",
        key_id="ed25519:a",
        verify_key=verify_key,
        valid_until_ts=valid_until,
        from_server="notary.example",
        fetched_ts=1,
        key_json=b'{"server_name":"hs.example"}',
    )


def test_server_keys_keep_the_answer_valid_longest(conn: sqlite3.Connection) -> None:
    store_server_keys(conn, [_key(100, b"k" * 32)])
    store_server_keys(conn, [_key(50, b"old" + b"k" * 29)])
    assert reads.get_server_keys(conn, "hs.example") == {"ed25519:a": _key(100, b"k" * 32)}
    store_server_keys(conn, [_key(200, b"n" * 32)])
    assert (
        reads.get_server_keys(conn, "hs.example", ["ed25519:a"])["ed25519:a"].verify_key
        == b"n" * 32
    )
    assert reads.get_server_keys(conn, "hs.example", ["ed25519:b"]) == {}


def test_destination_retry_state(conn: sqlite3.Connection) -> None:
    retry = DestinationRetry(
        destination="hs.example", failure_ts=1, retry_last_ts=2, retry_interval_ms=3
    )
    store_destination_retry(conn, "hs.example", retry)
    assert reads.get_destination_retry(conn, "hs.example") == retry
    store_destination_retry(conn, "hs.example", None)
    assert reads.get_destination_retry(conn, "hs.example") is None
    with pytest.raises(MatrixError, match=r"given for other\.example"):
        store_destination_retry(conn, "other.example", retry)


_STATE_KEYS = st.sampled_from([None, None, ("m.room.name", ""), ("m.room.member", "@b:x")])


@st.composite
def _event_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events (as arguments for ``make_event``) in the order a server might
    write them: new events on random prev events, outliers, outliers brought
    into the DAG, repeats.
    """
    events: list[dict[str, Any]] = []
    in_dag: list[str] = []
    outliers: list[str] = []
    for n in range(draw(st.integers(min_value=1, max_value=12))):
        kind = draw(st.sampled_from(["new", "new", "new", "outlier", "promote", "repeat"]))
        if kind == "repeat" and events:
            events.append(draw(st.sampled_from(events)))
            continue
        event_id = draw(st.sampled_from(outliers)) if kind == "promote" and outliers else f"$e{n}"
        if kind == "outlier":
            outliers.append(event_id)
            events.append({"event_id": event_id, "outlier": True})
            continue
        key = draw(_STATE_KEYS)
        prev = (
            tuple(draw(st.lists(st.sampled_from(in_dag), max_size=2, unique=True)))
            if in_dag
            else ()
        )
        events.append(
            {
                "event_id": event_id,
                "type": key[0] if key else "m.room.message",
                "state_key": key[1] if key else None,
                "prev": prev,
                "before": draw(st.sampled_from([1, 2, 3])),
                "after": draw(st.sampled_from([None, None, 2, 3])),
                "rejected": draw(st.sampled_from([None, None, "auth"])),
                "soft_failed": draw(st.booleans()),
            }
        )
        in_dag.append(event_id)
    return events


def _fresh_db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("PRAGMA foreign_keys = ON")
    migrate(db)
    store_room(db, ROOM, "10")
    store_state_group(db, ROOM, None, {CREATE: "$create"})  # group 1
    store_state_group(db, ROOM, 1, {("m.room.name", ""): "$name"})  # group 2
    store_state_group(db, ROOM, 1, {("m.room.topic", ""): "$topic"})  # group 3
    return db


def _observable(db: sqlite3.Connection) -> tuple[object, ...]:
    events = db.execute(
        "SELECT event_id, stream_ordering, outlier, soft_failed, rejected_reason FROM events"
        " ORDER BY stream_ordering"
    ).fetchall()
    states = {
        event_id: (read_state(db, before), read_state(db, after))
        for event_id, before, after in db.execute("SELECT * FROM event_to_state_groups")
    }
    return (
        events,
        states,
        reads.get_forward_extremities(db, ROOM),
        reads.get_current_state_ids(db, ROOM),
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(specs=_event_lists())
def test_one_call_writes_what_one_call_per_event_writes(
    make_event: EventFactory, specs: list[dict[str, Any]]
) -> None:
    """Whether events come one request at a time or all together (as the
    actor combines neighbouring requests), the database ends up the same.
    """
    events = [make_event(**spec) for spec in specs]
    apart, together = _fresh_db(), _fresh_db()
    one_by_one = {}
    for event in events:
        one_by_one.update(persist_events(apart, [event]))
    assert persist_events(together, events) == one_by_one
    assert _observable(together) == _observable(apart)
    apart.close()
    together.close()


def test_persist_requests_combine_and_answer_each(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    first = PersistEvents((make_event("$a", before=base), make_event("$b", before=base)))
    second = PersistEvents((make_event("$c", before=base, prev=("$a", "$b")),))
    named = PersistEvents((make_event("$d", before=base),), {ROOM: base})
    assert first.combine_key == second.combine_key == "persist_events"
    # A request naming current state is never combined.
    assert named.combine_key is None
    answers = first.run_combined(conn, [first, second])
    assert [set(answer) for answer in answers] == [{"$a", "$b"}, {"$c"}]
    assert answers[0]["$b"] < answers[1]["$c"]
    assert reads.get_forward_extremities(conn, ROOM) == {"$c"}
