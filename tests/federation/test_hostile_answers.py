"""Answers from a hostile or broken remote server never break ranvier.

A homeserver (over its client API) asks a stand-in remote for a profile, an
alias, users' keys and one-time keys, and the stand-in answers each time
with something else: not JSON, an array, ``{}``, or the real answer with
one of its fields (at any depth) removed or replaced by a value of another
kind. The caller gets a 200 or a Matrix error, never a 500; nothing is
logged at ERROR; and the same request answered well afterwards succeeds.
The remote's signing key answer (asked while checking a request it signed)
is broken the same way: the request is refused, never a 500.
"""

from __future__ import annotations

import functools
import itertools
import logging
import urllib.parse
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.federation.keys import KeyRing, KeyUnavailableError, TrustedKeyServer
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.routes import server_keys_json, wall_clock_ms
from ranvier.protocol.signing import SigningKey, generate_signing_key, sign_json
from ranvier.storage import Storage
from ranvier.testing import KnownKeys, Pki, RemoteHomeserver
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.hostile import CannedAnswer, stream_body, variant, variants
from ranvier.web import Request, StreamResponse

_V1 = "/_matrix/federation/v1"


@dataclass
class Asked:
    """One request ranvier makes of the remote, as a client starts it."""

    name: str
    method: str
    route: str
    good: Callable[[str], Any]
    call: Callable[[str], tuple[str, str, Any]]
    #: Whether a good answer shows through: how to tell the request worked.
    shows: Callable[[Any, str], bool]


def _device(user_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": "DEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:DEV": "c" * 43, "ed25519:DEV": "e" * 43},
        "signatures": {user_id: {"ed25519:DEV": "s" * 86}},
    }


def _cross(user_id: str, usage: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{usage}": "m" * 43}}


def _user(remote: str) -> str:
    return f"@u:{remote}"


ASKED = [
    Asked(
        "profile",
        "GET",
        "/query/profile",
        lambda remote: {"displayname": "U", "avatar_url": f"mxc://{remote}/abc"},
        lambda remote: ("GET", f"/_matrix/client/v3/profile/{_user(remote)}", None),
        lambda answer, remote: answer.get("displayname") == "U",
    ),
    Asked(
        "directory",
        "GET",
        "/query/directory",
        lambda remote: {"room_id": f"!room:{remote}", "servers": [remote, "other.test"]},
        lambda remote: (
            "GET",
            "/_matrix/client/v3/directory/room/" + urllib.parse.quote(f"#a:{remote}", safe=""),
            None,
        ),
        lambda answer, remote: answer.get("room_id") == f"!room:{remote}",
    ),
    Asked(
        "keys query",
        "POST",
        "/user/keys/query",
        lambda remote: {
            "device_keys": {_user(remote): {"DEV": _device(_user(remote))}},
            "master_keys": {_user(remote): _cross(_user(remote), "master")},
            "self_signing_keys": {_user(remote): _cross(_user(remote), "self_signing")},
        },
        lambda remote: (
            "POST",
            "/_matrix/client/v3/keys/query",
            {"device_keys": {_user(remote): []}},
        ),
        lambda answer, remote: (
            "DEV" in answer["device_keys"].get(_user(remote), {})
            and _user(remote) in answer["master_keys"]
        ),
    ),
    Asked(
        "keys claim",
        "POST",
        "/user/keys/claim",
        lambda remote: {
            "one_time_keys": {
                _user(remote): {
                    "DEV": {
                        "signed_curve25519:AAAA": {
                            "key": "k" * 43,
                            "signatures": {_user(remote): {"ed25519:DEV": "s" * 86}},
                        }
                    }
                }
            }
        },
        lambda remote: (
            "POST",
            "/_matrix/client/v3/keys/claim",
            {"one_time_keys": {_user(remote): {"DEV": "signed_curve25519"}}},
        ),
        lambda answer, remote: "DEV" in answer["one_time_keys"].get(_user(remote), {}),
    ),
]


@dataclass
class Scene:
    hs: TestHomeserver
    http: httpx.AsyncClient
    user: TestUser
    remote: RemoteHomeserver
    pki: Pki

    async def ask(self, asked: Asked) -> tuple[int, Any]:
        method, path, body = asked.call(self.remote.server_name)
        response = await self.http.request(
            method,
            path,
            json=body,
            headers={"Authorization": f"Bearer {self.user.access_token}"},
        )
        return response.status_code, response.json()


@pytest.fixture
async def scene(tmp_path: Path, nursery: trio.Nursery) -> AsyncGenerator[Scene, None]:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    remote = RemoteHomeserver("127.0.0.1:{port}", key_lookup=keys)
    await remote.start(nursery, pki.server_context("127.0.0.1"))
    await remote.open_client(nursery, pki.client_context())
    async with open_test_homeserver(tmp_path / "hs", federation=pki) as hs, hs.client() as http:
        keys.add(hs.server_name, hs.server.signing_key)
        user = await hs.register_user("alice")
        yield Scene(hs, http, user, remote, pki)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()[:300]}"
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("ranvier")
    ]


