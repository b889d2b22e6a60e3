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

import contextlib
import functools
import itertools
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio

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
from ranvier.web import RequestHead

ADMIN_PREFIX: Final = "/_synapse/admin/"
V3: Final = "/_matrix/client/v3"

#: Query parameters the spec names on many GET routes: sent to every GET
#: route besides those its probe saw it read, since some are read only
#: once another is given.
COMMON_QUERY: Final = ("limit", "from", "to", "dir", "since", "timeout", "filter", "server", "ts")


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


@contextlib.asynccontextmanager
async def _serve(directory: Path) -> AsyncIterator[tuple[TestHomeserver, str]]:
    async with open_test_homeserver(directory) as hs:
        watcher = await hs.register_user("watcher")
        yield hs, watcher.access_token


class Served:
    """The module's server, running in a thread of its own until closed."""

    def __init__(self, directory: Path) -> None:
        self._served = ServedInThread(functools.partial(_serve, directory), timeout=60)
        self.hs, self.watcher_token = self._served.value
        self._users = itertools.count()

    def close(self) -> None:
        self._served.close()

    async def ids(self) -> Ids:
        """A fresh set of objects for one route's requests."""
        n = next(self._users)
        return await self._served.run(functools.partial(_make_ids, self.hs, n))


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
        "redact_id": "redaction",
        "appservice_id": "service",
        "txn_id": "txn",
        "tag": "u.work",
        "serverName": ids.alice.partition(":")[2],
        "mediaId": "abcdefghij",
        "fileName": "file.txt",
        "protocol": "irc",
        "network_id": "libera",
        "destination": "remote.example",
        "key_name": "displayname",
    }


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
        "/profile/{user_id}/{key_name}": {"displayname": "d"},
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
    values = _route_values(pattern, ids)
    plausible = _plausible_body(method, pattern, ids)
    bodies: list[Any] = [plausible, {} if method != "GET" else None]
    with monkeypatch.context() as patch:
        patch.setattr(RequestHead, "request", noting_requests(body_keys, query_names))
        for body in bodies:
            await http.request(
                method,
                fill(pattern, values),
                params=_plausible_query(pattern, ids),
                content=encode(body),
            )
    if isinstance(plausible, dict):
        body_keys |= set(plausible)
    return body_keys, query_names


# --- The test ---------------------------------------------------------------------------------


def _route_values(pattern: str, ids: Ids) -> dict[str, str]:
    every = _path_values(pattern, ids)
    return {name: every[name] for name in path_names(pattern)}


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
    async with httpx.AsyncClient(
        base_url=served.hs.client_url, headers=headers, timeout=30
    ) as http:
        body_keys, query_names = await _probe(http, monkeypatch, method, pattern, ids)
        if method == "GET":
            query_names |= set(COMMON_QUERY)
        calls = hostile_calls(
            method,
            pattern,
            _route_values(pattern, ids),
            _plausible_body(method, pattern, ids),
            _plausible_query(pattern, ids),
            body_keys,
            query_names,
            query_throughout=False,
        )

        async def send(call: Call) -> httpx.Response:
            return await http.request(call.method, call.path, params=call.query, content=call.body)

        failures = await send_all(calls, send, interactive_auth=True)
        whoami = await http.get(
            V3 + "/account/whoami", headers={"Authorization": f"Bearer {served.watcher_token}"}
        )
    errors = logged_errors(caplog.records)
    assert failures == [], "\n".join(failures)
    assert errors == [], "\n".join(errors)
    assert whoami.status_code == 200
