"""A worker (replication.worker.WorkerServer) beside a main homeserver, both
in the test's process: what a worker does differently from the main
process, and the replication stream that keeps it up to date.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from _worker_configs import main_and_worker_configs, main_process_config, worker_process_config

from ranvier.config import Config, ConfigError, ListenerConfig, ReplicationConfig, WorkerConfig
from ranvier.replication.worker import WorkerServer, open_worker
from ranvier.testing import Pki, free_port
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_SYNC = "/_matrix/client/v3/sync"


async def _sync_woken(
    on_worker: httpx.AsyncClient, wake: Callable[[trio.Event], Awaitable[None]]
) -> dict[str, Any]:
    """What a ``/sync`` long-poll on a worker, from where an initial sync
    left off, answers once ``wake`` has made something happen; ``wake`` is
    given the event set when the long-poll answers."""
    first = (await on_worker.get(_SYNC)).json()
    woken: list[dict[str, Any]] = []
    answered = trio.Event()

    async def long_poll() -> None:
        answer = await on_worker.get(
            _SYNC, params={"since": first["next_batch"], "timeout": "20000"}
        )
        woken.append(answer.json())
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_poll)
        await wake(answered)
        with trio.fail_after(15):
            await answered.wait()
    return woken[0]


async def _arrives(remote: TestHomeserver, event_id: str) -> None:
    """Wait, up to 30 s, for ``event_id`` to be stored at ``remote``."""
    with trio.fail_after(30):
        while await remote.server.storage.get_event(event_id) is None:  # noqa: ASYNC110
            await trio.sleep(0.01)


def test_a_worker_needs_its_main_process_and_serves_its_roles_listeners_only(
    tmp_path: Path,
) -> None:
    main = main_process_config(tmp_path / "main", replication_port=9093)
    with pytest.raises(ConfigError) as caught:
        WorkerServer(main, "client_reader")
    assert caught.value.key == "worker.main_replication_url"
    worker = worker_process_config(main, tmp_path / "worker", replication_port=9093)
    with pytest.raises(ConfigError) as caught:
        WorkerServer(worker, "federation_reader")
    assert caught.value.key == "listeners[0].type"
    assert "federation_reader" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        WorkerServer(
            msgspec.structs.replace(worker, replication=ReplicationConfig()), "client_reader"
        )
    assert caught.value.key == "replication.shared_secret"
    with pytest.raises(ValueError, match="unknown worker role"):
        WorkerServer(worker, "event_persister")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"worker": {"main_replication_url": "127.0.0.1:1"}})
    assert caught.value.key == "worker.main_replication_url"


async def test_a_worker_started_before_its_main_process_names_the_missing_file(
    tmp_path: Path,
) -> None:
    main = main_process_config(tmp_path / "main", replication_port=free_port())
    worker = worker_process_config(main, tmp_path / "worker", replication_port=free_port())
    with pytest.raises(ConfigError) as caught:
        async with open_worker(worker, "client_reader"):
            pass
    assert caught.value.key == "signing_key_path"
    assert not main.paths.database.exists()


async def test_a_logout_on_the_main_process_reaches_the_workers_token_cache(
    tmp_path: Path,
) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(worker_config, "client_reader") as worker,
    ):
        alice = await main.register_user("alice")
        worker_hs = TestHomeserver(worker)
        async with worker_hs.client(alice) as on_worker, main.client(alice) as on_main:
            whoami = "/_matrix/client/v3/account/whoami"
            # Answered from the worker's cache from now on.
            assert (await on_worker.get(whoami)).status_code == 200
            assert (await on_worker.get(whoami)).status_code == 200
            assert (await on_main.post("/_matrix/client/v3/logout")).status_code == 200
            # The stream tells the worker soon after: a few polls at most,
            # however slowly the machine runs them.
            with trio.fail_after(30):
                while (await on_worker.get(whoami)).status_code != 401:  # noqa: ASYNC110
                    await trio.sleep(0.01)


async def test_a_worker_follows_the_stream_across_a_restart_of_the_main_process(
    tmp_path: Path,
) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
    async with open_worker(worker_config, "client_reader") as worker:
        follower = worker.stream_follower
        worker_hs = TestHomeserver(worker)
        async with worker_hs.client(alice, timeout=30) as on_worker:
            event_id = ""

            async def restart_and_send(answered: trio.Event) -> None:
                nonlocal event_id
                # The main process is down: the follower fails, and tries again.
                with trio.fail_after(30):
                    while follower.failures < 2:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                assert not answered.is_set()
                async with open_test_homeserver(tmp_path / "main", config=main_config) as again:
                    event_id = await again.server.send_event(
                        alice.user_id, room_id, "m.room.message", {"body": "back", "msgtype": "m"}
                    )
                    with trio.fail_after(15):
                        await answered.wait()

            woken = await _sync_woken(on_worker, restart_and_send)
    timeline = woken["rooms"]["join"][room_id]["timeline"]["events"]
    assert [event["event_id"] for event in timeline] == [event_id]


async def test_a_join_on_a_worker_left_partial_is_resynced_by_the_main_process(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    main_config, worker_config = main_and_worker_configs(tmp_path, pki=pki)
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
    ):
        bob = await remote.register_user("bob")
        room_id = await remote.server.create_room(bob.user_id, preset="public_chat")
        for index in range(5):
            await remote.server.send_event(
                bob.user_id, room_id, "m.room.message", {"body": f"{index}", "msgtype": "m"}
            )
        async with open_worker(worker_config, "client_reader") as worker:
            alice = await TestHomeserver(worker).register_user("alice")
            await worker.join_room(alice.user_id, room_id, [remote.server_name])
            # Joined with partial state, written through the main process...
            assert await main.server.storage.is_partial_state_room(room_id) or (
                main.server.unpartial_stater.completed_resyncs == 1
            )
            # ... which the worker asked to resync the room (the main process
            # resumes partial rooms only when it starts), and did.
            with trio.fail_after(30):
                await worker.wait_for_full_state(room_id)
            assert not await main.server.storage.is_partial_state_room(room_id)
            assert main.server.unpartial_stater.completed_resyncs == 1
            assert worker.unpartial_stater.completed_resyncs == 0
            assert worker.stream_follower.known.un_partial >= 1


async def test_with_a_federation_sender_worker_the_main_process_only_queues(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    main_config, worker_config = main_and_worker_configs(tmp_path, pki=pki)
    main_config = msgspec.structs.replace(main_config, worker=WorkerConfig(federation_sender=True))
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
    ):
        alice = await main.register_user("alice")
        bob = await remote.register_user("bob")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await remote.server.join_room(bob.user_id, room_id, [main.server_name])
        worker_config = msgspec.structs.replace(
            worker_config,
            listeners=(),
        )
        async with open_worker(worker_config, "federation_sender") as worker:
            event_id = await main.server.send_event(
                alice.user_id, room_id, "m.room.message", {"body": "via the worker", "msgtype": "m"}
            )
            await _arrives(remote, event_id)
            # Delivered by the worker; the main process only noted it.
            assert main.server.federation_sender.status(remote.server_name) is None
            assert worker.federation_sender.status(remote.server_name) is not None
            assert worker.destination_waker is not None
            assert worker.destination_waker.woken >= 1


async def test_a_long_poll_on_a_worker_wakes_for_account_data_set_on_the_main_process(
    tmp_path: Path,
) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(worker_config, "client_reader") as worker,
    ):
        alice = await main.register_user("alice")
        async with (
            TestHomeserver(worker).client(alice, timeout=30) as on_worker,
            main.client(alice) as on_main,
        ):

            async def set_account_data(answered: trio.Event) -> None:
                await trio.sleep(0.2)
                assert not answered.is_set()
                path = f"/_matrix/client/v3/user/{alice.user_id}/account_data/org.example.x"
                assert (await on_main.put(path, json={"set": "there"})).status_code == 200
                # The long-poll's own timeout (20 s) is past this bound: only
                # the change can answer it in time.
                with trio.fail_after(15):
                    await answered.wait()

            woken = await _sync_woken(on_worker, set_account_data)
    events = woken["account_data"]["events"]
    assert {"type": "org.example.x", "content": {"set": "there"}} in events


async def test_a_long_poll_on_a_worker_wakes_for_a_receipt_sent_to_the_main_process(
    tmp_path: Path,
) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        bob = await main.register_user("bob")
        room_id = await main.server.create_room(alice.user_id, preset="public_chat")
        await main.server.join_room(bob.user_id, room_id)
        event_id = await main.server.send_event(
            alice.user_id, room_id, "m.room.message", {"body": "read me", "msgtype": "m"}
        )
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(bob, timeout=30) as on_worker,
            main.client(alice) as on_main,
        ):

            async def send_receipt(answered: trio.Event) -> None:
                await trio.sleep(0.2)
                assert not answered.is_set()
                path = f"/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}"
                assert (await on_main.post(path, json={})).status_code == 200

            woken = await _sync_woken(on_worker, send_receipt)
    room = woken["rooms"]["join"][room_id]
    (receipt,) = [e for e in room["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert alice.user_id in receipt["content"][event_id]["m.read"]


async def test_a_worker_reaches_a_replication_listener_on_tls(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    port = free_port()
    main_config = main_process_config(tmp_path / "main", replication_port=port, pki=pki)
    main_config = msgspec.structs.replace(
        main_config,
        listeners=(
            *main_config.listeners[:-1],
            ListenerConfig(type="replication", port=port, tls=True),
        ),
    )
    worker_config = msgspec.structs.replace(
        worker_process_config(main_config, tmp_path / "worker", replication_port=port),
        worker=WorkerConfig(
            main_replication_url=f"https://127.0.0.1:{port}", replication_ca_file=pki.ca_file
        ),
    )
    async with (
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(worker_config, "client_reader") as worker,
    ):
        assert worker.replication_client.base_url.startswith("https://")
        alice = await TestHomeserver(worker).register_user("alice")
        assert await main.server.accounts.get_requester(alice.access_token) is not None


async def test_with_a_federation_sender_worker_the_main_process_catches_no_one_up(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    main_config, worker_config = main_and_worker_configs(tmp_path, pki=pki)
    main_config = msgspec.structs.replace(main_config, worker=WorkerConfig(federation_sender=True))
    worker_config = msgspec.structs.replace(worker_config, listeners=())
    async with open_test_homeserver(tmp_path / "remote", federation=pki) as remote:
        bob = await remote.register_user("bob")
        async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
            alice = await main.register_user("alice")
            room_id = await main.server.create_room(alice.user_id, preset="public_chat")
            await remote.server.join_room(bob.user_id, room_id, [main.server_name])
            # No federation_sender runs: the message is only noted.
            event_id = await main.server.send_event(
                alice.user_id, room_id, "m.room.message", {"body": "later", "msgtype": "m"}
            )
            with trio.fail_after(30):
                while not await main.server.storage.get_destinations_with_unsent_rooms():  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert await main.server.storage.get_destinations_with_unsent_rooms() == [
                remote.server_name
            ]
        # A main process starting again leaves the destination behind to the worker.
        async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
            await trio.sleep(1)
            assert await remote.server.storage.get_event(event_id) is None
            assert main.server.federation_sender.status(remote.server_name) is None
            async with open_worker(worker_config, "federation_sender"):
                await _arrives(remote, event_id)
