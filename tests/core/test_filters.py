import json
from typing import Any

import pytest

from ranvier.core.filters import (
    EventFilter,
    Filter,
    RoomEventFilter,
    UserFilters,
    parse_filter,
    parse_room_event_filter,
)
from ranvier.errors import MatrixError


def test_an_empty_filter_lets_everything_through() -> None:
    parsed = parse_filter({})
    assert parsed == Filter()
    assert parsed.room.timeline.predicate() is None
    assert parsed.room.includes_room("!any:example.org")
    assert not parsed.lazy_load_members


def test_types_senders_and_their_negations() -> None:
    event_filter = EventFilter(
        types=("m.room.*", "org.example.exact"),
        not_types=("m.room.member",),
        senders=("@a:x", "@b:x"),
        not_senders=("@b:x",),
    )
    assert event_filter.matches("m.room.message", "@a:x")
    assert event_filter.matches("org.example.exact", "@a:x")
    assert not event_filter.matches("org.example.exactly", "@a:x")
    assert not event_filter.matches("m.room.member", "@a:x")
    assert not event_filter.matches("m.room.message", "@b:x")
    assert not event_filter.matches("m.room.message", "@c:x")
    # '*' is the only wildcard: other pattern characters are literal.
    assert not EventFilter(types=("m.roo?.message",)).matches("m.room.message", "@a:x")
    assert EventFilter(types=("*",)).matches("anything", "@a:x")
    assert not EventFilter(types=()).matches("m.room.message", "@a:x")


def test_the_nested_parts_and_unknown_fields() -> None:
    parsed = parse_filter(
        {
            "room": {
                "rooms": ["!a:x"],
                "not_rooms": ["!b:x"],
                "include_leave": True,
                "timeline": {"limit": 5, "not_senders": ["@spam:x"]},
                "state": {"lazy_load_members": True},
            },
            "presence": {"types": []},
            "org.example.future": {"anything": 1},
        }
    )
    assert parsed.room.timeline == RoomEventFilter(limit=5, not_senders=("@spam:x",))
    assert parsed.lazy_load_members
    assert parsed.room.include_leave
    assert parsed.room.includes_room("!a:x")
    assert not parsed.room.includes_room("!b:x")
    assert not parsed.room.includes_room("!c:x")
    timeline = parse_filter({"room": {"timeline": {"not_rooms": ["!quiet:x"]}}}).room.timeline
    assert not timeline.includes_room("!quiet:x")
    assert timeline.includes_room("!a:x")


@pytest.mark.parametrize(
    "content",
    [
        [],
        {"room": {"timeline": {"limit": 0}}},
        {"room": {"timeline": {"limit": "10"}}},
        {"room": {"timeline": {"types": "m.room.message"}}},
        {"room": {"rooms": [1]}},
        {"event_format": "xml"},
        {"room": {"state": {"lazy_load_members": "yes"}}},
    ],
)
def test_malformed_filters_are_refused(content: Any) -> None:
    with pytest.raises(MatrixError) as raised:
        parse_filter(content)
    assert (raised.value.errcode, raised.value.http_status) == ("M_BAD_JSON", 400)


def test_a_room_event_filter() -> None:
    parsed = parse_room_event_filter({"lazy_load_members": True, "types": ["m.room.message"]})
    assert parsed.lazy_load_members
    assert parsed.matches("m.room.message", "@a:x")
    with pytest.raises(MatrixError, match="limit"):
        parse_room_event_filter({"limit": -1})


class _Filters:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], bytes] = {}

    async def store_filter(self, user_id: str, filter_json: bytes) -> int:
        filter_id = sum(user == user_id for user, _ in self.rows)
        self.rows[(user_id, filter_id)] = filter_json
        return filter_id

    async def get_filter(self, user_id: str, filter_id: int) -> bytes | None:
        return self.rows.get((user_id, filter_id))


async def test_user_filters_store_resolve_and_refuse() -> None:
    filters = UserFilters(_Filters())
    definition = {"room": {"timeline": {"limit": 3}}}
    filter_id = await filters.create("@a:x", definition)
    assert await filters.get("@a:x", filter_id) == definition
    assert (await filters.resolve("@a:x", filter_id)).room.timeline.limit == 3
    inline = '{"room": {"include_leave": true}}'
    assert (await filters.resolve("@a:x", inline)).room.include_leave
    assert await filters.resolve("@a:x", None) == Filter()
    for missing in ("7", "x", "-1"):
        with pytest.raises(MatrixError) as raised:
            await filters.get("@a:x", missing)
        assert raised.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError) as raised:
        await filters.get("@b:x", filter_id)
    assert raised.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError) as raised:
        await filters.resolve("@b:x", filter_id)
    assert raised.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError) as raised:
        await filters.resolve("@a:x", "{broken")
    assert raised.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError) as raised:
        await filters.create("@a:x", {"room": {"timeline": {"limit": 0}}})
    assert raised.value.errcode == "M_BAD_JSON"


def test_event_fields_cut_events_down() -> None:
    event = {
        "type": "m.room.message",
        "sender": "@a:x",
        "content": {"body": "hi", "msgtype": "m.text", "a.b": 1},
        "unsigned": {"age": 5},
    }
    assert Filter().project(event) == event
    cut = parse_filter({"event_fields": ["type", "content.body", "content.a\\.b", "nope.x"]})
    assert cut.project(event) == {"type": "m.room.message", "content": {"body": "hi", "a.b": 1}}
    assert parse_filter({"event_fields": []}).project(event) == {}
    assert parse_filter({"event_fields": ["sender.x"]}).project(event) == {}


async def test_a_filter_stored_with_foreign_ids_still_resolves_to_the_same_filter() -> None:
    store = _Filters()
    filters = UserFilters(store)
    # Stored before such entries were refused: "general" never matched a room.
    old = {
        "room": {
            "rooms": ["general", "!a:x"],
            "not_rooms": ["nope"],
            "timeline": {"senders": ["bob", 5, "@bob:x"], "not_senders": ["@"]},
        }
    }
    filter_id = str(await store.store_filter("@a:x", json.dumps(old).encode()))
    with pytest.raises(MatrixError):
        await filters.create("@a:x", old)
    resolved = await filters.resolve("@a:x", filter_id)
    assert resolved.room.rooms == ("!a:x",)
    assert resolved.room.not_rooms == ()
    assert resolved.room.timeline.senders == ("@bob:x",)
    assert resolved.room.timeline.not_senders == ()
    assert resolved.room.includes_room("!a:x")
    assert not resolved.room.includes_room("!b:x")
    # What the user reads back is what they stored.
    assert await filters.get("@a:x", filter_id) == old
