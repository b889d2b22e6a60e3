"""Typing and presence with workers, both processes in the test's own
process and talking over loopback HTTP: the main process holds them, a
worker's changes go to it, and every process's /sync shows the same; other
servers hear of them once, from the main process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from _worker_configs import alice_on_both, main_and_worker_configs

from ranvier.config import Config, WorkerConfig
from ranvier.core.ephemeral_replica import PresenceReplica
from ranvier.replication.worker import open_worker
from ranvier.testing import Pki
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_SYNC = "/_matrix/client/v3/sync"
# Far beyond what the tests wait for a wake-up: a long-poll that only ended
# at its timeout fails the test.
_POLL_MS = 60_000
_WAIT_SECONDS = 30


async def _sync(
    client: httpx.AsyncClient, since: str | None = None, *, timeout_ms: int = 0, **params: str
) -> dict[str, Any]:
    query = {"timeout": str(timeout_ms), **params}
    if since is not None:
        query["since"] = since
    answer = await client.get(_SYNC, params=query, timeout=_POLL_MS / 1000 + 10)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _typing(sync: dict[str, Any], room_id: str) -> list[str] | None:
    """Who the sync says types in ``room_id``; None if it says nothing of it."""
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    for event in room.get("ephemeral", {}).get("events", []):
        if event["type"] == "m.typing":
            users: list[str] = event["content"]["user_ids"]
            return users
    return None


def _presence(sync: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    """The last presence the sync gives of ``user_id``."""
    found = None
    for event in sync.get("presence", {}).get("events", []):
        if event["sender"] == user_id:
            found = event["content"]
    return found


async def _woken(
    client: httpx.AsyncClient,
    since: str,
    act: Callable[[], Awaitable[None]],
    *,
    until: Callable[[dict[str, Any]], bool],
    **params: str,
) -> dict[str, Any]:
    """The sync that shows ``until``, long-polled from ``since`` on
    ``client`` while ``act`` makes it happen; the first long-poll must be
    waiting when ``act`` starts.
    """
    answers: list[dict[str, Any]] = []
    polling = trio.Event()

    async def long_poll() -> None:
        token = since
        while True:
            polling.set()
            answer = await _sync(client, token, timeout_ms=_POLL_MS, **params)
            answers.append(answer)
            if until(answer):
                return
            token = answer["next_batch"]

    with trio.fail_after(_WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await polling.wait()
            # Long enough for the request to be waiting on the server.
            await trio.sleep(0.3)
            assert answers == [], "the long-poll answered before anything happened"
            await act()
    return answers[-1]


async def _put_typing(
    client: httpx.AsyncClient,
    user_id: str,
    room_id: str,
    *,
    typing: bool,
    lasting_ms: int = 30_000,
) -> None:
    path = f"/_matrix/client/v3/rooms/{room_id}/typing/{user_id}"
    answer = await client.put(path, json={"typing": typing, "timeout": lasting_ms})
    assert answer.status_code == 200, answer.text


async def test_typing_through_either_process_is_seen_by_the_others_syncs(
    tmp_path: Path,
) -> None:
    async with alice_on_both(tmp_path) as both:
        main, alice = both.main, both.alice
        bob = await main.register_user("bob")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await main.server.join_room(bob.user_id, room_id)

        # Alice types through the worker: the main process's sync shows it,
        # and so does the worker's own at once.
        await _put_typing(both.on_worker, alice.user_id, room_id, typing=True)
        assert _typing(await _sync(both.on_main), room_id) == [alice.user_id]
        assert _typing(await _sync(both.on_worker), room_id) == [alice.user_id]
        assert main.server.typing_notices.typing_in(room_id) == [alice.user_id]

        # Bob types through the main process: a long-poll on the worker
        # wakes for it.
        since = (await _sync(both.on_worker))["next_batch"]
        async with main.client(bob) as bob_on_main:

            async def bob_types() -> None:
                await _put_typing(bob_on_main, bob.user_id, room_id, typing=True)

            woken = await _woken(
                both.on_worker,
                since,
                bob_types,
                until=lambda sync: bob.user_id in (_typing(sync, room_id) or []),
            )
        assert _typing(woken, room_id) == sorted([alice.user_id, bob.user_id])

        # A token of either process is good on the other.
        token = (await _sync(both.on_main))["next_batch"]
        await _put_typing(both.on_worker, alice.user_id, room_id, typing=False)
        assert _typing(await _sync(both.on_main, token), room_id) == [bob.user_id]
        assert _typing(await _sync(both.on_worker, token), room_id) == [bob.user_id]

        # A worker's change the main process refuses is refused to the client.
        path = f"/_matrix/client/v3/rooms/!nowhere:{main.server_name}/typing/{alice.user_id}"
        refused = await both.on_worker.put(path, json={"typing": True})
        assert refused.status_code == 403, refused.text
        assert refused.json()["errcode"] == "M_FORBIDDEN"


async def test_typing_ends_at_its_deadline_in_every_process(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        room_id = await both.main.server.create_room(both.alice.user_id)
        on_main = (await _sync(both.on_main))["next_batch"]
        on_worker = (await _sync(both.on_worker))["next_batch"]
        # Long enough for the sync below to see it first, however loaded the
        # machine: the PUT crosses to the main process and back.
        await _put_typing(both.on_worker, both.alice.user_id, room_id, typing=True, lasting_ms=3000)
        assert _typing(await _sync(both.on_worker, on_worker), room_id) == [both.alice.user_id]
        ended = {"main": trio.Event(), "worker": trio.Event()}

        async def wait_for_the_end(name: str, client: httpx.AsyncClient, since: str) -> None:
            while True:
                sync = await _sync(client, since, timeout_ms=_POLL_MS)
                if _typing(sync, room_id) == []:
                    ended[name].set()
                    return
                since = sync["next_batch"]

        with trio.fail_after(_WAIT_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_the_end, "main", both.on_main, on_main)
                nursery.start_soon(wait_for_the_end, "worker", both.on_worker, on_worker)
        assert all(event.is_set() for event in ended.values())
        assert both.main.server.typing_notices.typing_in(room_id) == []
        assert both.worker.typing_notices.typing_in(room_id) == []


async def test_presence_set_on_a_worker_reaches_the_main_process_and_another_server_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        alice_on_both(tmp_path, pki=pki) as both,
    ):
        main, alice = both.main, both.alice
        carol = await remote.register_user("carol")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await remote.server.join_room(carol.user_id, room_id, [main.server_name])
        heard: list[dict[str, Any]] = []
        lunch = trio.Event()
        taken = remote.server.presence.on_remote_presence

        async def recording(origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
            for entry in pushed:
                if entry.get("user_id") == alice.user_id:
                    heard.append(dict(entry))
                    if entry.get("status_msg") == "out to lunch":
                        lunch.set()
            return await taken(origin, pushed)

        monkeypatch.setattr(remote.server.presence, "on_remote_presence", recording)

        status = {"presence": "unavailable", "status_msg": "out to lunch"}
        path = f"/_matrix/client/v3/presence/{alice.user_id}/status"
        answer = await both.on_worker.put(path, json=status)
        assert answer.status_code == 200, answer.text
        # Seen by a sync of the main process (which leaves it as it is)...
        said = _presence(await _sync(both.on_main, set_presence="offline"), alice.user_id)
        assert said is not None
        assert (said["presence"], said["status_msg"]) == ("unavailable", "out to lunch")
        # ... by the worker's own GET at once ...
        got = await both.on_worker.get(path)
        assert got.json()["status_msg"] == "out to lunch"
        # ... and by the other server, told by the main process alone.
        with trio.fail_after(_WAIT_SECONDS):
            await lunch.wait()
        said_there = await remote.server.presence.get_presence(carol.user_id, alice.user_id)
        assert said_there["status_msg"] == "out to lunch"
        assert [entry["status_msg"] for entry in heard].count("out to lunch") == 1
        assert main.server.federation_sender.status(remote.server_name) is not None
        assert both.worker.federation_sender.status(remote.server_name) is None


async def test_a_sync_on_a_worker_brings_its_user_online_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with alice_on_both(tmp_path) as both:
        main, alice = both.main, both.alice
        bob = await main.register_user("bob")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await main.server.join_room(bob.user_id, room_id)
        # The worker's sync shows the presence it gave its own user.
        own = _presence(await _sync(both.on_worker), alice.user_id)
        assert own is not None
        assert own["presence"] == "online"
        said = await main.server.presence.get_presence(bob.user_id, alice.user_id)
        assert said["presence"] == "online"
        # Activity on the worker (a message) reaches the main process too.
        active = trio.Event()
        noted = main.server.presence.user_active

        async def recording(user_id: str) -> None:
            await noted(user_id)
            if user_id == alice.user_id:
                active.set()

        monkeypatch.setattr(main.server.presence, "user_active", recording)
        sent = await both.on_worker.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
            json={"msgtype": "m.text", "body": "hi"},
        )
        assert sent.status_code == 200, sent.text
        with trio.fail_after(_WAIT_SECONDS):
            await active.wait()
        assert both.worker.ephemeral_relay.active_sent >= 1
        assert both.worker.ephemeral_relay.active_dropped == 0
        assert not isinstance(main.server.presence, PresenceReplica)
        assert isinstance(both.worker.presence, PresenceReplica)


def _federation_reader_configs(tmp_path: Path, pki: Pki) -> tuple[Config, Config]:
    """A main process without a federation listener, and a federation_reader
    worker serving its name's port."""
    main, worker = main_and_worker_configs(tmp_path, pki=pki)
    federation = next(listener for listener in main.listeners if listener.type == "federation")
    main = msgspec.structs.replace(
        main,
        listeners=tuple(listener for listener in main.listeners if listener is not federation),
    )
    return main, msgspec.structs.replace(worker, listeners=(federation,))


