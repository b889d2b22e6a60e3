"""Completing a partial-state room when one server's ``/state_ids``,
``/state`` or ``/event`` answer is hostile: each variant of
:func:`ranvier.testing.hostile.variants` of its real answer, read by the
real :class:`~ranvier.federation.client.FederationEventFetcher`.

The resync completes from the other server, as it does for any failure;
no event is written other than as its sender signed it (or redacted, for
one whose content does not match its hash); and nothing is
logged at ERROR.
"""

from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import trio
from test_unpartial import REMOTE, StandIn, make_world, open_storage, running
from trio.testing import MockClock

from ranvier.federation.client import FederationEventFetcher
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.redaction import redact
from ranvier.storage import Storage
from ranvier.testing.hostile import variant, variants


@dataclass
class _Answer:
    body: bytes


class HostileWire:
    """What the fetcher's HTTP client would read from ``server``: its real
    answer as JSON, or the variant ``name`` of it for requests to ``read``.
    """

    def __init__(self, server: StandIn) -> None:
        self.server = server
        self.read: str | None = None
        self.name: str | None = None

    async def _real(self, path: str, query: Mapping[str, str] | None) -> tuple[str, Any]:
        server, room_id = self.server, self.server.room.room_id
        kind, _, tail = path.removeprefix("/_matrix/federation/v1/").partition("/")
        if kind == "state_ids":
            assert query is not None
            ids = await server.get_state_ids(server.name, room_id, query["event_id"])
            return kind, {"pdu_ids": list(ids.pdu_ids), "auth_chain_ids": list(ids.auth_chain_ids)}
        if kind == "state":
            assert query is not None
            state = await server.get_state(server.name, room_id, query["event_id"])
            return kind, {
                "pdus": [msgspec.json.decode(bytes(e)) for e in state.pdus],
                "auth_chain": [msgspec.json.decode(bytes(e)) for e in state.auth_chain],
            }
        assert kind == "event", path
        raw = await server.get_event(server.name, urllib.parse.unquote(tail))
        return kind, {
            "origin": server.name,
            "origin_server_ts": 1,
            "pdus": [msgspec.json.decode(raw)],
        }

    async def _body(self, path: str, query: Mapping[str, str] | None) -> bytes:
        kind, real = await self._real(path, query)
        if kind == self.read and self.name is not None:
            return variant(real, self.name)
        return msgspec.json.encode(real)

    async def request(
        self, method: str, destination: str, path: str, *, content: Any, query: Any
    ) -> _Answer:
        return _Answer(await self._body(path, query))

    async def request_into_buffer(
        self, method: str, destination: str, path: str, *, content: Any, query: Any
    ) -> bytearray:
        return bytearray(await self._body(path, query))


@pytest.fixture
async def resident(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    storage = Storage(tmp_path / "resident.db", synchronous="OFF")
    await nursery.start(storage.run)
    return storage


def _stored(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT event_id, json FROM events").fetchall())


@pytest.mark.parametrize("read", ["state_ids", "state", "event"])
async def test_a_hostile_resync_answer_hands_over_to_the_next_server(
    tmp_path: Path,
    resident: Storage,
    read: str,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_storage(tmp_path / "first.db") as first:
        world = await make_world(first, resident)
    wire = HostileWire(world.servers[REMOTE])
    world.federation.servers[REMOTE] = cast(
        StandIn, FederationEventFetcher(cast(FederationHttpClient, wire))
    )
    wire.read = read
    # An event whose content does not match its hash is kept redacted.
    real = {
        event_id: {event.raw, encode_canonical_json(redact(event.json, world.version))}
        for event_id, event in world.room.events.items()
    }
    broken: list[str] = []
    tried = 0
    (prev_id,) = world.join.prev_event_ids
    path = f"/_matrix/federation/v1/{read}/" + urllib.parse.quote(
        prev_id if read == "event" else world.room_id, safe=""
    )
    _, good = await wire._real(path, {"event_id": prev_id})
    asked = len(wire.server.calls)
    # Two steps in: the answer's fields and the events in its lists, each
    # replaced whole. What each event's own fields may hold is the PDU
    # parser's to judge, tried field by field where PDUs arrive
    # (tests/federation/test_server.py, test_joins_hostile.py); here it is
    # the resync's handling of a bad answer that is tried.
    for number, (name, _) in enumerate(variants(good, depth=2)):
        tried += 1
        wire.name = name
        db = tmp_path / f"ours{number}.db"
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="ranvier"):
            try:
                async with open_storage(db) as ours:
                    await world.join_partially(ours)
                    async with running(world.stater(ours)) as stater:
                        await stater.wait_for_full_state(world.room_id)
                    await world.assert_full_state(ours)
            except Exception as exc:  # any at all is the failure looked for
                broken.append(f"{read}, {name}: {type(exc).__name__}: {exc}")
                continue
        errors = [r.getMessage()[:300] for r in caplog.records if r.levelno >= logging.ERROR]
        if errors:
            broken.append(f"{read}, {name}: {errors}")
        forged = {e for e, json in _stored(db).items() if json not in real.get(e, ())}
        if forged:
            broken.append(f"{read}, {name}: stored events not as signed: {sorted(forged)}")
        db.unlink()
    assert tried > 20
    # The hostile server was asked each time (and moved on from).
    assert len(wire.server.calls) > asked + tried
    assert not broken, "\n".join(broken)
