"""The main process's side of typing and presence with workers, over real
HTTP on its replication listener: the stream's answers carry the changes
since a worker's positions (everything, to a worker of another life), and
workers' requests are checked like every replication request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from _worker_configs import SECRET, main_process_config

from ranvier.testing import free_port
from ranvier.testing.homeserver import open_test_homeserver

STREAM = "/_ranvier/replication/control/stream"
EPHEMERAL = "/_ranvier/replication/control/ephemeral/"


def _client(port: int, *, secret: str | None = SECRET) -> httpx.AsyncClient:
    headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)


async def _stream(http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    answer = await http.get(STREAM, params=params)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_the_stream_carries_typing_and_presence_changes(tmp_path: Path) -> None:
    port = free_port()
    config = main_process_config(tmp_path / "main", replication_port=port)
    async with (
        open_test_homeserver(tmp_path / "main", config=config) as main,
        _client(port) as http,
    ):
        alice = await main.register_user("alice")
        room_id = await main.server.create_room(alice.user_id)
        typing = main.server.typing_notices
        await typing.set_typing(alice.user_id, alice.user_id, room_id, typing=True)

        # A worker with no copy yet gets the whole of it at once.
        first = await _stream(http, typing="0", presence="0", timeout_ms="30000")
        whole = first["ephemeral"]
        assert whole["full"] is True
        assert whole["typing"]["position"] == await typing.position()
        assert [(room["room_id"], room["user_ids"]) for room in whole["typing"]["rooms"]] == [
            (room_id, [alice.user_id])
        ]
        known = {
            "ephemeral_life": whole["life"],
            "typing": str(whole["typing"]["position"]),
            "presence": str(whole["presence"]["position"]),
        }
        positions = {name: str(value) for name, value in first["positions"].items()}
        current = {**positions, **known, "tokens": first["tokens"], "queued": first["queued"]}

        # Nothing new: the poll waits out its timeout and carries no changes.
        quiet = await _stream(http, **current, timeout_ms="200")
        assert quiet.get("ephemeral") is None

        # A long-poll answers once presence changes, with that change alone.
        answers: list[dict[str, Any]] = []

        async def long_poll() -> None:
            answers.append(await _stream(http, **current, timeout_ms="30000"))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_poll)
                await trio.sleep(0.3)
                assert answers == []
                await main.server.presence.set_presence(
                    alice.user_id, alice.user_id, {"presence": "online", "status_msg": "hi"}
                )
        changes = answers[0]["ephemeral"]
        assert changes["full"] is False
        assert changes["typing"]["rooms"] == []
        (entry,) = changes["presence"]["users"]
        assert (entry["user_id"], entry["presence"], entry["status_msg"]) == (
            alice.user_id,
            "online",
            "hi",
        )
        assert 0 <= entry["last_active_ago"] < 5000

        # Another life's copy is replaced whole.
        other = await _stream(http, **{**current, "ephemeral_life": "another"}, timeout_ms="0")
        assert other["ephemeral"]["full"] is True
        assert other["ephemeral"]["life"] == whole["life"]


async def test_workers_requests_are_checked(tmp_path: Path) -> None:
    port = free_port()
    config = main_process_config(tmp_path / "main", replication_port=port)
    encode = msgspec.msgpack.encode
    async with open_test_homeserver(tmp_path / "main", config=config) as main:
        alice = await main.register_user("alice")
        request = {"user_id": alice.user_id, "set_presence": "online", "timeout_ms": 0}
        async with _client(port, secret=None) as stranger:
            refused = await stranger.post(EPHEMERAL + "sync", content=encode(request))
        assert refused.status_code == 401
        assert (await main.server.presence.get_presence(alice.user_id, alice.user_id)) == {
            "presence": "offline"
        }
        async with _client(port) as http:
            unknown = await http.post(EPHEMERAL + "nonsense", content=encode(request))
            assert unknown.status_code == 404
            assert unknown.json()["errcode"] == "M_UNRECOGNIZED"
            broken = await http.post(EPHEMERAL + "sync", content=encode({"user_id": 7}))
            assert broken.status_code == 400
            assert broken.json()["errcode"] == "M_BAD_JSON"
            # The handler's own refusal is the answer.
            forbidden = {
                "requester": alice.user_id,
                "user_id": "@bob:localhost",
                "body": {"presence": "online"},
            }
            answer = await http.post(EPHEMERAL + "set_presence", content=encode(forbidden))
            assert answer.status_code == 403
            assert answer.json()["errcode"] == "M_FORBIDDEN"
            taken = await http.post(EPHEMERAL + "sync", content=encode(request))
            assert taken.status_code == 200, taken.text
        position = msgspec.msgpack.decode(taken.content)
        assert position == await main.server.presence.position()
        said = await main.server.presence.get_presence(alice.user_id, alice.user_id)
        assert said["presence"] == "online"


async def test_a_workers_request_nested_too_deeply_is_bad_json(tmp_path: Path) -> None:
    port = free_port()
    config = main_process_config(tmp_path / "main", replication_port=port)
    placeholder = "a deep value"
    async with open_test_homeserver(tmp_path / "main", config=config) as main:
        alice = await main.register_user("alice")
        request = {"requester": alice.user_id, "user_id": alice.user_id, "body": placeholder}
        encoded = msgspec.msgpack.encode(request)
        # Arrays nested 5000 deep, which the decoder cannot read.
        deep = encoded.replace(msgspec.msgpack.encode(placeholder), b"\x91" * 5_000 + b"\x90")
        async with _client(port) as http:
            answer = await http.post(EPHEMERAL + "set_presence", content=deep)
            assert answer.status_code == 400
            assert answer.json()["errcode"] == "M_BAD_JSON"
            # The main process goes on serving the worker.
            good = {**request, "body": {"presence": "online"}}
            taken = await http.post(
                EPHEMERAL + "set_presence", content=msgspec.msgpack.encode(good)
            )
            assert taken.status_code == 200
        presence = await main.server.presence.get_presence(alice.user_id, alice.user_id)
        assert presence["presence"] == "online"
