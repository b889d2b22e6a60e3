"""Reading a sliding sync request: both spellings of required_state and of
the filters, room configs combined, matched and keyed."""

from __future__ import annotations

import pytest

from ranvier.core.sliding_sync_config import (
    MAX_TIMELINE_LIMIT,
    RoomConfig,
    parse_request,
)
from ranvier.errors import MatrixError

ME = "@me:x"


def _one_list(**config: object) -> RoomConfig:
    request = parse_request({"lists": {"l": {"timeline_limit": 1, **config}}})
    (found,) = request.lists
    return found.room


def test_pairs_with_wildcards_me_and_lazy() -> None:
    config = _one_list(
        required_state=[["m.room.create", ""], ["m.room.member", "$ME"], ["*", "@b:x"]]
    )
    assert config.matches("m.room.create", "", ME)
    assert not config.matches("m.room.create", "other", ME)
    assert config.matches("m.room.member", ME, ME)
    assert not config.matches("m.room.member", "@c:x", ME)
    assert config.matches("anything", "@b:x", ME)
    # A type wildcard needs the whole state read.
    assert config.exact_keys(ME) is None
    exact = _one_list(required_state=[["m.room.name", ""], ["m.room.member", "$ME"]])
    assert exact.exact_keys(ME) == frozenset({("m.room.name", ""), ("m.room.member", ME)})
    lazy = _one_list(required_state=[["m.room.member", "$LAZY"]])
    assert lazy.lazy_members
    assert not lazy.all_members
    assert lazy.exact_keys(ME) == frozenset()
    assert _one_list(required_state=[["m.room.member", "*"]]).all_members


def test_the_object_form_with_exclude_and_lazy_members() -> None:
    config = _one_list(
        required_state={
            "include": [{}],
            "exclude": [{"type": "m.room.create", "state_key": ""}],
            "lazy_members": True,
        }
    )
    assert config.matches("m.room.topic", "", ME)
    assert not config.matches("m.room.create", "", ME)
    assert config.lazy_members
    assert config.all_members


def test_configs_combine_to_their_superset_and_key_by_content() -> None:
    small = RoomConfig(1, frozenset({("m.room.name", "")}))
    large = RoomConfig(20, frozenset({("m.room.member", "$LAZY")}))
    both = small.combined(large)
    assert both.timeline_limit == 20
    assert both.include == small.include | large.include
    assert both.key() == large.combined(small).key()
    assert both.key() != small.key()


def test_filters_ranges_and_limits() -> None:
    request = parse_request(
        {
            "conn_id": "main",
            "lists": {
                "b": {
                    "timeline_limit": 10_000,
                    "required_state": [],
                    "range": [0, 9],
                    "filters": {"is_invited": True, "room_types": [None, "m.space"]},
                },
                "a": {"timeline_limit": 1, "required_state": [], "ranges": [[0, 1], [5, 6]]},
            },
            "room_subscriptions": {"!r:x": {"timeline_limit": 3, "required_state": []}},
            "extensions": {
                "typing": {"enabled": True, "lists": ["a"]},
                "receipts": {"enabled": False},
                "unknown": {"enabled": True},
            },
            "pos": "7",
            "timeout": 500,
        }
    )
    first, second = request.lists
    assert (first.name, first.ranges) == ("a", ((0, 1), (5, 6)))
    assert (second.name, second.ranges) == ("b", ((0, 9),))
    assert second.room.timeline_limit == MAX_TIMELINE_LIMIT
    assert second.filters.is_invite is True
    assert second.filters.room_types == frozenset({None, "m.space"})
    assert request.subscriptions == {"!r:x": RoomConfig(3)}
    assert request.extensions is not None
    assert set(request.extensions) == {"typing"}
    assert request.extensions["typing"].lists == frozenset({"a"})
    assert (request.conn_id, request.pos, request.timeout_ms) == ("main", "7", 500)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"lists": {"l": {"timeline_limit": 1, "required_state": [], "ranges": [[-1, 3]]}}},
        {"lists": {"l": {"timeline_limit": 1, "required_state": [["a", "b", "c"]]}}},
        {"timeout": -5},
    ],
)
def test_bad_bodies(body: object) -> None:
    with pytest.raises(MatrixError) as raised:
        parse_request(body)
    assert raised.value.http_status == 400


def test_a_config_covers_smaller_ones_and_comes_back_from_its_key() -> None:
    large = RoomConfig(20, frozenset({("m.room.name", ""), ("m.room.member", "$LAZY")}))
    small = RoomConfig(1, frozenset({("m.room.name", "")}))
    assert large.covers(small)
    assert not small.covers(large)
    assert not large.covers(RoomConfig(21, large.include))
    assert not large.covers(RoomConfig(1, frozenset({("*", "*")})))
    assert RoomConfig.from_key(large.key()) == large
    assert RoomConfig.from_key("not a config") is None
