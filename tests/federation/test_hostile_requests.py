"""Every federation route, as the server builds its router, answers hostile
requests that are properly X-Matrix signed with a Matrix error, never a 500.

The routes are read from the router of a real server. Server A is called
over HTTPS on loopback with requests signed by server B, whose user has
joined A's room, so that routes which serve only servers in a room get
past that check. A probe learns which body keys and query parameters a
handler reads (by handing it a body and query that note each key looked
up); each is then sent with values of every JSON kind and size, the body
itself as not-JSON, an array and ``{}``, and the path with odd IDs. Each
request is signed over the exact bytes sent, so that values canonical
JSON cannot hold (``1.5``, ``2**64``) still reach the handler.

Both servers run for the whole module in a thread of their own (a Trio
test cannot share a server across tests otherwise).
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio

from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION
from ranvier.protocol.signing import SigningKey, key_id
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.protocol.x_matrix import XMatrixAuthorization, format_authorization
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.testing.hostile_requests import (
    Call,
    ServedInThread,
    encode,
    fill,
    hostile_calls,
    logged_errors,
    noting_requests,
    path_names,
    send_all,
)
from ranvier.testing.network import Pki
from ranvier.web import RequestHead

V3: Final = "/_matrix/client/v3"

#: Query parameters the spec names on federation GET routes, sent to every
#: GET route besides those its probe saw it read.
COMMON_QUERY: Final = ("limit", "v", "event_id", "ts", "dir", "ver", "since", "server")
#: The version of the rooms a test server creates, which joins must name.
ROOM_VERSION: Final = DEFAULT_ROOM_VERSION.identifier


def _routes() -> list[tuple[str, str, bool]]:
    """Every (method, pattern, authenticated) of the federation API."""

    async def read() -> list[tuple[str, str, bool]]:
        with tempfile.TemporaryDirectory() as directory:
            async with open_test_homeserver(Path(directory)) as hs:
                return hs.server.federation_app.router.routes()

    return trio.run(read)


ROUTES: Final = _routes()


@dataclass(frozen=True)
class World:
    """Server A (called) and B (signing), and what A's routes name."""

    a: TestHomeserver
    b: TestHomeserver
    alice: str
    alice_device: str
    bob: str
    room_id: str
    alias: str
    event_id: str


@contextlib.asynccontextmanager
async def _serve(directory: Path, pki: Pki) -> AsyncIterator[World]:
    async with (
        open_test_homeserver(directory / "a", federation=pki) as a,
        open_test_homeserver(directory / "b", federation=pki) as b,
    ):
        yield await _make_world(a, b)


class Served:
    """Both servers, running in a thread of their own until closed."""

    def __init__(self, directory: Path) -> None:
        pki = Pki.create(directory)
        self.client_context: ssl.SSLContext = pki.client_context()
        self._served = ServedInThread(functools.partial(_serve, directory, pki), timeout=120)
        self.world = self._served.value

    def close(self) -> None:
        self._served.close()