@pytest.mark.parametrize("asked", ASKED, ids=lambda asked: asked.name)
async def test_every_hostile_answer_gets_a_clear_outcome(
    scene: Scene, asked: Asked, caplog: pytest.LogCaptureFixture
) -> None:
    remote = scene.remote.server_name
    answers = CannedAnswer(asked.good(remote))
    scene.remote.app.router.add(asked.method, _V1 + asked.route, answers.handle)
    status, answer = await scene.ask(asked)
    assert status == 200, answer
    assert asked.shows(answer, remote), answer

    broken: list[str] = []
    tried = 0
    for mutation, make in variants(asked.good(remote)):
        tried += 1
        answers.body = make()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="ranvier"):
            status, answer = await scene.ask(asked)
        clear = status == 200 or (
            400 <= status < 600
            and status != 500
            and isinstance(answer, dict)
            and isinstance(answer.get("errcode"), str)
        )
        if not clear or _errors(caplog):
            broken.append(
                f"{asked.name}, {mutation}: {status} {str(answer)[:200]} {_errors(caplog)}"
            )
    assert tried >= 23
    # Each was asked of the remote, not answered from a cache.
    assert answers.asked == tried + 1
    assert not broken, "\n".join(broken)

    answers.body = None
    status, answer = await scene.ask(asked)
    assert status == 200, answer
    assert asked.shows(answer, remote), answer


def _resigned(body: bytes, sign: Callable[[Any], Any]) -> bytes:
    """``body`` signed again by ``sign`` where it can be, so that more
    than the signature check is reached; as it is where it cannot."""
    try:
        return msgspec.json.encode(sign(msgspec.json.decode(body)))
    except Exception:  # what cannot be signed is sent as it is
        return body


def _sign(server: str, key: SigningKey, answer: Any) -> Any:
    return sign_json(answer, server, key)


def _notarised(notary: str, key: SigningKey, answer: Any) -> Any:
    return {"server_keys": [sign_json(answer, notary, key)]}


@pytest.mark.parametrize("via", ["origin", "notary"])
async def test_a_hostile_key_answer_leaves_the_key_unknown(
    scene: Scene,
    tmp_path: Path,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    via: str,
) -> None:
    remote = scene.remote
    notary = remote.server_name
    storage = Storage(tmp_path / "keys.db", synchronous="NORMAL")
    await nursery.start(storage.run)
    http = FederationHttpClient(
        "b.test", generate_signing_key("b"), ssl_context=scene.pki.client_context()
    )
    await nursery.start(http.run)
    answers = CannedAnswer({})
    if via == "notary":
        remote.app.router.add(
            "GET", "/_matrix/key/v2/query/{server}", answers.handle, authenticated=False
        )
    ring = KeyRing(
        store=storage,
        client=http,
        trusted_key_servers=[TrustedKeyServer(notary)] if via == "notary" else [],
        min_refetch_interval_ms=0,
    )
    broken: list[str] = []
    asked = 0
    for number, (mutation, _) in enumerate(
        variants(server_keys_json(notary, [remote.signing_key], wall_clock_ms()))
    ):
        # A new key each time, so that nothing kept from before answers.
        key = generate_signing_key(f"k{number}")
        # For the notary: a server that refuses connections, asked of it first.
        server = "127.0.0.1:1" if via == "notary" else notary
        good = server_keys_json(server, [key], wall_clock_ms() + 86_400_000)
        # The same change to this key's answer (whose paths name its key).
        _, make = next(itertools.islice(variants(good), number, None))
        body = make()
        body = _resigned(body, functools.partial(_sign, server, key))
        if via == "notary":
            body = _resigned(body, functools.partial(_notarised, notary, remote.signing_key))
            answers.body = body
        else:
            # The stand-in serves a decoded answer: one that does not decode
            # (not JSON, nested too deeply) is left to the notary's turn.
            try:
                remote.key_response = msgspec.json.decode(body)
            except (msgspec.DecodeError, RecursionError):
                continue
        asked += 1
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="ranvier"):
            try:
                await ring.get_verify_key(server, f"ed25519:k{number}")
            except KeyUnavailableError:
                pass
            except Exception as exc:  # any other is the failure looked for
                broken.append(f"{via} key answer, {mutation}: {type(exc).__name__}: {exc}")
        if _errors(caplog):
            broken.append(f"{via} key answer, {mutation}: {_errors(caplog)}")
    assert asked > 30
    assert not broken, "\n".join(broken)

    # Answered well, the key is known.
    key = generate_signing_key("good")
    server = "127.0.0.1:1" if via == "notary" else notary
    good = server_keys_json(server, [key], wall_clock_ms() + 86_400_000)
    if via == "notary":
        answers.body = msgspec.json.encode(
            {"server_keys": [sign_json(good, notary, remote.signing_key)]}
        )
    else:
        remote.key_response = good
    assert await ring.get_verify_key(server, "ed25519:good") is not None


