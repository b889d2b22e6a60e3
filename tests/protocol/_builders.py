"""Users for the auth-rule and state-resolution tests, and peer fixtures
rebuilt with real event IDs.

Rooms come from :class:`ranvier.testing.RoomBuilder`, without keys: real
event IDs, placeholder hashes and signatures, which the auth rules and
state resolution never verify.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import get_room_version
from ranvier.testing import make_pdu

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:example.org"
EVE = "@eve:other.example"


# The URL-safe base64 alphabet in ASCII order: event IDs compare as strings.
_ID_CHARS = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"


def rebuild_fixture_events(
    fixture: Iterable[Mapping[str, Any]], room_version: str
) -> tuple[dict[str, Pdu], dict[str, str], set[str]]:
    """Turn peer fixtures with made-up event IDs into PDUs with real ones.

    Fixtures from other implementations name events freely
    (``$00-m-room-create``); ranvier's PDUs get their IDs from their
    reference hashes. Each event is rebuilt with the real IDs of the events
    it cites (and, from v12, the real room ID), in an order where those come
    first. State resolution breaks ties on event IDs, so the real IDs must
    sort as the made-up ones do: the placeholder content hash, which the
    reference hash covers and nothing checks, is varied until each event's
    ID starts with a character that keeps that order.

    Returns the PDUs by real ID, the map from made-up to real IDs, and the
    real IDs of the events the fixture marks ``rejected``.
    """
    rv = get_room_version(room_version)
    by_id = {str(event["event_id"]): dict(event) for event in fixture}
    ranked = sorted(by_id)
    first_char = {
        event_id: _ID_CHARS[rank * len(_ID_CHARS) // len(ranked)]
        for rank, event_id in enumerate(ranked)
    }
    real: dict[str, str] = {}
    events: dict[str, Pdu] = {}
    rejected: set[str] = set()
    room_id: str | None = None
    remaining = list(by_id)
    while remaining:
        progressed = False
        for fake_id in list(remaining):
            source = by_id[fake_id]
            cited = [*source.get("auth_events", []), *source.get("prev_events", [])]
            if any(c not in real for c in cited):
                continue
            fields = {
                key: value
                for key, value in source.items()
                if key not in ("event_id", "rejected", "test-comments")
            }
            fields["auth_events"] = [real[c] for c in source.get("auth_events", [])]
            fields["prev_events"] = [real[c] for c in source.get("prev_events", [])]
            fields.setdefault("depth", len(real) + 1)
            if rv.room_id_from_create_event and fields["type"] != "m.room.create":
                assert room_id is not None, "the create event must come first"
                fields["room_id"] = room_id
            for nonce in range(100_000):
                fields["hashes"] = {"sha256": f"placeholder{nonce}"}
                pdu = make_pdu(rv.identifier, fields)
                if pdu.event_id[1] == first_char[fake_id]:
                    break
            else:  # pragma: no cover - 64 tries are expected
                raise AssertionError(f"no event ID found for {fake_id}")
            if pdu.type == "m.room.create":
                room_id = pdu.room_id
            real[fake_id] = pdu.event_id
            events[pdu.event_id] = pdu
            if source.get("rejected"):
                rejected.add(pdu.event_id)
            remaining.remove(fake_id)
            progressed = True
        assert progressed, f"fixture events cite unknown events: {remaining}"
    return events, real, rejected