async def _make_world(a: TestHomeserver, b: TestHomeserver) -> World:
    alice = await a.register_user("alice")
    bob = await b.register_user("bob")
    async with a.client(alice) as http_a, b.client(bob) as http_b:

        async def ok(http: httpx.AsyncClient, method: str, path: str, body: Any) -> Any:
            response = await http.request(method, V3 + path, json=body)
            assert response.status_code == 200, (path, response.text)
            return response.json()

        alias = f"#lobby:{a.server_name}"
        created = await ok(
            http_a, "POST", "/createRoom", {"preset": "public_chat", "room_alias_name": "lobby"}
        )
        room_id = created["room_id"]
        room = urllib.parse.quote(room_id, safe="")
        sent = await ok(
            http_a,
            "PUT",
            f"/rooms/{room}/send/m.room.message/t",
            {"msgtype": "m.text", "body": "hi"},
        )
        await ok(http_b, "POST", f"/join/{urllib.parse.quote(alias, safe='')}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
            while True:
                members = await ok(http_a, "GET", f"/rooms/{room}/joined_members", None)
                if bob.user_id in members["joined"]:
                    break
                await trio.sleep(0.02)
    return World(
        a, b, alice.user_id, alice.device_id, bob.user_id, room_id, alias, sent["event_id"]
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("hostile-federation"))
    try:
        yield server
    finally:
        server.close()


# --- What a route is sent ------------------------------------------------------------------


def _path_values(pattern: str, world: World) -> dict[str, str]:
    remote_user = "/make_" in pattern
    return {
        "room_id": world.room_id,
        "event_id": world.event_id,
        "user_id": world.bob if remote_user else world.alice,
        "mediaId": "abcdefghij",
        "txn_id": "txn",
        "server_name": world.b.server_name,
    }


def _plausible_query(pattern: str, world: World) -> dict[str, str]:
    tail = pattern.removeprefix("/_matrix/federation")
    queries: dict[str, dict[str, str]] = {
        "/v1/backfill/{room_id}": {"v": world.event_id, "limit": "10"},
        "/v1/state/{room_id}": {"event_id": world.event_id},
        "/v1/state_ids/{room_id}": {"event_id": world.event_id},
        "/v1/query/directory": {"room_alias": world.alias},
        "/v1/query/profile": {"user_id": world.alice, "field": "displayname"},
        "/v1/timestamp_to_event/{room_id}": {"ts": "0", "dir": "f"},
        "/v1/make_join/{room_id}/{user_id}": {"ver": ROOM_VERSION},
        "/v1/make_knock/{room_id}/{user_id}": {"ver": ROOM_VERSION},
        "/v1/media/thumbnail/{mediaId}": {"width": "32", "height": "32", "method": "scale"},
        "/v1/publicRooms": {"limit": "10"},
        "/v1/openid/userinfo": {"access_token": "token"},
    }
    return queries.get(tail, {})


def _plausible_body(method: str, pattern: str, world: World) -> Any:
    if method == "GET":
        return None
    tail = pattern.removeprefix("/_matrix/federation")
    member = {
        "type": "m.room.member",
        "room_id": world.room_id,
        "sender": world.bob,
        "state_key": world.bob,
        "content": {"membership": "join"},
        "origin_server_ts": 0,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
    }
    bodies: dict[str, Any] = {
        "/v1/send/{txn_id}": {
            "origin": world.b.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": [],
            "edus": [],
        },
        "/v1/get_missing_events/{room_id}": {
            "earliest_events": [],
            "latest_events": [world.event_id],
            "limit": 10,
            "min_depth": 0,
        },
        "/v1/user/keys/claim": {
            "one_time_keys": {world.alice: {world.alice_device: "signed_curve25519"}}
        },
        "/v1/user/keys/query": {"device_keys": {world.alice: []}},
        "/_matrix/key/v2/query": {"server_keys": {world.b.server_name: {}}},
        "/v1/publicRooms": {"limit": 10, "since": None, "filter": {"generic_search_term": "x"}},
        "/v2/send_join/{room_id}/{event_id}": member,
        "/v2/send_leave/{room_id}/{event_id}": {**member, "content": {"membership": "leave"}},
        "/v1/send_knock/{room_id}/{event_id}": {**member, "content": {"membership": "knock"}},
        "/v2/invite/{room_id}/{event_id}": {
            "event": {
                **member,
                "sender": world.bob,
                "state_key": world.alice,
                "content": {"membership": "invite"},
            },
            "room_version": ROOM_VERSION,
            "invite_room_state": [],
        },
    }
    return bodies.get(tail, {})


def _authorization(
    key: SigningKey, origin: str, destination: str, method: str, uri: str, body: bytes | None
) -> str:
    """An X-Matrix header signing ``body`` exactly as sent, spliced into the
    signed object the way a receiver checks it first."""
    rest = encode_canonical_json(
        {"destination": destination, "method": method, "origin": origin, "uri": uri}
    )
    signed = rest if body is None else b'{"content":' + body + b"," + rest[1:]
    sig = encode_unpadded_base64(key.sign(signed).signature)
    return format_authorization(
        XMatrixAuthorization(origin=origin, destination=destination, key=key_id(key), sig=sig)
    )


async def _send(
    http: httpx.AsyncClient, world: World, call: Call, *, signed: bool = True
) -> httpx.Response:
    query = urllib.parse.urlencode(call.query)
    uri = call.path + ("?" + query if query else "")
    headers = {}
    if signed:
        b = world.b.server
        headers["Authorization"] = _authorization(
            b.signing_key, b.server_name, world.a.server_name, call.method, uri, call.body
        )
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return await http.request(call.method, httpx.URL(uri), content=call.body, headers=headers)


# --- The test ---------------------------------------------------------------------------------


def _route_values(pattern: str, world: World) -> dict[str, str]:
    every = _path_values(pattern, world)
    return {name: every[name] for name in path_names(pattern)}


def _route_id(route: tuple[str, str, bool]) -> str:
    return f"{route[0]} {route[1]}"


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
async def test_route_answers_signed_hostile_requests_with_matrix_errors(
    served: Served,
    route: tuple[str, str, bool],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method, pattern, authenticated = route
    world = served.world
    async with httpx.AsyncClient(
        base_url=world.a.federation_url, verify=served.client_context, timeout=30
    ) as http:
        values = _route_values(pattern, world)
        body_keys: set[str] = set()
        query_names: set[str] = set()
        plausible = _plausible_body(method, pattern, world)
        probes: list[Any] = [plausible, {} if method != "GET" else None]
        with monkeypatch.context() as patch:
            patch.setattr(RequestHead, "request", noting_requests(body_keys, query_names))
            for body in probes:
                probe = Call(
                    "probe",
                    method,
                    fill(pattern, values),
                    _plausible_query(pattern, world),
                    encode(body),
                )
                await _send(http, world, probe, signed=authenticated)
        if isinstance(plausible, dict):
            body_keys |= set(plausible)
        if method == "GET":
            query_names |= set(COMMON_QUERY)
        calls = hostile_calls(
            method,
            pattern,
            values,
            plausible,
            _plausible_query(pattern, world),
            body_keys,
            query_names,
            query_throughout=True,
        )
        failures = await send_all(
            calls, functools.partial(_send, http, world, signed=authenticated)
        )
        version = await http.get("/_matrix/federation/v1/version")
    errors = logged_errors(caplog.records)
    assert failures == [], "\n".join(failures)
    assert errors == [], "\n".join(errors)
    assert version.status_code == 200
