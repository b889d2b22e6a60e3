"""The order of a space's children, on the spec's own example, and which
``m.space.child`` events count as links."""

from __future__ import annotations

from typing import Any

from ranvier.core.hierarchy import ordered_children
from ranvier.storage.hierarchy_reads import SpaceChildEvent


def _child(room_id: str, ts: int, **content: Any) -> SpaceChildEvent:
    return SpaceChildEvent(room_id, {"via": ["example.org"], **content}, "@a:example.org", ts)


def test_the_spec_example_is_ordered_as_the_spec_says() -> None:
    children = [
        _child("!b:example.org", 1640341000000, order=" "),
        _child("!a:example.org", 1640141000000, order="aaaa"),
        _child("!c:example.org", 1640841000000, order="first"),
        _child("!e:example.org", 1640641000000),
        _child("!d:example.org", 1640741000000),
    ]
    ordered = ordered_children(children, suggested_only=False)
    assert [child.state_key for child in ordered] == [
        "!b:example.org",
        "!a:example.org",
        "!c:example.org",
        "!e:example.org",
        "!d:example.org",
    ]


def test_invalid_orders_count_as_none_and_ties_fall_to_timestamp_then_room_id() -> None:
    children = [
        _child("!long:x", 1, order="a" * 51),
        _child("!tab:x", 2, order="a\tb"),
        _child("!number:x", 3, order=5),
        _child("!empty:x", 0, order=""),
        _child("!z:x", 9, order="same"),
        _child("!y:x", 9, order="same"),
        _child("!w:x", 8, order="same"),
        _child("!fifty:x", 100, order="~" * 50),
    ]
    ordered = [child.state_key for child in ordered_children(children, suggested_only=False)]
    assert ordered == [
        "!w:x",
        "!y:x",
        "!z:x",
        "!fifty:x",
        "!empty:x",
        "!long:x",
        "!tab:x",
        "!number:x",
    ]


def test_only_links_with_a_via_count_and_suggested_only_keeps_suggested_ones() -> None:
    children = [
        SpaceChildEvent("!none:x", {}, "@a:x", 1),
        SpaceChildEvent("!empty:x", {"via": []}, "@a:x", 2),
        SpaceChildEvent("!text:x", {"via": "x"}, "@a:x", 3),
        SpaceChildEvent("!number:x", {"via": [5]}, "@a:x", 4),
        SpaceChildEvent("not-a-room", {"via": ["x"]}, "@a:x", 5),
        _child("!plain:x", 6),
        _child("!suggested:x", 7, suggested=True),
        _child("!truthy:x", 8, suggested="yes"),
    ]
    assert [c.state_key for c in ordered_children(children, suggested_only=False)] == [
        "!plain:x",
        "!suggested:x",
        "!truthy:x",
    ]
    assert [c.state_key for c in ordered_children(children, suggested_only=True)] == [
        "!suggested:x"
    ]
