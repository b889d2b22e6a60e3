"""Rooms built event by event in memory, for any supported room version.

Tests of the auth rules, state resolution, storage and federation all need
the same thing: real PDUs with real event IDs, each citing the auth events a
homeserver would choose for it, in rooms whose history may fork.
:class:`RoomBuilder` grows such a room. It keeps every event it built and
the state after each, so a test can fork the history (``prev=``), build an
event on a state of its choosing (``state=``), or hand one server part of
the room and another server all of it.

Events come in two kinds. Without ``keys`` their content hash and
signatures are placeholders: enough for code that never checks them (auth
rules, state resolution, storage), and cheap. With ``keys`` each event is
hashed and signed by its sender's server, as a real server would send it::

    from ranvier.protocol.signing import generate_signing_key
    from ranvier.testing import RoomBuilder

    keys = {"a.test": generate_signing_key("a1"), "b.test": generate_signing_key("b1")}
    room = RoomBuilder("12", "@alice:a.test", keys=keys)
    room.public_room("@bob:b.test")
    hello = room.message("@bob:b.test", "hello")
    assert room.state[("m.room.member", "@bob:b.test")] in hello.auth_event_ids

Each room starts at a time of its own, so two rooms built alike still have
events, and from room version 12 room IDs, of their own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypedDict, Unpack

from ranvier.protocol.auth import CREATE_KEY, StateKey, auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import RoomVersionLike, get_room_version
from ranvier.protocol.signing import SigningKeyLike

from .clocks import NOW_MS

__all__ = ["RoomBuilder", "SendOptions", "make_pdu", "server_of"]

_PLACEHOLDER = "placeholder"
# Room n starts n * _ROOM_SPAN ms after NOW_MS: far apart enough that the
# events of one room never take another's times.
_ROOM_SPAN = 1_000_000
_room_numbers = itertools.count(1)
_P = ParamSpec("_P")


def server_of(user_id: str) -> str:
    """The server name part of a user ID: whose key signs that user's events."""
    return user_id.partition(":")[2]


def make_pdu(room_version: RoomVersionLike, fields: Mapping[str, Any]) -> Pdu:
    """A PDU of ``room_version`` from ``fields``, with placeholders for what they lack.

    The event ID is real: it is the reference hash of what is given. The
    content hash and the signature (one, by the sender's server) are
    placeholders that nothing can verify.
    """
    event: dict[str, Any] = {
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": NOW_MS,
        "hashes": {"sha256": _PLACEHOLDER},
    }
    event.update(fields)
    if "signatures" not in event:
        event["signatures"] = {server_of(str(event["sender"])): {"ed25519:1": _PLACEHOLDER}}
    return Pdu.from_json(event, room_version)


def _drafted(
    build: Callable[Concatenate[RoomBuilder, _P], Pdu],
) -> Callable[Concatenate[RoomBuilder, _P], Pdu]:
    """``build``, making an event that is not applied and takes no time."""

    def draft(room: RoomBuilder, /, *args: _P.args, **kwargs: _P.kwargs) -> Pdu:
        ts = room.ts
        kwargs["apply"] = False
        try:
            return build(room, *args, **kwargs)
        finally:
            room.ts = ts

    return draft


class SendOptions(TypedDict, total=False):
    """How :meth:`RoomBuilder.send` and its shorthands place an event."""

    #: The prev events; by default the last event sent.
    prev: Sequence[str]
    #: The state before the event, which its auth events are chosen from and
    #: the state after it is built on; by default the state after its first
    #: prev event.
    state: Mapping[StateKey, str]
    #: The auth events, instead of the spec's selection from ``state``.
    auth: Sequence[str]
    #: The key to sign with, instead of the sender's server's key.
    key: SigningKeyLike
    #: More top-level fields, overriding what the builder would put there.
    extra: Mapping[str, Any]
    #: False builds and keeps the event without making it the last one, so
    #: the next event does not follow it.
    apply: bool


