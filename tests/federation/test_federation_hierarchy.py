"""The hierarchy client against a stand-in server over loopback TLS: what
it keeps of an answer, answers it refuses, the next ``via`` server asked,
and its cache (kept for a while, bounded by entries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from ranvier.federation.hierarchy import HIERARCHY_PATH, FederationHierarchyClient
from ranvier.federation.transport.server import FederationApp
from ranvier.testing import KnownKeys, ZoneDns, serve
from ranvier.testing.network import Pki
from ranvier.web import JsonResponse, Request

from ._resident import open_peer

ROOM = "!space:stand.in"


def _summary(room_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "room_id": room_id,
        "num_joined_members": 3,
        "world_readable": False,
        "guest_can_join": False,
        **extra,
    }


def _answer(room_id: str = ROOM) -> dict[str, Any]:
    child = {
        "type": "m.space.child",
        "state_key": "!child:stand.in",
        "content": {"via": ["stand.in"]},
        "sender": "@a:stand.in",
        "origin_server_ts": 5,
    }
    return {
        "room": _summary(room_id, name="Space", room_type="m.space", children_state=[child]),
        "children": [
            _summary("!child:stand.in", join_rule="public", unknown_field=1),
            {"room_id": "!broken:stand.in"},
        ],
        "inaccessible_children": ["!secret:stand.in", 7],
    }


class _StandIn:
    def __init__(self) -> None:
        self.answer: Any = _answer()
        self.status = 200
        self.asked: list[tuple[str, str | None, str | None]] = []

    async def hierarchy(self, request: Request) -> JsonResponse:
        await trio.lowlevel.checkpoint()
        self.asked.append(
            (
                request.path_params["room_id"],
                request.query_value("suggested_only"),
                request.origin,
            )
        )
        return JsonResponse(self.answer, status=self.status)


async def _open(
    nursery: trio.Nursery, tmp_path: Path, **settings: Any
) -> tuple[_StandIn, str, FederationHierarchyClient]:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    stand_in = _StandIn()
    app = FederationApp(server_name="stand.in", key_lookup=keys)
    app.router.add("GET", HIERARCHY_PATH, stand_in.hierarchy)
    port = await serve(nursery, app, pki.server_context("stand.in"))
    app.server_name = f"stand.in:{port}"
    peer = await open_peer(nursery, pki, ZoneDns.loopback("stand.in"), keys, "asking.test")
    client = FederationHierarchyClient(peer.client, server_name="asking.test", **settings)
    return stand_in, app.server_name, client


async def test_an_answer_is_kept_with_the_spec_fields_only(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    stand_in, server, client = await _open(nursery, tmp_path)
    space = await client.get_space(ROOM, ["asking.test", server], suggested_only=True)
    assert space is not None
    # This server itself is never asked; the request is signed by it.
    assert stand_in.asked == [(ROOM, "true", "asking.test")]
    assert space.room["name"] == "Space"
    assert space.room["join_rule"] == "public"
    assert space.room["children_state"][0]["state_key"] == "!child:stand.in"
    assert list(space.children) == ["!child:stand.in"]
    assert "unknown_field" not in space.children["!child:stand.in"]
    assert space.inaccessible == frozenset({"!secret:stand.in"})


@pytest.mark.parametrize(
    "answer",
    [
        _answer("!other:stand.in"),
        {"room": _summary(ROOM, num_joined_members="3")},
        {"room": {"room_id": ROOM}},
        {"room": "nothing"},
        ["not", "an", "object"],
        {"errcode": "M_NOT_FOUND", "error": "no"},
    ],
)
async def test_an_unusable_answer_is_no_answer(
    tmp_path: Path, nursery: trio.Nursery, answer: Any
) -> None:
    stand_in, server, client = await _open(nursery, tmp_path)
    stand_in.answer = answer
    if "errcode" in answer:
        stand_in.status = 404
    assert await client.get_space(ROOM, [server], suggested_only=False) is None
    assert len(stand_in.asked) == 1


async def test_the_next_via_server_is_asked_when_one_fails(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    stand_in, server, client = await _open(nursery, tmp_path)
    # Nothing listens on the first: it fails, and the stand-in is asked next.
    space = await client.get_space(ROOM, ["stand.in:1", server], suggested_only=False)
    assert space is not None
    assert space.room["room_id"] == ROOM
    assert stand_in.asked == [(ROOM, "false", "asking.test")]


async def test_answers_are_kept_for_a_while_and_the_oldest_go_first(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    now = [0.0]
    stand_in, server, client = await _open(
        nursery, tmp_path, clock=lambda: now[0], cache_seconds=60.0, cache_entries=2
    )

    async def ask(room_id: str, suggested_only: bool = False) -> None:
        stand_in.answer = _answer(room_id)
        assert await client.get_space(room_id, [server], suggested_only=suggested_only)

    await ask(ROOM)
    now[0] = 59.0
    await ask(ROOM)
    assert len(stand_in.asked) == 1
    # suggested_only is a different question.
    await ask(ROOM, suggested_only=True)
    assert len(stand_in.asked) == 2
    now[0] = 60.0
    await ask(ROOM)
    assert len(stand_in.asked) == 3
    # Two entries at most: a third pushes out the oldest.
    await ask("!third:stand.in")
    await ask(ROOM, suggested_only=True)
    assert len(stand_in.asked) == 5
    await ask("!third:stand.in")
    assert len(stand_in.asked) == 5
