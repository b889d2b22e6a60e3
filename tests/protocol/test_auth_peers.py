"""gomatrixserverlib's event-auth suites (Apache-2.0), run against ranvier's auth rules.

Each suite gives the state an event is checked against, events that must be
allowed and events that must be rejected. The suites' events are minimal:
no hashes, signatures or depth, made-up event IDs, and state events of the
given state sometimes without their empty ``state_key``. They are completed
here with placeholders, which the auth rules never look at.

The room version 10 suites run as they are. The others were written for
room version 1, which ranvier refuses (M_UNSUPPORTED_ROOM_VERSION), so they
cannot run as written; those whose rules did not change between versions 1
and 10 run as version 10 rooms, with their version-1 ``prev_events`` pairs
turned into plain IDs. ``TestRedactAllowed`` does not: it tests the
redaction rule that versions 1 and 2 had and version 3 removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ranvier.errors import AuthError, BadJsonError
from ranvier.protocol.auth import StateKey, check_auth_rules
from ranvier.protocol.events import Pdu
from ranvier.testing import make_pdu

SUITES = json.loads(
    (
        Path(__file__).parent.parent
        / "data"
        / "peer-vectors"
        / "gomatrixserverlib-event-auth-cases.json"
    ).read_text("utf-8")
)["suites"]

# Suites for room version 1 whose rules changed by version 10.
NOT_RUN_AS_V10 = {"TestRedactAllowed": "the v1/v2 redaction auth rule, removed in v3"}

# Where gomatrixserverlib is stricter than the spec, ranvier follows the spec
# (as Synapse and ruma do) and the case must come out allowed.
SPEC_ALLOWS = {
    # "If the only previous event is an m.room.create and the state_key is
    # the creator, allow": the rule does not look at the sender.
    ("TestAllowedFirstJoin", "The sender doesn't match the joining user"),
}


def _suites() -> list[Any]:
    return [
        pytest.param(suite, id=f"{suite['test']}-v{suite['room_version']}")
        for suite in SUITES
        if suite["test"] not in NOT_RUN_AS_V10
    ]


def _as_v10(event: dict[str, Any], create_id: str | None) -> dict[str, Any]:
    fields = {k: v for k, v in event.items() if k not in ("event_id", "unsigned")}
    prev = []
    for entry in fields.get("prev_events", []):
        prev_id = entry[0] if isinstance(entry, list) else entry
        # The suites name the create event "$e1:a"; its real ID is a hash.
        prev.append(create_id if prev_id == "$e1:a" and create_id else prev_id)
    fields["prev_events"] = prev
    return fields


def _state(suite: dict[str, Any]) -> dict[StateKey, Pdu]:
    given = suite["auth_events"]
    events: list[dict[str, Any]] = [
        given[name] for name in ("create", "join_rules", "power_levels") if name in given
    ]
    events += given.get("member", {}).values()
    events += given.get("third_party_invite", {}).values()
    state: dict[StateKey, Pdu] = {}
    for event in events:
        # Some suites leave out the empty state key of these state events.
        pdu = make_pdu("10", {"state_key": ""} | _as_v10(event, None))
        assert pdu.state_key is not None
        state[(pdu.type, pdu.state_key)] = pdu
    return state


@pytest.mark.parametrize("suite", _suites())
def test_gomatrixserverlib_auth_suite(suite: dict[str, Any]) -> None:
    state = _state(suite)
    create = state.get(("m.room.create", ""))
    create_id = create.event_id if create is not None else None
    for event in suite["allowed"]:
        check_auth_rules(make_pdu("10", _as_v10(event, create_id)), state)
    for event in suite["not_allowed"]:
        reason = event["unsigned"]["not_allowed"]
        if (suite["test"], reason) in SPEC_ALLOWS:
            check_auth_rules(make_pdu("10", _as_v10(event, create_id)), state)
            continue
        assert _refusal(_as_v10(event, create_id), state) is not None, reason


def _refusal(fields: dict[str, Any], state: dict[StateKey, Pdu]) -> Exception | None:
    """Why ranvier refuses the event, or None if it allows it.

    Events gomatrixserverlib cannot parse count as not allowed there;
    ranvier refuses them as PDUs, before the auth rules.
    """
    try:
        check_auth_rules(make_pdu("10", fields), state)
    except (AuthError, BadJsonError) as exc:
        return exc
    return None
