"""Every client API route, as the server builds its router, answers hostile
requests with a Matrix error, never a 500.

The routes are read from the router of a real server, so a route added
later is covered without a change here. Each is called over HTTP on
loopback with a real user's token (an admin's for the admin API), its
path filled with IDs of a room, event, user and device that exist, and
then with odd ones. A probe first learns which body keys and query
parameters the handler reads (by handing it a body and query that note
each key looked up); each of those is then sent with values of every
JSON kind and size, and the body itself as not-JSON, an array and ``{}``.

One server serves the whole module, in a thread of its own (a Trio test
cannot share a server across tests otherwise); each route gets users,
a room and the rest of its own, so what one route's requests change
(a logout, a deactivation, a deleted room) reaches no other.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import queue
import tempfile
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import pytest
import trio

from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.web import Request, RequestHead

T = TypeVar("T")

ADMIN_PREFIX: Final = "/_synapse/admin/"
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
#: Query parameters the spec names on many GET routes: sent to every GET
#: route besides those its probe saw it read, since some are read only
#: once another is given.
COMMON_QUERY: Final = ("limit", "from", "to", "dir", "since", "timeout", "filter", "server", "ts")
#: What a request that had to ask another server gets when that server
#: cannot be reached or answers nonsense: the homeserver's own deliberate
#: answer, with an errcode, where a 500 is a request that reached code
#: that never checked it. (A name is often a hostile request's remote:
#: ``?server=abc`` names a server that does not exist, yet is a valid name.)
GATEWAY_STATUSES: Final = frozenset({502, 504})
#: Bodies that are not a JSON object.
BAD_BODIES: Final = (b"{not json", b"[1, 2, 3]", b"{}")


def _routes() -> list[tuple[str, str]]:
    """Every (method, pattern) of the client and media APIs a test server builds."""

    async def read() -> list[tuple[str, str]]:
        with tempfile.TemporaryDirectory() as directory:
            async with open_test_homeserver(Path(directory)) as hs:
                routes = [
                    *hs.server.client_app.router.routes(),
                    *hs.server.media_app.routes(),
                ]
                return [(method, pattern) for method, pattern, _ in routes]

    return trio.run(read)


ROUTES: Final = _routes()


@dataclass(frozen=True)
class Ids:
    """What one route's requests name: a room and what is in it, the users
    and their devices, and objects the routes with those IDs find."""

    alice: str
    alice_token: str
    alice_device: str
    bob: str
    room_id: str
    alias: str
    event_id: str
    filter_id: str
    backup_version: str
    registration_token: str
    #: A sync token from after the room was made.
    since: str


class Served:
    """The module's server, running in a thread of its own until closed."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._ready: queue.Queue[tuple[TestHomeserver, trio.lowlevel.TrioToken, str]] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)
        self._stop: trio.Event | None = None
        self._thread.start()
        self.hs, self._token, self.watcher_token = self._ready.get(timeout=60)
        self._users = itertools.count()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with open_test_homeserver(self._directory) as hs:
            watcher = await hs.register_user("watcher")
            self._ready.put((hs, trio.lowlevel.current_trio_token(), watcher.access_token))
            await self._stop.wait()

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=60)

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` run on the server's event loop, awaited from the test's."""
        call = functools.partial(trio.from_thread.run, fn, trio_token=self._token)
        return await trio.to_thread.run_sync(call)

    async def ids(self) -> Ids:
        """A fresh set of objects for one route's requests."""
        n = next(self._users)
        return await self.run(functools.partial(_make_ids, self.hs, n))


async def _make_ids(hs: TestHomeserver, n: int) -> Ids:
    alice = await hs.register_user(f"alice{n}", admin=True)
    bob = await hs.register_user(f"bob{n}")
    async with hs.client(alice) as http:

        async def ok(method: str, path: str, body: Any) -> Any:
            response = await http.request(method, V3 + path, json=body)
            assert response.status_code == 200, (path, response.text)
            return response.json()

        room_id = (await ok("POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
        alias = f"#room{n}:{hs.server_name}"
        room = urllib.parse.quote(room_id, safe="")
        await ok(
            "PUT", f"/directory/room/{urllib.parse.quote(alias, safe='')}", {"room_id": room_id}
        )
        sent = await ok(
            "PUT", f"/rooms/{room}/send/m.room.message/t", {"msgtype": "m.text", "body": "hi"}
        )
        filter_id = (await ok("POST", f"/user/{alice.user_id}/filter", {}))["filter_id"]
        version = (
            await ok(
                "POST",
                "/room_keys/version",
                {
                    "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                    "auth_data": {"public_key": "k"},
                },
            )
        )["version"]
        response = await http.post(
            "/_synapse/admin/v1/registration_tokens/new", json={"token": f"tok{n}"}
        )
        assert response.status_code == 200, response.text
        since = (await http.get(V3 + "/sync")).json()["next_batch"]
        await ok(
            "POST", f"/rooms/{room}/report/{urllib.parse.quote(sent['event_id'])}", {"reason": "r"}
        )
    return Ids(
        alice=alice.user_id,
        alice_token=alice.access_token,
        alice_device=alice.device_id,
        bob=bob.user_id,
        room_id=room_id,
        alias=alias,
        event_id=sent["event_id"],
        filter_id=filter_id,
        backup_version=version,
        registration_token=f"tok{n}",
        since=since,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("hostile"))
    try:
        yield server
    finally:
        server.close()


# --- What a route is sent ------------------------------------------------------------------


_txn_ids = itertools.count()


def _path_values(pattern: str, ids: Ids) -> dict[str, str]:
    """Real values for each path parameter a route names."""
    admin = pattern.startswith(ADMIN_PREFIX)
    return {
        "room_id": ids.room_id,
        "room_id_or_alias": ids.room_id,
        "room_alias": ids.alias,
        "event_id": ids.event_id,
        "user_id": ids.bob if admin else ids.alice,
        "device_id": ids.alice_device,
        "event_type": "m.room.topic",
        "state_key": ids.alice,
        "type": "m.test",
        "kind": "override",
        "rule_id": ".m.rule.master",
        "receipt_type": "m.read",
        "rel_type": "m.thread",
        "session_id": "session",
        "version": ids.backup_version,
        "filter_id": ids.filter_id,
        "report_id": "1",
        "token": ids.registration_token,
        "server_name": ids.alice.partition(":")[2],
        "media_id": "abcdefghij",
        "delete_id": "delete",
        "appservice_id": "service",
        "txn_id": "txn",
        "tag": "u.work",
        "serverName": ids.alice.partition(":")[2],
        "mediaId": "abcdefghij",
        "fileName": "file.txt",
        "protocol": "irc",
        "destination": "remote.example",
    }


def _odd_values(value: str) -> list[str]:
    """Odd path segments in place of ``value``, already percent-encoded."""
    sigils = "!@#$+"
    wrong = (
        (sigils[(sigils.index(value[0]) + 1) % len(sigils)] + value[1:])
        if value[:1] in sigils
        else "!" + value
    )
    return [
        _quote(value + "x" * 5_000),
        _quote(wrong),
        _quote("\u2603\u00fc" + value),
        "%00",
        _quote(value) + "%00",
    ]


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _plausible_body(method: str, pattern: str, ids: Ids) -> Any:
    """A body the route would accept, or near enough to get past its
    first checks, so that the probe sees the keys read further on."""
    tail = pattern
    for prefix in ("/_matrix/client/r0", "/_matrix/client/v3", "/_matrix/client/v1"):
        if pattern.startswith(prefix):
            tail = pattern[len(prefix) :]
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": ids.alice},
        "password": "p",
    }
    keys = {ids.alice: {ids.alice_device: {"a": 1}}}
    session = {
        "first_message_index": 0,
        "forwarded_count": 0,
        "is_verified": False,
        "session_data": {},
    }
    bodies: dict[str, Any] = {
        "/createRoom": {
            "preset": "private_chat",
            "name": "n",
            "topic": "t",
            "room_alias_name": "made",
            "invite": [ids.bob],
            "visibility": "private",
            "creation_content": {},
            "initial_state": [],
            "power_level_content_override": {},
            "is_direct": False,
            "room_version": "10",
        },
        "/rooms/{room_id}/send/{event_type}/{txn_id}": {"msgtype": "m.text", "body": "b"},
        "/rooms/{room_id}/state/{event_type}": {"topic": "t"},
        "/rooms/{room_id}/state/{event_type}/{state_key}": {"topic": "t"},
        "/rooms/{room_id}/redact/{event_id}/{txn_id}": {"reason": "r"},
        "/rooms/{room_id}/invite": {"user_id": ids.bob, "reason": "r"},
        "/rooms/{room_id}/kick": {"user_id": ids.bob, "reason": "r"},
        "/rooms/{room_id}/ban": {"user_id": ids.bob, "reason": "r"},
        "/rooms/{room_id}/unban": {"user_id": ids.bob, "reason": "r"},
        "/rooms/{room_id}/join": {"reason": "r"},
        "/join/{room_id_or_alias}": {"reason": "r"},
        "/knock/{room_id_or_alias}": {"reason": "r"},
        "/rooms/{room_id}/leave": {"reason": "r"},
        "/rooms/{room_id}/receipt/{receipt_type}/{event_id}": {"thread_id": "main"},
        "/rooms/{room_id}/read_markers": {"m.fully_read": ids.event_id, "m.read": ids.event_id},
        "/rooms/{room_id}/typing/{user_id}": {"typing": True, "timeout": 1000},
        "/rooms/{room_id}/report/{event_id}": {"reason": "r", "score": -100},
        "/rooms/{room_id}/report": {"reason": "r"},
        "/users/{user_id}/report": {"reason": "r"},
        "/rooms/{room_id}/upgrade": {"new_version": "10"},
        "/user/{user_id}/filter": {"room": {"timeline": {"limit": 1}}, "event_fields": ["type"]},
        "/presence/{user_id}/status": {"presence": "online", "status_msg": "s"},
        "/profile/{user_id}/displayname": {"displayname": "d"},
        "/profile/{user_id}/avatar_url": {"avatar_url": "mxc://localhost/a"},
        "/devices/{device_id}": {"display_name": "d", "auth": auth},
        "/delete_devices": {"devices": [ids.alice_device], "auth": auth},
        "/keys/upload": {
            "one_time_keys": {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}},
            "fallback_keys": {},
        },
        "/keys/query": {"device_keys": {ids.alice: []}, "timeout": 1000},
        "/keys/claim": {
            "one_time_keys": {ids.alice: {ids.alice_device: "signed_curve25519"}},
            "timeout": 1000,
        },
        "/keys/device_signing/upload": {
            "master_key": {"user_id": ids.alice, "usage": ["master"], "keys": {"ed25519:k": "k"}},
            "auth": auth,
        },
        "/keys/signatures/upload": keys,
        "/sendToDevice/{event_type}/{txn_id}": {"messages": keys},
        "/room_keys/version": {
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {"public_key": "k"},
        },
        "/room_keys/version/{version}": {
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {"public_key": "k"},
            "version": ids.backup_version,
        },
        "/room_keys/keys": {"rooms": {ids.room_id: {"sessions": {"s": session}}}},
        "/room_keys/keys/{room_id}": {"sessions": {"s": session}},
        "/room_keys/keys/{room_id}/{session_id}": session,
        "/pushrules/global/{kind}/{rule_id}": {
            "actions": ["notify"],
            "conditions": [],
            "pattern": "p",
        },
        "/pushrules/global/{kind}/{rule_id}/actions": {"actions": ["notify"]},
        "/pushrules/global/{kind}/{rule_id}/enabled": {"enabled": True},
        "/pushers/set": {
            "pushkey": "k",
            "kind": "http",
            "app_id": "a",
            "app_display_name": "a",
            "device_display_name": "d",
            "lang": "en",
            "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify"},
            "append": False,
        },
        "/login": {
            **auth,
            "device_id": "D",
            "initial_device_display_name": "d",
            "refresh_token": True,
        },
        "/register": {
            "username": "someone",
            "password": "p",
            "auth": {"type": "m.login.dummy"},
            "device_id": "D",
            "inhibit_login": False,
        },
        "/account/password": {"new_password": "p", "auth": auth, "logout_devices": False},
        "/account/deactivate": {"auth": auth, "erase": False},
        "/refresh": {"refresh_token": "r"},
        "/publicRooms": {
            "limit": 10,
            "since": "s",
            "filter": {"generic_search_term": "t"},
            "server": None,
        },
        "/directory/list/room/{room_id}": {"visibility": "public"},
        "/directory/room/{room_alias}": {"room_id": ids.room_id},
        "/search": {"search_categories": {"room_events": {"search_term": "hi"}}},
        "/user_directory/search": {"search_term": "a", "limit": 10},
        "/user/{user_id}/openid/request_token": {},
        "/user/{user_id}/account_data/{type}": {"a": 1},
        "/user/{user_id}/rooms/{room_id}/account_data/{type}": {"a": 1},
        "/appservice/{appservice_id}/ping": {"transaction_id": "t"},
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync": {
            "lists": {"a": {"ranges": [[0, 10]], "timeline_limit": 1, "required_state": []}},
            "room_subscriptions": {ids.room_id: {"timeline_limit": 1}},
            "extensions": {"to_device": {"enabled": True}},
            "conn_id": "c",
        },
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device": {
            "device_id": "DEHYDRATED",
            "device_data": {"algorithm": "a"},
            "initial_device_display_name": "d",
        },
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{device_id}/events": {
            "next_batch": None
        },
        "/_synapse/admin/v1/deactivate/{user_id}": {"erase": False},
        "/_synapse/admin/v1/registration_tokens/new": {
            "uses_allowed": 1,
            "length": 10,
            "expiry_time": None,
        },
        "/_synapse/admin/v1/registration_tokens/{token}": {"uses_allowed": 2, "expiry_time": None},
        "/_synapse/admin/v1/reset_password/{user_id}": {
            "new_password": "p",
            "logout_devices": True,
        },
        "/_synapse/admin/v1/send_server_notice": {
            "user_id": ids.bob,
            "content": {"msgtype": "m.text", "body": "b"},
        },
        "/_synapse/admin/v1/send_server_notice/{txn_id}": {
            "user_id": ids.bob,
            "content": {"msgtype": "m.text", "body": "b"},
        },
        "/_synapse/admin/v1/users/{user_id}/admin": {"admin": False},
        "/_synapse/admin/v2/users/{user_id}": {
            "displayname": "d",
            "admin": False,
            "deactivated": False,
        },
        "/_synapse/admin/v1/rooms/{room_id}/block": {"block": True},
        "/_synapse/admin/v2/rooms/{room_id}": {"block": False, "purge": True, "message": "m"},
        "/_synapse/admin/v1/media/delete": {},
    }
    if method == "GET":
        return None
    return bodies.get(tail, {})


def _plausible_query(pattern: str, ids: Ids) -> dict[str, str]:
    """Query parameters a route needs together: each hostile value then
    replaces one of them, with the others still good."""
    queries = {
        "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event": {"ts": "0", "dir": "f"},
        "/_matrix/client/v3/keys/changes": {"from": ids.since, "to": ids.since},
        "/_matrix/client/r0/keys/changes": {"from": ids.since, "to": ids.since},
        "/_matrix/client/v3/rooms/{room_id}/messages": {"dir": "b", "from": ids.since},
        "/_synapse/admin/v1/media/delete": {"before_ts": "0"},
        "/_synapse/admin/v1/media/{server_name}/delete": {"before_ts": "0"},
        "/_synapse/admin/v1/purge_media_cache": {"before_ts": "0"},
    }
    return queries.get(pattern, {})


@dataclass(frozen=True)
class Call:
    """One request: method, path (percent-encoded), query and body bytes."""

    what: str
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes | None


def _encode(body: Any) -> bytes | None:
    return None if body is None else json.dumps(body).encode()


def _fill(pattern: str, values: Mapping[str, str], encoded: Mapping[str, str] = {}) -> str:
    path = pattern
    for name, value in values.items():
        segment = encoded[name] if name in encoded else _quote(value)
        if name == "txn_id" and name not in encoded:
            segment = f"txn{next(_txn_ids)}"
        path = path.replace("{" + name + "}", segment)
    return path


def _names(pattern: str) -> list[str]:
    return [part[1:-1] for part in pattern.split("/") if part.startswith("{")]


def _hostile_calls(
    method: str, pattern: str, ids: Ids, body_keys: set[str], query_names: set[str]
) -> Iterator[Call]:
    values = {name: _path_values(pattern, ids)[name] for name in _names(pattern)}
    plausible = _plausible_body(method, pattern, ids)
    good_body = _encode(plausible)
    if method != "GET":
        for raw in BAD_BODIES:
            yield Call(f"body {raw!r}", method, _fill(pattern, values), {}, raw)
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
                    {},
                    _encode({**base, key: value}),
                )
    for name in values:
        for odd in _odd_values(values[name]):
            yield Call(
                f"path {name}={odd[:40]!r}",
                method,
                _fill(pattern, values, {name: odd}),
                {},
                good_body,
            )
    query = _plausible_query(pattern, ids)
    for name in sorted(query_names | set(query)):
        for value in HOSTILE_QUERY_VALUES:
            yield Call(
                f"query {name}={value!r}",
                method,
                _fill(pattern, values),
                {**query, name: value},
                good_body,
            )


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

    def pop(self, key: str, *default: Any) -> Any:
        self.noted.add(key)
        return super().pop(key, *default)


def _noting_request(body_keys: set[str], query_names: set[str]) -> Callable[..., Request]:
    original = RequestHead.request

    def request(self: RequestHead, **kw: Any) -> Request:
        made = original(self, **kw)
        content = made.content
        if isinstance(content, dict):
            content = _Noting(content, body_keys)
        return replace(made, query=_Noting(made.query, query_names), content=content)

    return request


async def _probe(
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    pattern: str,
    ids: Ids,
) -> tuple[set[str], set[str]]:
    """The body keys and query parameters the route's handler reads when
    given a plausible body, and when given ``{}``."""
    body_keys: set[str] = set()
    query_names: set[str] = set()
    values = {name: _path_values(pattern, ids)[name] for name in _names(pattern)}
    plausible = _plausible_body(method, pattern, ids)
    bodies: list[Any] = [plausible, {} if method != "GET" else None]
    with monkeypatch.context() as patch:
        patch.setattr(RequestHead, "request", _noting_request(body_keys, query_names))
        for body in bodies:
            await http.request(
                method,
                _fill(pattern, values),
                params=_plausible_query(pattern, ids),
                content=_encode(body),
            )
    if isinstance(plausible, dict):
        body_keys |= set(plausible)
    return body_keys, query_names


# --- The test ---------------------------------------------------------------------------------


def _route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
async def test_route_answers_hostile_requests_with_matrix_errors(
    served: Served,
    route: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method, pattern = route
    ids = await served.ids()
    headers = {"Authorization": f"Bearer {ids.alice_token}"}
    failures: list[str] = []
    async with httpx.AsyncClient(
        base_url=served.hs.client_url, headers=headers, timeout=30
    ) as http:
        body_keys, query_names = await _probe(http, monkeypatch, method, pattern, ids)
        if method == "GET":
            query_names |= set(COMMON_QUERY)
        for call in _hostile_calls(method, pattern, ids, body_keys, query_names):
            try:
                response = await http.request(
                    call.method, call.path, params=call.query, content=call.body
                )
            except httpx.HTTPError as exc:
                failures.append(f"{call.what}: no answer ({exc!r})")
                continue
            failure = _judge(response)
            if failure is not None:
                failures.append(f"{call.what}: {failure}")
        whoami = await http.get(
            V3 + "/account/whoami", headers={"Authorization": f"Bearer {served.watcher_token}"}
        )
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.name.startswith("ranvier") and record.levelno >= logging.ERROR
    ]
    assert failures == [], "\n".join(failures)
    assert errors == [], "\n".join(errors)
    assert whoami.status_code == 200


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
    if not isinstance(answer, dict):
        return f"{response.status_code} without an object: {response.text[:200]}"
    if response.status_code == 401 and "flows" in answer and "errcode" not in answer:
        # User-interactive authentication's first answer: the flows to
        # follow, which carries an errcode only once a stage has failed.
        return None
    if not isinstance(answer.get("errcode"), str):
        return f"{response.status_code} without an errcode: {response.text[:200]}"
    return None
