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

import functools
import itertools
import json
import logging
import queue
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import pytest
import trio

from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION
from ranvier.protocol.signing import SigningKey, key_id
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.protocol.x_matrix import XMatrixAuthorization, format_authorization
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.web import Request, RequestHead

T = TypeVar("T")

V3: Final = "/_matrix/client/v3"

#: What each body key the handler reads is replaced by, one at a time.
HOSTILE_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    -1,
    2**63,
    2**64,
    1.5,
    "",
    "x" * 70_000,
    [],
    {},
    [[[]]],
)
#: What each query parameter is set to, one at a time.
HOSTILE_QUERY_VALUES: Final = ("-1", str(2**63), "99999999999999999999", "1e400", "abc", "")
#: Query parameters the spec names on federation GET routes, sent to every
#: GET route besides those its probe saw it read.
COMMON_QUERY: Final = ("limit", "v", "event_id", "ts", "dir", "ver", "since", "server")
#: What a request that had to ask another server gets when that server
#: cannot be reached: the deliberate answer, with an errcode.
GATEWAY_STATUSES: Final = frozenset({502, 504})
#: The version of the rooms a test server creates, which joins must name.
ROOM_VERSION: Final = DEFAULT_ROOM_VERSION.identifier
BAD_BODIES: Final = (b"{not json", b"[1, 2, 3]", b"{}")


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


class Served:
    """Both servers, running in a thread of their own until closed."""

    def __init__(self, directory: Path) -> None:
        self._pki = Pki.create(directory)
        self.client_context: ssl.SSLContext = self._pki.client_context()
        self._directory = directory
        self._ready: queue.Queue[tuple[World, trio.lowlevel.TrioToken] | BaseException] = (
            queue.Queue()
        )
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)
        self._thread.start()
        ready = self._ready.get(timeout=120)
        if isinstance(ready, BaseException):
            raise ready
        self.world, self._token = ready

    async def _serve(self) -> None:
        self._stop = trio.Event()
        try:
            async with (
                open_test_homeserver(self._directory / "a", federation=self._pki) as a,
                open_test_homeserver(self._directory / "b", federation=self._pki) as b,
            ):
                world = await _make_world(a, b)
                self._ready.put((world, trio.lowlevel.current_trio_token()))
                await self._stop.wait()
        except BaseException as exc:
            self._ready.put(exc)
            raise

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=60)

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        call = functools.partial(trio.from_thread.run, fn, trio_token=self._token)
        return await trio.to_thread.run_sync(call)


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

_txn_ids = itertools.count()


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


@dataclass(frozen=True)
class Call:
    what: str
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes | None


def _encode(body: Any) -> bytes | None:
    return None if body is None else json.dumps(body).encode()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _names(pattern: str) -> list[str]:
    return [part[1:-1] for part in pattern.split("/") if part.startswith("{")]


def _fill(pattern: str, values: Mapping[str, str], encoded: Mapping[str, str] = {}) -> str:
    path = pattern
    for name, value in values.items():
        segment = encoded[name] if name in encoded else _quote(value)
        if name == "txn_id" and name not in encoded:
            segment = f"txn{next(_txn_ids)}"
        path = path.replace("{" + name + "}", segment)
    return path


def _odd_values(value: str) -> list[str]:
    sigils = "!@#$+"
    first = value[:1]
    wrong = (
        sigils[(sigils.index(first) + 1) % len(sigils)] + value[1:]
        if first in sigils
        else "!" + value
    )
    return [
        _quote(value + "x" * 5_000),
        _quote(wrong),
        _quote("\u2603\u00fc" + value),
        "%00",
        _quote(value) + "%00",
    ]


