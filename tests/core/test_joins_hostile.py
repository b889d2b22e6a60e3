"""Joining through a resident whose make_join or send_join answer is
hostile: each variant of :func:`ranvier.testing.hostile.variants` (not
JSON, an array, ``{}``, every field of the answer and of the first of its
events removed or replaced by a value of another kind).

The join either works (a change the checks allow) or fails with a Matrix
error, leaving no room and no partial-state row; nothing is logged at
ERROR; and a join answered well afterwards works.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from _resident import start_resident

from ranvier.core.joins import RemoteJoiner
from ranvier.errors import MatrixError
from ranvier.federation.membership import FederationJoinClient
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import NOW_MS, KnownKeys, Pki, ticking_clock
from ranvier.testing.hostile import stream_body, variant, variants
from ranvier.web import Handler, Request, Router

JOINER = "b.test"
BOB = "@bob:b.test"
MAKE_JOIN = "/_matrix/federation/v1/make_join/{room_id}/{user_id}"
SEND_JOIN = "/_matrix/federation/v2/send_join/{room_id}/{event_id}"


@dataclass
class Hostility:
    """Which route answers with which variant of its real answer."""

    pattern: str | None = None
    name: str | None = None
    #: The real answers, by route pattern, as last made.
    answers: dict[str, Any] = field(default_factory=dict)


@dataclass
class _AlteringRouter(Router):
    """Adds routes to ``target``, with answers altered as ``hostility`` says."""

    target: Router = field(default_factory=Router)
    hostility: Hostility = field(default_factory=Hostility)

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        authenticated: bool | None = None,
        units_checked: bool = False,
        rate_limited: bool = True,
    ) -> None:
        self.target.add(
            method,
            pattern,
            self._altering(pattern, handler),
            authenticated=authenticated,
            units_checked=units_checked,
            rate_limited=rate_limited,
        )

    def _altering(self, pattern: str, handler: Handler) -> Handler:
        hostility = self.hostility

        async def altered(request: Request) -> Any:
            answer = await handler(request)
            if isinstance(answer, Mapping):
                hostility.answers[pattern] = answer
                if hostility.pattern == pattern and hostility.name is not None:
                    return stream_body(variant(dict(answer), hostility.name))
            return answer

        return altered


@dataclass
class World:
    tmp_path: Path
    resident_name: str
    room_id: str
    http: FederationHttpClient
    keys: KnownKeys
    joiner_key: SigningKey
    hostility: Hostility
    joins: int = 0

    async def join(self, *, partial_state: bool) -> tuple[Any, bool]:
        """A join into fresh storage: the join or the error, and whether
        that storage holds nothing of the room afterwards."""
        self.joins += 1
        storage = Storage(self.tmp_path / f"joiner{self.joins}.db", synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            joiner = RemoteJoiner(
                server_name=JOINER,
                signing_key=self.joiner_key,
                client=FederationJoinClient(self.http),
                keys=self.keys,
                store=storage,
                persister=storage,
                clock=ticking_clock(NOW_MS + 10_000),
                partial_state=partial_state,
            )
            result: Any
            try:
                result = await joiner.join_remote_room(BOB, self.room_id, [self.resident_name])
            except MatrixError as exc:
                result = exc
            empty = await _left_nothing(storage, self.room_id)
            nursery.cancel_scope.cancel()
        (self.tmp_path / f"joiner{self.joins}.db").unlink()
        return result, empty


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    joiner_key = generate_signing_key("b1")
    keys.add(JOINER, joiner_key)
    hostility = Hostility()
    resident = await start_resident(
        nursery,
        tmp_path,
        pki,
        keys,
        routes=lambda router: _AlteringRouter(target=router, hostility=hostility),
    )
    resident_name, creator = resident.name, resident.creator
    alice = f"@alice:{resident_name}"
    room_id = await creator.create_room(alice, preset="public_chat", topic="the topic")
    await creator.send_event(alice, room_id, "m.room.message", {"body": "hi"})
    http = FederationHttpClient(JOINER, joiner_key, ssl_context=pki.client_context())
    await nursery.start(http.run)
    return World(tmp_path, resident_name, room_id, http, keys, joiner_key, hostility)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()[:300]}"
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("ranvier")
    ]


async def _left_nothing(storage: Storage, room_id: str) -> bool:
    return (
        await storage.get_room_version(room_id) is None
        and not await storage.is_partial_state_room(room_id)
        and room_id not in await storage.get_partial_state_rooms()
    )


@pytest.mark.parametrize("partial_state", [False, True], ids=["full state", "partial state"])
@pytest.mark.parametrize("pattern", [MAKE_JOIN, SEND_JOIN], ids=["make_join", "send_join"])
async def test_a_hostile_join_answer_fails_cleanly_or_joins(
    world: World, pattern: str, partial_state: bool, caplog: pytest.LogCaptureFixture
) -> None:
    joined, _ = await world.join(partial_state=partial_state)
    assert not isinstance(joined, MatrixError), joined
    good = world.hostility.answers[pattern]

    request = "make_join" if pattern == MAKE_JOIN else "send_join"
    broken: list[str] = []
    failed = 0
    world.hostility.pattern = pattern
    for name, _ in variants(dict(good)):
        world.hostility.name = name
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="ranvier"):
            try:
                joined, empty = await world.join(partial_state=partial_state)
            except Exception as exc:  # any other type is the failure looked for
                broken.append(f"{request}, {name}: {type(exc).__name__}: {exc}")
                continue
        if isinstance(joined, MatrixError):
            failed += 1
            if not empty:
                broken.append(f"{request}, {name}: failed ({joined}) but left the room written")
        if _errors(caplog):
            broken.append(f"{request}, {name}: {_errors(caplog)}")
    assert failed > 10
    assert not broken, "\n".join(broken)

    world.hostility.name = None
    joined, _ = await world.join(partial_state=partial_state)
    assert not isinstance(joined, MatrixError), joined
    assert joined.event.room_id == world.room_id
