"""A resident server on real HTTPS holding rooms of real signed events.

:class:`SignedRoom` builds a room event by event, each hashed and signed by
its sender's server with that server's key, choosing auth events by the
spec's selection from the state before it. :class:`Resident` is a server
on real HTTPS over loopback: the federation app with whatever routes a
test adds, its own storage, and the room's events written through core as
ingestion writes them. :class:`Peer` is another server's signed client.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ranvier.core import (
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
    run_auth_checks,
)
from ranvier.errors import InvalidSignatureError
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.server import FederationApp
from ranvier.protocol.auth import StateKey, auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.signing import SigningKey, VerifyKeyLike, generate_signing_key, key_id
from ranvier.storage import Storage

from ._servers import Pki, ZoneDns, serve

NOW_MS = 1_700_000_000_000
# Each room starts at a time of its own, so that rooms of the same creator
# and version have create events, and so room IDs, of their own.
_room_starts = itertools.count(NOW_MS, 1_000_000)


class Keys:
    """Servers' verify keys from a dict, each valid until a time: the key
    source for event signatures, and the key lookup for requests.
    """

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], tuple[VerifyKeyLike, int]] = {}
        self.asked: list[tuple[str, str, int | None]] = []

    def add(self, server_name: str, key: SigningKey, valid_until_ts: int = 2**53 - 1) -> None:
        self.keys[(server_name, key_id(key))] = (key.verify_key, valid_until_ts)

    async def get_verify_key(
        self, server_name: str, key_id: str, *, at_ts: int | None = None
    ) -> VerifyKeyLike:
        await trio.lowlevel.checkpoint()
        self.asked.append((server_name, key_id, at_ts))
        found = self.keys.get((server_name, key_id))
        if found is None:
            raise InvalidSignatureError(f"{server_name} has no key {key_id}")
        key, valid_until_ts = found
        if at_ts is not None and at_ts > valid_until_ts:
            raise InvalidSignatureError(f"key {key_id} of {server_name} expired")
        return key


class SignedRoom:
    """A room's events, signed by their senders' servers, and the state after each."""

    def __init__(
        self,
        signing_keys: Mapping[str, SigningKey],
        creator: str,
        room_version: str = "12",
        *,
        room_id: str | None = None,
    ) -> None:
        self.signing_keys = signing_keys
        self.version = room_version
        self.events: dict[str, Pdu] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.order: list[Pdu] = []
        self.ts = next(_room_starts)
        self._last: str | None = None
        content: dict[str, Any] = {"room_version": room_version}
        fields: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": creator}
        if room_version not in ("11", "12"):
            content["creator"] = creator
        if room_version != "12":
            fields["room_id"] = room_id or f"!room:{creator.partition(':')[2]}"
        self.create = self._add(fields | {"content": content}, prev=[], state={})
        self.room_id = self.create.room_id

    @property
    def last(self) -> str:
        assert self._last is not None
        return self._last

    @property
    def state(self) -> dict[StateKey, str]:
        """The state after the last event."""
        return self.state_after[self.last]

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        prev: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Pdu:
        prev = [self.last] if prev is None else list(prev)
        fields: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content or {}),
            "room_id": self.room_id,
            **(extra or {}),
        }
        if state_key is not None:
            fields["state_key"] = state_key
        return self._add(fields, prev=prev, state=self.state_after[prev[0]])

    def member(self, sender: str, membership: str, target: str | None = None, **kw: Any) -> Pdu:
        content = {"membership": membership, **kw.pop("content", {})}
        return self.send("m.room.member", sender, content, state_key=target or sender, **kw)

    def state_event(self, sender: str, event_type: str, content: Mapping[str, Any]) -> Pdu:
        return self.send(event_type, sender, content, state_key="")

    def message(self, sender: str, body: str = "hello", **kw: Any) -> Pdu:
        return self.send("m.room.message", sender, {"body": body}, **kw)

    def public(self, *, visibility: str = "shared") -> None:
        """The creator's join, power levels, public join rules and history visibility."""
        creator = self.create.sender
        self.member(creator, "join")
        users = {} if self.version == "12" else {creator: 100}
        self.state_event(creator, "m.room.power_levels", {"users": users})
        self.state_event(creator, "m.room.join_rules", {"join_rule": "public"})
        self.state_event(creator, "m.room.history_visibility", {"history_visibility": visibility})

    def _add(
        self, fields: dict[str, Any], *, prev: Sequence[str], state: Mapping[StateKey, str]
    ) -> Pdu:
        self.ts += 1
        depth = 1 + max((self.events[p].depth for p in prev), default=0)
        fields = fields | {"prev_events": list(prev), "depth": depth, "origin_server_ts": self.ts}
        draft = Pdu.from_json(
            fields | {"auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}},
            self.version,
        )
        auth = [state[key] for key in sorted(auth_types_for_event(draft)) if key in state]
        server = str(fields["sender"]).partition(":")[2]
        signed = hash_and_sign_event(
            fields | {"auth_events": auth}, self.version, server, self.signing_keys[server]
        )
        pdu = Pdu.from_json(signed, self.version)
        self.events[pdu.event_id] = pdu
        self.order.append(pdu)
        after = dict(state)
        if pdu.state_key is not None:
            after[(pdu.type, pdu.state_key)] = pdu.event_id
        self.state_after[pdu.event_id] = after
        self._last = pdu.event_id
        return pdu


async def ingest(storage: Storage, events: Sequence[Pdu]) -> None:
    """Write ``events`` through core, each checked as ingestion checks it."""
    for event in events:
        context = await compute_event_context(event, storage, storage)
        outcome = await run_auth_checks(event, context, storage)
        assert outcome.failure is None, (event, outcome.failure)
        current = await compute_current_state_after(event, outcome.context, storage, storage)
        await storage.persist_events(
            [event_to_persist(event, outcome.context)],
            current_state_groups=None if current is None else {event.room_id: current},
        )


@dataclass
class Resident:
    """A federation server on HTTPS: its name (``a.test:<port>``), app, storage and key."""

    server_name: str
    app: FederationApp
    storage: Storage
    signing_key: SigningKey
    keys: Keys


@dataclass
class Peer:
    """Another server: its name, key and a signed client for requests."""

    server_name: str
    signing_key: SigningKey
    client: FederationHttpClient
    extra: dict[str, Any] = field(default_factory=dict)


async def start_resident(
    nursery: trio.Nursery, tmp_path: Path, pki: Pki, keys: Keys, host: str = "a.test"
) -> Resident:
    """A server on loopback whose name is ``host:<port>``; add routes to its app."""
    storage = Storage(tmp_path / f"{host}.db", synchronous="NORMAL")
    await nursery.start(storage.run)
    app = FederationApp(server_name=host, key_lookup=keys)
    port = await serve(nursery, app, pki.server_context())
    server_name = f"{host}:{port}"
    app.server_name = server_name
    signing_key = generate_signing_key("a1")
    keys.add(server_name, signing_key)
    return Resident(server_name, app, storage, signing_key, keys)


async def open_peer(
    nursery: trio.Nursery, pki: Pki, zone: ZoneDns, keys: Keys, server_name: str
) -> Peer:
    """A server that only sends requests; its key is known to ``keys``."""
    signing_key = generate_signing_key("p1")
    keys.add(server_name, signing_key)
    client = FederationHttpClient(
        server_name, signing_key, ssl_context=pki.client_context(), dns=zone
    )
    await nursery.start(client.run)
    return Peer(server_name, signing_key, client)


def zone_for(*hosts: str) -> ZoneDns:
    zone = ZoneDns()
    for host in hosts:
        zone.addresses[host] = ["127.0.0.1"]
    return zone