def _hostile_calls(
    method: str, pattern: str, world: World, body_keys: set[str], query_names: set[str]
) -> Iterator[Call]:
    values = {name: _path_values(pattern, world)[name] for name in _names(pattern)}
    plausible = _plausible_body(method, pattern, world)
    good_body = _encode(plausible)
    query = _plausible_query(pattern, world)
    if method != "GET":
        for raw in BAD_BODIES:
            yield Call(f"body {raw!r}", method, _fill(pattern, values), query, raw)
        base = plausible if isinstance(plausible, dict) else {}
        for key in sorted(body_keys):
            for value in HOSTILE_VALUES:
                shown = (
                    value if not isinstance(value, str) or len(value) < 10 else f"'x'*{len(value)}"
                )
                yield Call(
                    f"body {key}={shown!r}",
                    method,
                    _fill(pattern, values),
                    query,
                    _encode({**base, key: value}),
                )
    for name in values:
        for odd in _odd_values(values[name]):
            yield Call(
                f"path {name}={odd[:40]!r}",
                method,
                _fill(pattern, values, {name: odd}),
                query,
                good_body,
            )
    for name in sorted(query_names | set(query)):
        for value in HOSTILE_QUERY_VALUES:
            yield Call(
                f"query {name}={value!r}",
                method,
                _fill(pattern, values),
                {**query, name: value},
                good_body,
            )


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


# --- Learning what a handler reads ----------------------------------------------------------


class _Noting(dict[str, Any]):
    """A dict that notes each key looked up in it."""

    def __init__(self, data: Mapping[str, Any], noted: set[str]) -> None:
        super().__init__(data)
        self.noted = noted

    def __getitem__(self, key: str) -> Any:
        self.noted.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.noted.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.noted.add(key)
        return super().__contains__(key)


def _noting_request(body_keys: set[str], query_names: set[str]) -> Callable[..., Request]:
    original = RequestHead.request

    def request(self: RequestHead, **kw: Any) -> Request:
        made = original(self, **kw)
        content = made.content
        if isinstance(content, dict):
            content = _Noting(content, body_keys)
        return replace(made, query=_Noting(made.query, query_names), content=content)

    return request


# --- The test ---------------------------------------------------------------------------------


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
    failures: list[str] = []
    async with httpx.AsyncClient(
        base_url=world.a.federation_url, verify=served.client_context, timeout=30
    ) as http:
        values = {name: _path_values(pattern, world)[name] for name in _names(pattern)}
        body_keys: set[str] = set()
        query_names: set[str] = set()
        plausible = _plausible_body(method, pattern, world)
        probes: list[Any] = [plausible, {} if method != "GET" else None]
        with monkeypatch.context() as patch:
            patch.setattr(RequestHead, "request", _noting_request(body_keys, query_names))
            for body in probes:
                probe = Call(
                    "probe",
                    method,
                    _fill(pattern, values),
                    _plausible_query(pattern, world),
                    _encode(body),
                )
                await _send(http, world, probe, signed=authenticated)
        if isinstance(plausible, dict):
            body_keys |= set(plausible)
        if method == "GET":
            query_names |= set(COMMON_QUERY)
        for call in _hostile_calls(method, pattern, world, body_keys, query_names):
            try:
                response = await _send(http, world, call, signed=authenticated)
            except httpx.HTTPError as exc:
                failures.append(f"{call.what}: no answer ({exc!r})")
                continue
            failure = _judge(response)
            if failure is not None:
                failures.append(f"{call.what}: {failure}")
        version = await http.get("/_matrix/federation/v1/version")
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.name.startswith("ranvier") and record.levelno >= logging.ERROR
    ]
    assert failures == [], "\n".join(failures)
    assert errors == [], "\n".join(errors)
    assert version.status_code == 200


def _judge(response: httpx.Response) -> str | None:
    """What is wrong with an answer to a hostile request, if anything."""
    if response.status_code >= 500 and response.status_code not in GATEWAY_STATUSES:
        return f"{response.status_code} {response.text[:200]}"
    if response.status_code < 400:
        return None
    try:
        answer = response.json()
    except ValueError:
        return f"{response.status_code} without JSON: {response.text[:200]!r}"
    if not isinstance(answer, dict) or not isinstance(answer.get("errcode"), str):
        return f"{response.status_code} without an errcode: {response.text[:200]}"
    return None