async def test_a_typing_edu_taken_by_a_federation_reader_is_seen_by_the_main_process(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    main_config, worker_config = _federation_reader_configs(tmp_path, pki)
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(worker_config, "federation_reader") as worker,
    ):
        alice = await main.register_user("alice")
        carol = await remote.register_user("carol")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await remote.server.join_room(carol.user_id, room_id, [main.server_name])
        async with main.client(alice) as on_main:
            since = (await _sync(on_main))["next_batch"]

            async def carol_types() -> None:
                await remote.server.typing_notices.set_typing(
                    carol.user_id, carol.user_id, room_id, typing=True
                )

            woken = await _woken(
                on_main,
                since,
                carol_types,
                until=lambda sync: carol.user_id in (_typing(sync, room_id) or []),
            )
        assert _typing(woken, room_id) == [carol.user_id]
        # Taken by the worker (the main process has no federation listener),
        # held by the main process, copied back to the worker.
        assert main.server.typing_notices.typing_in(room_id) == [carol.user_id]
        assert worker.typing_notices.typing_in(room_id) == [carol.user_id]


async def test_with_a_federation_sender_worker_typing_leaves_once_from_the_main_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki.create(tmp_path)
    main_config, reader_config = main_and_worker_configs(tmp_path, pki=pki)
    main_config = msgspec.structs.replace(main_config, worker=WorkerConfig(federation_sender=True))
    reader_config = msgspec.structs.replace(
        reader_config,
        worker=msgspec.structs.replace(reader_config.worker, federation_sender=True),
    )
    sender_config = msgspec.structs.replace(
        reader_config, data_dir=tmp_path / "sender", listeners=()
    )
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(reader_config, "client_reader") as reader,
        open_worker(sender_config, "federation_sender") as sender,
    ):
        alice = await main.register_user("alice")
        carol = await remote.register_user("carol")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await remote.server.join_room(carol.user_id, room_id, [main.server_name])
        heard: list[bool] = []
        stopped = trio.Event()
        taken = remote.server.typing_notices.on_remote_typing

        async def recording(origin: str, room: str, user_id: str, typing: bool) -> bool:
            if user_id == alice.user_id:
                heard.append(typing)
                if not typing:
                    stopped.set()
            return await taken(origin, room, user_id, typing)

        monkeypatch.setattr(remote.server.typing_notices, "on_remote_typing", recording)
        async with TestHomeserver(reader).client(alice) as on_reader:
            await _put_typing(on_reader, alice.user_id, room_id, typing=True)
            await _put_typing(on_reader, alice.user_id, room_id, typing=False)
        with trio.fail_after(_WAIT_SECONDS):
            await stopped.wait()
        # Each said once, in order: by the main process, which holds typing;
        # the workers' senders never had it.
        assert heard == [True, False]
        assert reader.typing_notices.typing_in(room_id) == []
        assert main.server.federation_sender.status(remote.server_name) is not None
        assert reader.federation_sender.status(remote.server_name) is None
        assert sender.federation_sender.status(remote.server_name) is None
