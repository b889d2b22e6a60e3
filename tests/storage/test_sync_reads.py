import sqlite3
from collections.abc import Callable, Collection

import msgspec

from ranvier.protocol.canonical import encode_canonical_json
from ranvier.storage import EventToPersist, Storage
from ranvier.storage.state_groups import store_state_group
from ranvier.storage.sync_reads import (
    positions,
    room_events,
    room_summary,
    state_changes,
    sync_snapshot,
)
from ranvier.storage.writes import (
    clear_partial_state,
    persist_events,
    store_partial_join,
    update_state_for_partial_event,
)

ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]


def _base(conn: sqlite3.Connection) -> int:
    return store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})


def test_an_outlier_taken_into_the_dag_is_seen_by_a_read_from_before(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$out", outlier=True)])
    persist_events(conn, [make_event("$a", before=base)])
    # A sync answered here; the outlier is no timeline event yet.
    since, _ = positions(conn)
    events, more = room_events(
        conn, ROOM, after=0, upto=since, limit=10, backwards=False, accept=None
    )
    assert ([event.event_id for event in events], more) == (["$a"], False)
    # The outlier joins the DAG: the next incremental read has it.
    persist_events(conn, [make_event("$out", before=base, prev=("$a",))])
    now, _ = positions(conn)
    events, _ = room_events(
        conn, ROOM, after=since, upto=now, limit=10, backwards=False, accept=None
    )
    assert [event.event_id for event in events] == ["$out"]


def test_timeline_reads_filter_page_and_say_whether_more_is_left(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    # More events than one statement reads, few of which pass the filter.
    events = [
        make_event(f"$e{n}", before=base, type="m.keep" if n % 100 == 0 else "m.skip")
        for n in range(450)
    ]
    events.append(make_event("$rejected", before=base, type="m.keep", rejected="no"))
    events.append(make_event("$soft", before=base, type="m.keep", soft_failed=True))
    persist_events(conn, events)
    top, _ = positions(conn)

    def keep(event_type: str, sender: str) -> bool:
        return event_type == "m.keep"

    newest, more = room_events(conn, ROOM, after=0, upto=top, limit=3, backwards=True, accept=keep)
    assert ([event.event_id for event in newest], more) == (["$e400", "$e300", "$e200"], True)
    oldest, more = room_events(conn, ROOM, after=0, upto=top, limit=5, backwards=False, accept=keep)
    assert [event.event_id for event in oldest] == ["$e0", "$e100", "$e200", "$e300", "$e400"]
    assert more is False
    window, _ = room_events(
        conn,
        ROOM,
        after=oldest[1].stream_ordering,
        upto=oldest[3].stream_ordering,
        limit=10,
        backwards=False,
        accept=keep,
    )
    assert [event.event_id for event in window] == ["$e200", "$e300"]


def test_state_changes_between_a_position_and_an_event(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    persist_events(conn, [make_event("$a", before=base)])
    since, _ = positions(conn)
    topic = make_event("$topic", before=base, type="m.room.topic", state_key="", prev=("$a",))
    persist_events(conn, [topic])
    after_topic = store_state_group(conn, ROOM, base, {("m.room.topic", ""): "$topic"})
    persist_events(conn, [make_event("$b", before=after_topic, prev=("$topic",))])
    assert state_changes(conn, ROOM, since, "$b") == {("m.room.topic", ""): "$topic"}
    assert state_changes(conn, ROOM, since, "$topic") == {}


def test_clearing_partial_state_moves_the_un_partial_stream(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _base(conn)
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES ('!other:example.org', '10')")
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", [])
    persist_events(
        conn,
        [make_event("$join", before=base, partial=True, type="m.room.member", state_key="@u:x")],
    )
    events_before, un_partial_before = positions(conn)
    assert un_partial_before == 0
    update_state_for_partial_event(conn, "$join", base, None, None)
    snapshot = sync_snapshot(conn, "@u:x", 0)
    assert snapshot[3] == {ROOM}  # the user's partial rooms
    assert clear_partial_state(conn, ROOM)
    # No event came in between, yet the clear is after the earlier position.
    events_after, un_partial_after = positions(conn)
    assert (events_after, un_partial_after) == (events_before, 1)
    assert conn.execute(
        "SELECT stream_ordering FROM un_partial_stated_rooms WHERE room_id = ?", (ROOM,)
    ).fetchone() == (events_before,)
    events, un_partial, memberships, partial, cleared, changed = sync_snapshot(conn, "@u:x", 0)
    assert changed is None
    assert (events, un_partial, set(partial), set(cleared)) == (events_before, 1, set(), {ROOM})
    assert memberships == [(ROOM, "", events_before, "$join")]
    assert sync_snapshot(conn, "@u:x", 1)[4] == frozenset()
    # Nothing to clear: the stream stays.
    assert not clear_partial_state(conn, ROOM)
    assert positions(conn)[1] == 1
    # Another room cleared later comes after; the same room cleared again
    # (joined with partial state anew) moves to the end.
    store_partial_join(conn, "!other:example.org", "10", "$j2", "hs.example", [])
    assert clear_partial_state(conn, "!other:example.org")
    store_partial_join(conn, ROOM, "10", "$j3", "hs.example", [])
    assert clear_partial_state(conn, ROOM)
    assert sync_snapshot(conn, "@u:x", 2)[4] == {ROOM}
    assert positions(conn)[1] == 3


async def test_storage_tells_its_listener_after_each_commit(
    storage: Storage, make_event: EventFactory
) -> None:
    told: list[tuple[int | None, int | None, set[str], set[str]]] = []

    def listen(
        events: int | None,
        un_partial: int | None,
        *,
        rooms: Collection[str],
        users: Collection[str],
    ) -> None:
        told.append((events, un_partial, set(rooms), set(users)))

    storage.on_stream_advance = listen
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    orderings = await storage.persist_events(
        [
            make_event("$a", before=base),
            make_event("$b", before=base, prev=("$a",), type="m.room.member", state_key="@u:x"),
        ]
    )
    assert told == [(orderings["$b"], None, {ROOM}, {"@u:x"})]
    await storage.store_partial_join(ROOM, "10", "$a", "hs.example", [])
    assert await storage.clear_partial_state(ROOM)
    assert told[-1] == (None, 1, {ROOM}, set())
    assert not await storage.clear_partial_state(ROOM)
    assert len(told) == 2
    assert await storage.sync.positions() == (orderings["$b"], 1)


async def test_filters_are_numbered_per_user(storage: Storage) -> None:
    assert await storage.sync.store_filter("@a:x", b'{"a":1}') == 0
    assert await storage.sync.store_filter("@a:x", b'{"a":2}') == 1
    assert await storage.sync.store_filter("@b:x", b"{}") == 0
    assert await storage.sync.get_filter("@a:x", 1) == b'{"a":2}'
    assert await storage.sync.get_filter("@b:x", 1) is None
    assert await storage.sync.get_filter("@a:x", 0) == b'{"a":1}'


def test_memberships_known_only_as_outliers(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    remote = "!remote:elsewhere.example"

    def member(event_id: str, membership: str) -> EventToPersist:
        event = make_event(
            event_id, room_id=remote, outlier=True, type="m.room.member", state_key="@u:x"
        )
        pdu = {"content": {"membership": membership}, "room_id": remote, "x": event_id}
        return msgspec.structs.replace(event, json=encode_canonical_json(pdu), out_of_band=True)

    # A room joined here is read from its current state, not its outliers.
    base = _base(conn)
    persist_events(
        conn, [make_event("$joined", before=base, type="m.room.member", state_key="@u:x")]
    )
    persist_events(conn, [member("$invite", "invite")])
    ordering = positions(conn)[0]
    memberships = sync_snapshot(conn, "@u:x", 0)[2]
    assert sorted(memberships) == [
        (remote, "invite", ordering, "$invite"),
        (ROOM, "", ordering - 1, "$joined"),
    ]
    # Declined: the latest outlier membership is what counts.
    persist_events(conn, [member("$leave", "leave")])
    memberships = sync_snapshot(conn, "@u:x", 0)[2]
    assert (remote, "leave", ordering + 1, "$leave") in memberships
    assert sync_snapshot(conn, "@someone:else", 0)[2] == []


def test_the_rooms_with_events_since_a_position(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    other = "!other:example.org"
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (other,))
    base = _base(conn)
    other_base = store_state_group(conn, other, None, {("m.room.create", ""): "$create2"})
    persist_events(conn, [make_event("$a", before=base)])
    since, _ = positions(conn)
    assert sync_snapshot(conn, "@u:x", 0, since)[5] == frozenset()
    persist_events(conn, [make_event("$b", room_id=other, before=other_base)])
    assert sync_snapshot(conn, "@u:x", 0, since)[5] == frozenset({other})
    assert sync_snapshot(conn, "@u:x", 0, 0)[5] == frozenset({ROOM, other})


def test_room_summary_counts_members_and_names_heroes(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    group = _base(conn)
    previous = "$create"

    def member(event_id: str, user: str, membership: str) -> None:
        nonlocal group, previous
        event = make_event(
            event_id, before=group, type="m.room.member", state_key=user, prev=(previous,)
        )
        pdu = {"content": {"membership": membership}, "x": event_id}
        persist_events(conn, [msgspec.structs.replace(event, json=encode_canonical_json(pdu))])
        group = store_state_group(conn, ROOM, group, {("m.room.member", user): event_id})
        previous = event_id

    member("$u", "@u:x", "join")
    member("$v", "@v:x", "join")
    member("$w", "@w:x", "invite")
    member("$v2", "@v:x", "leave")
    assert room_summary(conn, ROOM, "@u:x", 5) == (1, 1, ["@w:x"])
    assert room_summary(conn, ROOM, "@w:x", 5) == (1, 1, ["@u:x"])
    assert room_summary(conn, ROOM, "@u:x", 0) == (1, 1, [])
    # With nobody else joined or invited, those who left name the room.
    member("$w2", "@w:x", "leave")
    assert room_summary(conn, ROOM, "@u:x", 5) == (1, 0, ["@v:x", "@w:x"])
