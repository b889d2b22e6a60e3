"""Rooms whose events are hashed and signed as their senders' servers would,
for the tests of incoming federation.

:class:`SignedRoom` keeps every event it built and the state after each, so
a test can hand one server part of the room and another server all of it.
Each event's ``auth_events`` follow the spec's auth events selection from
the state before it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from ranvier.core import compute_current_state_after, compute_event_context, run_auth_checks
from ranvier.core.context import event_to_persist
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.protocol.auth import StateKey, auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.signing import SigningKey
from ranvier.storage import Storage

_room_numbers = itertools.count(1)


def domain(user_id: str) -> str:
    return user_id.partition(":")[2]


class SignedRoom:
    """A room built event by event; ``keys`` signs for each sender's server."""

    def __init__(
        self, keys: Mapping[str, SigningKey], creator: str, *, version: str = "10"
    ) -> None:
        self.keys = dict(keys)
        self.version = version
        self.events: dict[str, Pdu] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.order: list[str] = []
        self.ts = wall_clock_ms()
        content: dict[str, Any] = {"room_version": version}
        fields: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": creator}
        if version not in ("11", "12"):
            content["creator"] = creator
        if version != "12":
            fields["room_id"] = f"!room{next(_room_numbers)}:{domain(creator)}"
        self.create = self._add(fields | {"content": content}, prev=[], state={})
        self.room_id = self.create.room_id

    @property
    def last(self) -> str:
        return self.order[-1]

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        prev: Sequence[str] | None = None,
        auth: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> Pdu:
        """Add an event after ``prev`` (the last event by default), signed
        with ``key`` if given, else its sender's server's key.
        """
        prev = [self.last] if prev is None else list(prev)
        state = self.state_after[prev[0]] if prev else {}
        fields: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content or {}),
            "room_id": self.room_id,
            **(extra or {}),
        }
        if state_key is not None:
            fields["state_key"] = state_key
        return self._add(fields, prev=prev, state=state, auth=auth, key=key)

    def member(self, sender: str, membership: str, target: str | None = None, **kw: Any) -> Pdu:
        content = {"membership": membership}
        return self.send("m.room.member", sender, content, state_key=target or sender, **kw)

    def message(self, sender: str, body: str = "hello", **kw: Any) -> Pdu:
        return self.send("m.room.message", sender, {"msgtype": "m.text", "body": body}, **kw)

    def topic(self, sender: str, topic: str, **kw: Any) -> Pdu:
        return self.send("m.room.topic", sender, {"topic": topic}, state_key="", **kw)

    def power_levels(self, sender: str, users: Mapping[str, int], **kw: Any) -> Pdu:
        if self.version == "12":
            users = {user: level for user, level in users.items() if user != self.create.sender}
        return self.send("m.room.power_levels", sender, {"users": dict(users)}, state_key="", **kw)

    def join_rules(self, sender: str, rule: str, **kw: Any) -> Pdu:
        return self.send("m.room.join_rules", sender, {"join_rule": rule}, state_key="", **kw)

    def public_room(self, *joiners: str) -> None:
        """The creator joined, power levels, public join rules, ``joiners`` joined."""
        creator = self.create.sender
        self.member(creator, "join")
        self.power_levels(creator, {creator: 100})
        self.join_rules(creator, "public")
        for user in joiners:
            self.member(user, "join")

    def signed(self, fields: Mapping[str, Any], key: SigningKey | None = None) -> dict[str, Any]:
        """``fields`` hashed and signed for its sender's server."""
        server = domain(str(fields["sender"]))
        return hash_and_sign_event(fields, self.version, server, key or self.keys[server])

    def state_before(self, event_id: str) -> dict[StateKey, str]:
        """The state before an event: the state after its first prev event."""
        prev = self.events[event_id].prev_event_ids
        return dict(self.state_after[prev[0]]) if prev else {}

    def _add(
        self,
        fields: dict[str, Any],
        *,
        prev: Sequence[str],
        state: Mapping[StateKey, str],
        auth: Sequence[str] | None = None,
        key: SigningKey | None = None,
    ) -> Pdu:
        self.ts += 1
        depth = 1 + max((self.events[p].depth for p in prev if p in self.events), default=0)
        fields = fields | {"prev_events": list(prev), "depth": depth, "origin_server_ts": self.ts}
        if auth is None:
            draft = Pdu.from_json(
                fields | {"auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}},
                self.version,
            )
            auth = [state[k] for k in sorted(auth_types_for_event(draft)) if k in state]
        pdu = Pdu.from_json(self.signed(fields | {"auth_events": list(auth)}, key), self.version)
        self.events[pdu.event_id] = pdu
        after = dict(state)
        if pdu.state_key is not None:
            after[(pdu.type, pdu.state_key)] = pdu.event_id
        self.state_after[pdu.event_id] = after
        self.order.append(pdu.event_id)
        return pdu


async def persist_directly(storage: Storage, events: Sequence[Pdu]) -> None:
    """Write events as local creation would: context, auth checks, write.

    For setting up the part of a room that a test's server already has.
    """
    for event in events:
        context = await compute_event_context(event, storage, storage)
        outcome = await run_auth_checks(event, context, storage)
        assert outcome.failure is None, (event, outcome.failure)
        current = await compute_current_state_after(event, outcome.context, storage, storage)
        await storage.persist_events(
            [event_to_persist(event, outcome.context)],
            current_state_groups=None if current is None else {event.room_id: current},
        )
