"""Rooms built event by event for the core tests, and the path an event takes
through core into real storage.

Events are real PDUs with real event IDs; their hashes and signatures are
placeholders, which nothing in core checks. :class:`Room` picks each
event's ``auth_events`` by the spec's auth events selection from the state
before it, which it tracks per event so that forks can be built.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ranvier.core import (
    AuthOutcome,
    EventContext,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
    run_auth_checks,
)
from ranvier.protocol.auth import StateKey, auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.storage import StateMap, Storage, StoredEvent

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:other.example"


def make_pdu(room_version: str, fields: Mapping[str, Any]) -> Pdu:
    event: dict[str, Any] = {
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": 1_000,
        "hashes": {"sha256": "unchecked"},
    }
    event.update(fields)
    domain = str(event["sender"]).partition(":")[2]
    event.setdefault("signatures", {domain: {"ed25519:1": "unchecked"}})
    return Pdu.from_json(event, room_version)


class Room:
    """A room's events and the state after each, as a server that accepts
    everything would see them.
    """

    def __init__(self, room_version: str = "10", creator: str = ALICE) -> None:
        self.version = room_version
        self.events: dict[str, Pdu] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.ts = 1_000
        self._last: str | None = None
        #: Whether to keep the state after each event (a copy per event).
        self.track_state = True
        content: dict[str, Any] = {"room_version": room_version}
        fields: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": creator}
        if room_version not in ("11", "12"):
            content["creator"] = creator
        if room_version != "12":
            fields["room_id"] = "!room:example.org"
        self.create = self._add(fields | {"content": content}, prev=[], state={})
        self.room_id = self.create.room_id

    @property
    def last(self) -> str:
        """The ID of the event sent last."""
        assert self._last is not None
        return self._last

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        prev: Sequence[str] | None = None,
        state: Mapping[StateKey, str] | None = None,
        auth: Sequence[str] | None = None,
    ) -> Pdu:
        """Add an event after ``prev`` (the last event sent, by default).

        ``state`` is the state before it for choosing its auth events; by
        default the state after its first prev event. ``auth`` overrides
        the choice.
        """
        prev = [self.last] if prev is None and self._last is not None else list(prev or [])
        if state is None:
            state = self.state_after[prev[0]] if prev else {}
        fields: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content or {}),
            "room_id": self.room_id,
        }
        if state_key is not None:
            fields["state_key"] = state_key
        return self._add(fields, prev=prev, state=state, auth=auth)

    def member(self, sender: str, membership: str, target: str | None = None, **kwargs: Any) -> Pdu:
        return self.send(
            "m.room.member",
            sender,
            {"membership": membership},
            state_key=target or sender,
            **kwargs,
        )

    def power_levels(self, sender: str, users: Mapping[str, int], **kwargs: Any) -> Pdu:
        if self.version == "12":
            # From v12 creators have unlimited power and may not be listed.
            users = {user: level for user, level in users.items() if user != self.create.sender}
        content = {"users": dict(users)}
        return self.send("m.room.power_levels", sender, content, state_key="", **kwargs)

    def join_rules(self, sender: str, rule: str, **kwargs: Any) -> Pdu:
        return self.send("m.room.join_rules", sender, {"join_rule": rule}, state_key="", **kwargs)

    def topic(self, sender: str, topic: str, **kwargs: Any) -> Pdu:
        return self.send("m.room.topic", sender, {"topic": topic}, state_key="", **kwargs)

    def message(self, sender: str, body: str = "hello", **kwargs: Any) -> Pdu:
        return self.send("m.room.message", sender, {"body": body}, **kwargs)

    def basic(self) -> None:
        """Alice's room: her join, power levels giving Bob 50, public join
        rules, and Bob and Carol joined.
        """
        creator = self.create.sender
        self.member(creator, "join")
        self.power_levels(creator, {creator: 100, BOB: 50})
        self.join_rules(creator, "public")
        self.member(BOB, "join")
        self.member(CAROL, "join")

    def _add(
        self,
        fields: dict[str, Any],
        *,
        prev: Sequence[str],
        state: Mapping[StateKey, str],
        auth: Sequence[str] | None = None,
    ) -> Pdu:
        self.ts += 1
        depth = 1 + max((self.events[p].depth for p in prev if p in self.events), default=0)
        fields = fields | {"prev_events": list(prev), "depth": depth, "origin_server_ts": self.ts}
        if auth is None:
            draft = make_pdu(self.version, fields)
            auth = [state[key] for key in sorted(auth_types_for_event(draft)) if key in state]
        pdu = make_pdu(self.version, fields | {"auth_events": list(auth)})
        self.events[pdu.event_id] = pdu
        if self.track_state:
            after = dict(state)
            if pdu.state_key is not None:
                after[(pdu.type, pdu.state_key)] = pdu.event_id
            self.state_after[pdu.event_id] = after
        self._last = pdu.event_id
        return pdu


async def ingest(
    storage: Storage,
    event: Pdu,
    *,
    outlier: bool = False,
    state_ids_before: Mapping[StateKey, str] | None = None,
    partial_state: bool = False,
) -> AuthOutcome:
    """Take ``event`` through core as federation ingestion does, and write it."""
    context = await compute_event_context(
        event,
        storage,
        storage,
        outlier=outlier,
        state_ids_before=state_ids_before,
        partial_state=partial_state,
    )
    outcome = await run_auth_checks(event, context, storage)
    current = await compute_current_state_after(event, outcome.context, storage, storage)
    await storage.persist_events(
        [event_to_persist(event, outcome.context)],
        current_state_groups=None if current is None else {event.room_id: current},
    )
    return outcome


async def ingest_all(storage: Storage, events: Sequence[Pdu]) -> list[EventContext]:
    contexts = []
    for event in events:
        outcome = await ingest(storage, event)
        assert outcome.failure is None, (event, outcome.failure)
        contexts.append(outcome.context)
    return contexts


def count_rows(db_path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(state groups, state group rows)`` in the database."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        groups = conn.execute("SELECT COUNT(*) FROM state_groups").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM state_group_rows").fetchone()[0]
    return int(groups), int(rows)


class CountingStorage(Storage):
    """Storage that counts what core reads from it, to show what core avoids."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.events_read = 0
        self.state_reads = 0
        self.current_state_reads = 0

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        self.events_read += len(set(event_ids))
        return await super().get_events(event_ids)

    async def get_state_ids(self, state_group: int) -> StateMap:
        self.state_reads += 1
        return await super().get_state_ids(state_group)

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        self.current_state_reads += 1
        return await super().get_current_state_ids(room_id)
