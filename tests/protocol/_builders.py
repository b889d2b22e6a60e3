"""Rooms and events for the auth-rule and state-resolution tests.

Events are real :class:`~ranvier.protocol.events.Pdu` objects with real
event IDs; only their hashes and signatures are placeholders, which the
auth rules and state resolution never verify. :class:`RoomBuilder` grows a
room one event at a time, choosing each event's ``auth_events`` by the spec's
auth events selection from the state so far, as a homeserver would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ranvier.protocol.auth import CREATE_KEY, StateKey, auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import get_room_version

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:example.org"
EVE = "@eve:other.example"

_NO_ROOM = object()


def make_pdu(room_version: str, fields: Mapping[str, Any]) -> Pdu:
    """A PDU of ``room_version`` from ``fields``, placeholders for what is missing."""
    event: dict[str, Any] = {
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": 1_000,
        "hashes": {"sha256": "placeholder"},
    }
    event.update(fields)
    if "signatures" not in event:
        domain = str(event["sender"]).partition(":")[2]
        event["signatures"] = {domain: {"ed25519:1": "placeholder"}}
    return Pdu.from_json(event, room_version)


class RoomBuilder:
    """A room's events and the state after the last one, built in order.

    ``send`` does not apply the auth rules: tests decide what to do with the
    event. It does advance the state, unless ``apply=False``.
    """

    def __init__(
        self,
        room_version: str = "10",
        creator: str = ALICE,
        *,
        create_content: Mapping[str, Any] | None = None,
        room_id: str = "!room:example.org",
    ) -> None:
        self.room_version = get_room_version(room_version)
        self.events: dict[str, Pdu] = {}
        self.state: dict[StateKey, str] = {}
        self.ts = 1_000
        self.depth = 0
        self.last: str | None = None
        content: dict[str, Any] = {"room_version": room_version}
        if not self.room_version.implicit_room_creator:
            content["creator"] = creator
        content.update(create_content or {})
        fields: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": creator}
        if not self.room_version.room_id_from_create_event:
            fields["room_id"] = room_id
        self.create = self.send_fields(fields | {"content": content})
        self.room_id = self.create.room_id

    def send_fields(
        self,
        fields: Mapping[str, Any],
        *,
        auth_events: Iterable[str] | None = None,
        prev_events: Iterable[str] | None = None,
        apply: bool = True,
    ) -> Pdu:
        self.ts += 1
        self.depth += 1
        event: dict[str, Any] = {"origin_server_ts": self.ts, "depth": self.depth}
        if self.last is not None:
            event["room_id"] = self.room_id
            event["prev_events"] = [self.last]
        event.update(fields)
        if prev_events is not None:
            event["prev_events"] = list(prev_events)
        if auth_events is None and self.last is not None:
            # Select the auth events from a draft: which ones depends on the
            # event's own fields.
            draft = make_pdu(self.room_version.identifier, event)
            auth_events = [
                self.state[key] for key in sorted(auth_types_for_event(draft)) if key in self.state
            ]
        event["auth_events"] = list(auth_events or [])
        pdu = make_pdu(self.room_version.identifier, event)
        self.events[pdu.event_id] = pdu
        if apply:
            self.last = pdu.event_id
            if pdu.state_key is not None:
                self.state[(pdu.type, pdu.state_key)] = pdu.event_id
        return pdu

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        apply: bool = True,
        **extra: Any,
    ) -> Pdu:
        fields: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content or {}),
        }
        if state_key is not None:
            fields["state_key"] = state_key
        options = {key: extra.pop(key) for key in ("auth_events", "prev_events") if key in extra}
        fields.update(extra)
        return self.send_fields(fields, apply=apply, **options)

    def member(
        self, sender: str, membership: str, target: str | None = None, **content: Any
    ) -> Pdu:
        return self.send(
            "m.room.member",
            sender,
            {"membership": membership, **content},
            state_key=target or sender,
        )

    def power_levels(self, sender: str, content: Mapping[str, Any]) -> Pdu:
        return self.send("m.room.power_levels", sender, content, state_key="")

    def join_rules(self, sender: str, join_rule: str, **content: Any) -> Pdu:
        return self.send(
            "m.room.join_rules", sender, {"join_rule": join_rule, **content}, state_key=""
        )

    def draft(
        self, event_type: str, sender: str, content: Mapping[str, Any] | None = None, **extra: Any
    ) -> Pdu:
        """An event as ``send`` would build it, leaving the room unchanged."""
        saved = (self.ts, self.depth)
        pdu = self.send(event_type, sender, content, apply=False, **extra)
        self.ts, self.depth = saved
        return pdu

    def draft_member(
        self, sender: str, membership: str, target: str | None = None, **content: Any
    ) -> Pdu:
        return self.draft(
            "m.room.member",
            sender,
            {"membership": membership, **content},
            state_key=target or sender,
        )

    def state_events(self) -> dict[StateKey, Pdu]:
        """The current state as events: what :func:`check_auth_rules` takes."""
        return {key: self.events[event_id] for key, event_id in self.state.items()}

    def with_create(self) -> dict[StateKey, Pdu]:
        return {CREATE_KEY: self.create}


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
