import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranvier.errors import UnsupportedRoomVersionError
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import KNOWN_ROOM_VERSIONS

DATA = Path(__file__).parent.parent / "data"
RULES = json.loads((DATA / "spec-vectors" / "redaction-rules.json").read_text("utf-8"))
DERIVED = json.loads(
    (DATA / "spec-vectors" / "derived" / "redaction-cases.json").read_text("utf-8")
)
PEER = json.loads((DATA / "peer-vectors" / "gomatrixserverlib-redaction.json").read_text("utf-8"))

ALGORITHM_OF = RULES["room_version_to_algorithm"]


def test_every_known_room_version_has_the_algorithm_of_the_rules_table() -> None:
    assert set(ALGORITHM_OF) == set(KNOWN_ROOM_VERSIONS)
    for identifier, rv in KNOWN_ROOM_VERSIONS.items():
        assert rv.redaction.value == ALGORITHM_OF[identifier]


@pytest.mark.parametrize("room_version", list(ALGORITHM_OF))
@pytest.mark.parametrize("case", DERIVED["cases"], ids=lambda c: c["name"])
def test_derived_cases(case: dict[str, Any], room_version: str) -> None:
    before = copy.deepcopy(case["input"])
    expected = case["expected_by_algorithm"][ALGORITHM_OF[room_version]]
    assert redact(case["input"], room_version) == expected
    assert case["input"] == before


@pytest.mark.parametrize("case", PEER["cases"], ids=lambda c: c["name"])
def test_gomatrixserverlib_cases(case: dict[str, Any]) -> None:
    assert redact(case["input"], case["room_version"]) == case["expected"]


def test_accepts_a_room_version_entry() -> None:
    event = {"type": "m.room.create", "content": {"room_version": "12", "x": 1}, "origin": "o"}
    assert redact(event, KNOWN_ROOM_VERSIONS["12"]) == {
        "type": "m.room.create",
        "content": event["content"],
    }


def test_unknown_room_version_is_refused() -> None:
    with pytest.raises(UnsupportedRoomVersionError):
        redact({"type": "m.room.message", "content": {}}, "13")


def test_content_that_is_not_an_object_becomes_empty() -> None:
    for room_version in ("1", "11"):
        assert redact({"type": "m.room.create", "content": ["x"]}, room_version) == {
            "type": "m.room.create",
            "content": {},
        }


def test_v11_third_party_invite_without_signed_leaves_an_empty_object() -> None:
    event = {
        "type": "m.room.member",
        "content": {"membership": "invite", "third_party_invite": {"display_name": "a"}},
    }
    assert redact(event, "11")["content"] == {"membership": "invite", "third_party_invite": {}}
    assert redact(event, "10")["content"] == {"membership": "invite"}


# --- properties, checked against the spec's rule table rather than our code ---


def _expected_redaction(event: dict[str, Any], algorithm: str) -> dict[str, Any]:
    rules = RULES["algorithms"][algorithm]
    out = {k: v for k, v in event.items() if k in rules["top_level_keep"]}
    content = event.get("content")
    content = content if isinstance(content, dict) else {}
    keep = rules["content_keep"].get(event.get("type"))
    if isinstance(keep, str):  # "ALL (entire content kept)"
        out["content"] = dict(content)
        return out
    kept = {}
    for key in keep or []:
        if key.startswith("third_party_invite.signed"):
            invite = content.get("third_party_invite")
            if isinstance(invite, dict):
                kept["third_party_invite"] = (
                    {"signed": invite["signed"]} if "signed" in invite else {}
                )
        elif key in content:
            kept[key] = content[key]
    out["content"] = kept
    return out


_ALL_TOP_LEVEL = sorted(
    {k for a in RULES["algorithms"].values() for k in a["top_level_keep"]} | {"unsigned", "redacts"}
)
_ALL_CONTENT_KEYS = sorted(
    {
        k.split(" ")[0].split(".")[0]
        for a in RULES["algorithms"].values()
        for keys in a["content_keep"].values()
        if isinstance(keys, list)
        for k in keys
    }
    | {"body", "redacts", "creator", "room_version"}
)
_EVENT_TYPES = sorted(
    {t for a in RULES["algorithms"].values() for t in a["content_keep"]}
    | {"m.room.message", "m.room.topic", "m.room.redaction"}
)

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=3,
)


@st.composite
def _some_of(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    """Each known name with even odds, plus a few unknown ones."""
    chosen = draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    out = {name: draw(_json_values) for name, keep in zip(names, chosen, strict=True) if keep}
    out.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), _json_values, max_size=2)))
    return out


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(_some_of(_ALL_TOP_LEVEL))
    event["type"] = draw(
        st.sampled_from(_EVENT_TYPES) if draw(st.integers(0, 5)) else st.text(max_size=8)
    )
    content = draw(_some_of(_ALL_CONTENT_KEYS))
    if draw(st.booleans()):
        content["third_party_invite"] = draw(_some_of(["signed", "display_name"]) | _json_values)
    event["content"] = content if draw(st.integers(0, 9)) else draw(_json_values)
    return event


# One room version per algorithm, so that each gets its share of examples.
ONE_PER_ALGORITHM = ["3", "6", "8", "10", "12"]


@pytest.mark.parametrize("room_version", ONE_PER_ALGORITHM)
@settings(max_examples=100)
@given(event=_events())
def test_redaction_keeps_exactly_what_the_rules_keep(
    event: dict[str, Any], room_version: str
) -> None:
    before = copy.deepcopy(event)
    redacted = redact(event, room_version)
    assert redacted == _expected_redaction(event, ALGORITHM_OF[room_version])
    assert event == before
    # The same fields under each type whose content the rules treat specially.
    for event_type in _EVENT_TYPES:
        retyped = event | {"type": event_type}
        assert redact(retyped, room_version) == _expected_redaction(
            retyped, ALGORITHM_OF[room_version]
        )


@pytest.mark.parametrize("room_version", ONE_PER_ALGORITHM)
@given(event=_events())
def test_redaction_is_idempotent(event: dict[str, Any], room_version: str) -> None:
    once = redact(event, room_version)
    assert redact(once, room_version) == once