class RoomBuilder:
    """A room's events and the state after each, as a server that accepts
    everything would see them.

    ``keys`` maps server names to the signing keys of their users' events;
    without it, hashes and signatures are placeholders. ``room_id`` applies
    to room versions before 12 (from 12 the create event names the room);
    ``create_content`` adds to the create event's content.
    """

    def __init__(
        self,
        room_version: RoomVersionLike = "10",
        creator: str = "@alice:example.org",
        *,
        keys: Mapping[str, SigningKeyLike] | None = None,
        room_id: str | None = None,
        create_content: Mapping[str, Any] | None = None,
    ) -> None:
        number = next(_room_numbers)
        self.room_version = get_room_version(room_version)
        #: The room version's identifier.
        self.version = self.room_version.identifier
        #: Signing keys by server name; change it to let new servers sign.
        self.keys: dict[str, SigningKeyLike] = dict(keys or {})
        self._sign = keys is not None
        #: Every event built, drafts included, by ID, in the order built.
        self.events: dict[str, Pdu] = {}
        #: The state after each event, by event ID.
        self.state_after: dict[str, dict[StateKey, str]] = {}
        #: The events sent (not drafts), in order.
        self.order: list[Pdu] = []
        #: The timestamp of the event built last.
        self.ts = NOW_MS + number * _ROOM_SPAN
        #: Whether to keep the state after each event (a copy per event);
        #: a test building a large room may turn it off and pass ``state``.
        self.track_state = True
        #: The ID of the event the next one follows: the last one sent.
        self.last = ""
        self.room_id = ""
        content: dict[str, Any] = {"room_version": self.version}
        if not self.room_version.implicit_room_creator:
            content["creator"] = creator
        content.update(create_content or {})
        fields: dict[str, Any] = {
            "type": "m.room.create",
            "state_key": "",
            "sender": creator,
            "content": content,
        }
        if not self.room_version.room_id_from_create_event:
            fields["room_id"] = room_id or f"!room{number}:{server_of(creator)}"
        self.create = self.send_fields(fields, prev=[])
        self.room_id = self.create.room_id

    @property
    def state(self) -> dict[StateKey, str]:
        """The state after the last event sent."""
        return self.state_after[self.last]

    def state_events(self) -> dict[StateKey, Pdu]:
        """The state after the last event sent, as events."""
        return {key: self.events[event_id] for key, event_id in self.state.items()}

    def state_before(self, event_id: str) -> dict[StateKey, str]:
        """The state before an event: the state after its first prev event."""
        prev = self.events[event_id].prev_event_ids
        return dict(self.state_after[prev[0]]) if prev else {}

    def with_create(self) -> dict[StateKey, Pdu]:
        """A state of the create event alone."""
        return {CREATE_KEY: self.create}

    def send_fields(self, fields: Mapping[str, Any], **options: Unpack[SendOptions]) -> Pdu:
        """An event from top-level ``fields``; what they lack is filled in.

        The room ID, prev events (after the last event), depth, timestamp
        and auth events (the spec's selection from the state before it)
        are added unless ``fields`` has them; ``options`` say otherwise.
        """
        event = {**fields, **options.get("extra", {})}
        prev = options.get("prev")
        state = options.get("state")
        auth = options.get("auth")
        if prev is None:
            prev = event.get("prev_events", [self.last])
        prev = list(prev)
        if state is None:
            state = self.state_after[prev[0]] if prev else {}
        if self.room_id:
            event.setdefault("room_id", self.room_id)
        self.ts += 1
        event.setdefault("origin_server_ts", self.ts)
        known_depths = (self.events[p].depth for p in prev if p in self.events)
        event.setdefault("depth", 1 + max(known_depths, default=0))
        event.setdefault("content", {})
        event["prev_events"] = prev
        if auth is None:
            auth = event.get("auth_events")
        if auth is None:
            # Which auth events an event cites depends on its own fields.
            draft = make_pdu(self.room_version, event)
            auth = [state[k] for k in sorted(auth_types_for_event(draft)) if k in state]
        event["auth_events"] = list(auth)
        pdu = self._finish(event, options.get("key"))
        self.events[pdu.event_id] = pdu
        if self.track_state:
            after = dict(state)
            if pdu.state_key is not None:
                after[(pdu.type, pdu.state_key)] = pdu.event_id
            self.state_after[pdu.event_id] = after
        if options.get("apply", True):
            self.last = pdu.event_id
            self.order.append(pdu)
        return pdu

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        **options: Unpack[SendOptions],
    ) -> Pdu:
        """Add an event of ``event_type`` by ``sender``, after the last one."""
        fields: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content or {}),
        }
        if state_key is not None:
            fields["state_key"] = state_key
        return self.send_fields(fields, **options)

    def member(
        self,
        sender: str,
        membership: str,
        target: str | None = None,
        *,
        content: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Pdu:
        """``sender`` sets ``target``'s (by default their own) membership."""
        body = {"membership": membership, **(content or {})}
        return self.send("m.room.member", sender, body, state_key=target or sender, **options)

    #: :meth:`send`, keeping the event in ``events`` but leaving the room
    #: as it was: the next event is built as if it never was.
    draft = _drafted(send)
    #: :meth:`member` as a :meth:`draft`.
    draft_member = _drafted(member)

    def message(self, sender: str, body: str = "hello", **options: Unpack[SendOptions]) -> Pdu:
        return self.send("m.room.message", sender, {"body": body}, **options)

    def state_event(
        self,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str = "",
        **options: Unpack[SendOptions],
    ) -> Pdu:
        return self.send(event_type, sender, content, state_key=state_key, **options)

    def topic(self, sender: str, topic: str, **options: Unpack[SendOptions]) -> Pdu:
        return self.state_event(sender, "m.room.topic", {"topic": topic}, **options)

    def join_rules(
        self,
        sender: str,
        rule: str,
        *,
        content: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Pdu:
        body = {"join_rule": rule, **(content or {})}
        return self.state_event(sender, "m.room.join_rules", body, **options)

    def power_levels(
        self,
        sender: str,
        users: Mapping[str, int] | None = None,
        *,
        content: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Pdu:
        """Power levels of ``content``, with ``users`` as its ``users``.

        From room version 12 the room's creators have unlimited power and
        may not be listed, so they are left out of ``users``; ``content``
        is taken as it is.
        """
        body = dict(content or {})
        if users is not None:
            if self.room_version.privileged_creators:
                creators = {self.create.sender, *self.create.content.get("additional_creators", [])}
                users = {user: level for user, level in users.items() if user not in creators}
            body["users"] = dict(users)
        return self.state_event(sender, "m.room.power_levels", body, **options)

    def public_room(
        self,
        *joiners: str,
        users: Mapping[str, int] | None = None,
        history_visibility: str | None = None,
    ) -> None:
        """Make the room public: the creator's join, power levels (the
        creator at 100, and ``users``), public join rules, the history
        visibility if given, then each of ``joiners`` joins.
        """
        creator = self.create.sender
        self.member(creator, "join")
        self.power_levels(creator, {creator: 100, **(users or {})})
        self.join_rules(creator, "public")
        if history_visibility is not None:
            visibility = {"history_visibility": history_visibility}
            self.state_event(creator, "m.room.history_visibility", visibility)
        for user in joiners:
            self.member(user, "join")

    def signed(
        self, fields: Mapping[str, Any], key: SigningKeyLike | None = None
    ) -> dict[str, Any]:
        """``fields`` hashed and signed by its sender's server (or with ``key``)."""
        server = server_of(str(fields["sender"]))
        return hash_and_sign_event(fields, self.room_version, server, key or self._key_of(server))

    def _key_of(self, server: str) -> SigningKeyLike:
        key = self.keys.get(server)
        if key is None:
            raise KeyError(f"the room has no signing key for {server}")
        return key

    def _finish(self, event: dict[str, Any], key: SigningKeyLike | None) -> Pdu:
        if self._sign or key is not None:
            return Pdu.from_json(self.signed(event, key), self.room_version)
        return make_pdu(self.room_version, event)
