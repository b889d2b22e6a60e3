import json
from pathlib import Path

import pytest

from ranvier.errors import UnsupportedRoomVersionError
from ranvier.protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    SUPPORTED_ROOM_VERSIONS,
    EventIdFormat,
    RedactionAlgorithm,
    StateResAlgorithm,
    get_room_version,
)

SPEC = Path(__file__).parent.parent / "data" / "spec-vectors"


def test_known_and_supported_versions():
    assert list(KNOWN_ROOM_VERSIONS) == [str(n) for n in range(1, 13)]
    assert list(SUPPORTED_ROOM_VERSIONS) == [str(n) for n in range(6, 13)]
    assert DEFAULT_ROOM_VERSION.identifier == "12"


@pytest.mark.parametrize("identifier", [str(n) for n in range(1, 6)])
def test_old_versions_are_recognised_and_refused(identifier):
    with pytest.raises(UnsupportedRoomVersionError) as info:
        get_room_version(identifier)
    assert info.value.errcode == "M_UNSUPPORTED_ROOM_VERSION"
    assert "not supported" in info.value.message
    # Pure computations may still look them up.
    assert get_room_version(identifier, unsupported_ok=True) is KNOWN_ROOM_VERSIONS[identifier]


@pytest.mark.parametrize("identifier", ["13", "", "org.example.custom", "6 "])
def test_unknown_versions_are_refused(identifier):
    with pytest.raises(UnsupportedRoomVersionError, match="unknown room version"):
        get_room_version(identifier, unsupported_ok=True)


def test_entry_or_identifier():
    rv = SUPPORTED_ROOM_VERSIONS["10"]
    assert get_room_version(rv) is rv
    assert get_room_version("10") is rv
    with pytest.raises(UnsupportedRoomVersionError):
        get_room_version(KNOWN_ROOM_VERSIONS["5"])


def test_redaction_algorithm_matches_the_spec_table():
    table = json.loads((SPEC / "redaction-rules.json").read_text())["room_version_to_algorithm"]
    for identifier, algorithm in table.items():
        assert KNOWN_ROOM_VERSIONS[identifier].redaction is RedactionAlgorithm(algorithm)


def _first_version_with(flag: str) -> str | None:
    for identifier, rv in KNOWN_ROOM_VERSIONS.items():
        if getattr(rv, flag):
            return identifier
    return None


@pytest.mark.parametrize(
    ("flag", "first"),
    [
        ("enforce_key_validity", "5"),
        ("strict_canonical_json", "6"),
        ("limit_notifications_power_levels", "6"),
        ("knock_join_rule", "7"),
        ("restricted_join_rule", "8"),
        ("knock_restricted_join_rule", "10"),
        ("integer_power_levels", "10"),
        ("implicit_room_creator", "11"),
        ("redacts_in_content", "11"),
        ("privileged_creators", "12"),
        ("room_id_from_create_event", "12"),
    ],
)
def test_each_rule_starts_at_its_version_and_stays(flag, first):
    """A rule introduced by a version holds for every later version."""
    assert _first_version_with(flag) == first
    for identifier, rv in KNOWN_ROOM_VERSIONS.items():
        assert getattr(rv, flag) is (int(identifier) >= int(first)), identifier


def test_aliases_special_case_ends_at_v6():
    for identifier, rv in KNOWN_ROOM_VERSIONS.items():
        assert rv.special_case_aliases_auth is (int(identifier) <= 5)


def test_event_id_formats_and_state_res():
    formats = {k: rv.event_id_format for k, rv in KNOWN_ROOM_VERSIONS.items()}
    assert formats["1"] is formats["2"] is EventIdFormat.V1
    assert formats["3"] is EventIdFormat.V3
    assert all(formats[str(n)] is EventIdFormat.V4 for n in range(4, 13))
    algorithms = {k: rv.state_res for k, rv in KNOWN_ROOM_VERSIONS.items()}
    assert algorithms["1"] is StateResAlgorithm.V1
    assert all(algorithms[str(n)] is StateResAlgorithm.V2 for n in range(2, 12))
    assert algorithms["12"] is StateResAlgorithm.V2_1


def test_v12_create_event_is_not_an_auth_event():
    assert not SUPPORTED_ROOM_VERSIONS["12"].create_event_in_auth_events
    assert SUPPORTED_ROOM_VERSIONS["11"].create_event_in_auth_events