class _KnockRoutes:
    """A resident's make_knock and send_knock, answering for any room; the
    answer of ``hostile`` is the variant ``name`` of its real one."""

    def __init__(self, remote: RemoteHomeserver) -> None:
        self.remote = remote
        self.hostile: str | None = None
        self.name: str | None = None
        self.asked = 0

    def good(self, route: str, room_id: str, user_id: str) -> dict[str, Any]:
        if route == "make_knock":
            server = self.remote.server_name
            return {
                "room_version": "10",
                "event": {
                    "type": "m.room.member",
                    "room_id": room_id,
                    "sender": user_id,
                    "state_key": user_id,
                    "content": {"membership": "knock"},
                    "origin": server,
                    "origin_server_ts": 1,
                    "depth": 5,
                    "prev_events": [f"$prev{'A' * 38}"],
                    "auth_events": [f"$auth{'A' * 38}"],
                },
            }
        stripped = {
            "type": "m.room.name",
            "state_key": "",
            "sender": f"@a:{self.remote.server_name}",
            "content": {"name": "The room"},
        }
        return {"knock_room_state": [stripped]}

    def add(self) -> None:
        router = self.remote.app.router
        for route, method, pattern in (
            ("make_knock", "GET", "/make_knock/{room_id}/{user_id}"),
            ("send_knock", "PUT", "/send_knock/{room_id}/{event_id}"),
        ):
            router.add(method, _V1 + pattern, functools.partial(self._answer, route))

    async def _answer(self, route: str, request: Request) -> StreamResponse:
        self.asked += route == self.hostile
        params = request.path_params
        user_id = params.get("user_id") or request.content["sender"]
        good = self.good(route, params["room_id"], user_id)
        if route == self.hostile and self.name is not None:
            return stream_body(variant(good, self.name))
        return stream_body(msgspec.json.encode(good))


@pytest.mark.parametrize("hostile", ["make_knock", "send_knock"])
async def test_every_hostile_knock_answer_gets_a_clear_outcome(
    scene: Scene, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    routes = _KnockRoutes(scene.remote)
    routes.add()
    remote = scene.remote.server_name
    rooms = (f"!room{number}:{remote}" for number in itertools.count())

    async def knock() -> tuple[int, Any]:
        response = await scene.http.post(
            "/_matrix/client/v3/knock/" + urllib.parse.quote(next(rooms), safe=""),
            params={"via": remote},
            json={},
            headers={"Authorization": f"Bearer {scene.user.access_token}"},
        )
        return response.status_code, response.json()

    status, answer = await knock()
    assert status == 200, answer
    routes.hostile = hostile
    broken: list[str] = []
    tried = 0
    sample = routes.good(hostile, "!room:x", scene.user.user_id)
    for name, _ in variants(sample):
        tried += 1
        routes.name = name
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="ranvier"):
            status, answer = await knock()
        clear = status == 200 or (
            400 <= status < 600 and status != 500 and isinstance(answer.get("errcode"), str)
        )
        if not clear or _errors(caplog):
            broken.append(f"{hostile}, {name}: {status} {str(answer)[:200]} {_errors(caplog)}")
    assert routes.asked == tried
    assert not broken, "\n".join(broken)

    routes.name = None
    status, answer = await knock()
    assert status == 200, answer
    # Sync shows every room knocked on, whatever state its server sent.
    caplog.clear()
    response = await scene.http.get(
        "/_matrix/client/v3/sync",
        headers={"Authorization": f"Bearer {scene.user.access_token}"},
    )
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["rooms"]["knock"]) > 2
    assert not _errors(caplog)
