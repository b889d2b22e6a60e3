import gc
import os
import re
import socket
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import ranvier
from ranvier.config import Config, ConfigError, DatabaseConfig, ListenerConfig, TlsConfig
from ranvier.federation.transport.request_signing import XMatrixAuth
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.federation.transport.server import Request
from ranvier.federation.transport.tls import CertificateFileError, client_ssl_context
from ranvier.keyfile import KeyFileError
from ranvier.protocol.signing import (
    generate_signing_key,
    key_id,
    read_signing_keys,
    verify_signed_json,
)
from ranvier.server import HomeServer, open_homeserver
from ranvier.testing.homeserver import open_test_homeserver
from ranvier.testing.network import Pki, free_port

SERVER_NAME = "hs.test:8448"
VERSION_PATH = "/_matrix/federation/v1/version"
KEYS_PATH = "/_matrix/key/v2/server"


def _config(data_dir: Path, **changes: Any) -> Config:
    settings: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "data_dir": data_dir,
        "listeners": (ListenerConfig(type="federation", host="127.0.0.1", port=0),),
        # Temporary files: durability is not what these tests are about.
        "database": DatabaseConfig(synchronous="OFF"),
    }
    settings.update(changes)
    return Config(**settings)


def _client(data_dir: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=client_ssl_context(ca_file=data_dir / "tls.crt"), timeout=10)


def _url(server: HomeServer, path: str) -> str:
    return f"https://127.0.0.1:{server.federation_port}{path}"


async def _refused(port: int) -> bool:
    with trio.socket.socket() as sock:
        try:
            await sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_serves_version_and_keys_over_https(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_homeserver(_config(data_dir)) as server, _client(data_dir) as client:
        assert server.federation_port > 0
        (bound,) = server.listeners
        assert bound.url == f"https://127.0.0.1:{server.federation_port}"

        version = await client.get(_url(server, VERSION_PATH))
        assert version.status_code == 200
        assert version.json() == {"server": {"name": "ranvier", "version": ranvier.__version__}}

        response = await client.get(_url(server, KEYS_PATH))
        assert response.status_code == 200
        keys = response.json()
        (on_disk,) = read_signing_keys((data_dir / "signing.key").read_text())
        assert keys["server_name"] == SERVER_NAME
        assert keys["verify_keys"].keys() == {key_id(on_disk)}
        verify_signed_json(keys, SERVER_NAME, on_disk.verify_key)
        assert on_disk.encode() == server.signing_key.encode()
        # Valid for the configured day, give or take the request's time.
        valid_for = keys["valid_until_ts"] - wall_clock_ms()
        assert 86_390_000 < valid_for <= 86_400_000

    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "signing.key") == 0o600
    assert _mode(data_dir / "tls.key") == 0o600
    assert (data_dir / "homeserver.db").is_file()


async def test_leaving_the_block_closes_the_port(tmp_path: Path) -> None:
    async with open_homeserver(_config(tmp_path)) as server, _client(tmp_path) as client:
        port = server.federation_port
        assert (await client.get(_url(server, VERSION_PATH))).status_code == 200
    assert await _refused(port)


async def test_a_restart_keeps_key_certificate_and_database(tmp_path: Path) -> None:
    async with open_homeserver(_config(tmp_path)) as first:
        key = first.signing_key.encode()
        await first.storage.store_room("!room:hs.test", "10")
    certificate = (tmp_path / "tls.crt").read_bytes()
    key_file = (tmp_path / "signing.key").read_bytes()

    async with open_homeserver(_config(tmp_path)) as second, _client(tmp_path) as client:
        assert second.signing_key.encode() == key
        assert await second.storage.get_room_version("!room:hs.test") == "10"
        # The first start's certificate is what the second one presents.
        response = await client.get(_url(second, KEYS_PATH))
        verify_signed_json(response.json(), SERVER_NAME, second.signing_key.verify_key)
    assert (tmp_path / "tls.crt").read_bytes() == certificate
    assert (tmp_path / "signing.key").read_bytes() == key_file


async def test_federation_requests_are_checked_with_the_key_ring(tmp_path: Path) -> None:
    async with open_homeserver(_config(tmp_path)) as server, _client(tmp_path) as client:

        async def whoami(request: Request) -> Mapping[str, Any]:
            return {"origin": request.origin}

        # The router stays open: later parts register their routes the same way.
        server.federation_app.router.add("GET", "/_matrix/federation/v1/whoami", whoami)
        url = _url(server, "/_matrix/federation/v1/whoami")

        unsigned = await client.get(url)
        assert unsigned.status_code == 401

        ours = XMatrixAuth(
            origin=SERVER_NAME, destination=SERVER_NAME, signing_key=server.signing_key
        )
        signed = await client.get(url, auth=ours)
        assert signed.status_code == 200, signed.text
        assert signed.json() == {"origin": SERVER_NAME}

        impostor = XMatrixAuth(
            origin=SERVER_NAME,
            destination=SERVER_NAME,
            signing_key=generate_signing_key(server.signing_key.version),
        )
        forged = await client.get(url, auth=impostor)
        assert forged.status_code == 401
        assert forged.json()["errcode"] == "M_UNAUTHORIZED"

        # A remote whose keys cannot be fetched (nothing listens there).
        remote = f"127.0.0.1:{free_port()}"
        stranger = XMatrixAuth(
            origin=remote, destination=SERVER_NAME, signing_key=generate_signing_key("x")
        )
        unknown = await client.get(url, auth=stranger)
        assert unknown.status_code == 401
        assert remote in unknown.json()["error"]


async def test_shutdown_stops_listeners_before_storage(tmp_path: Path) -> None:
    # A request still being answered when the server stops may write: the
    # storage actor outlives the listeners.
    entered = trio.Event()
    outcome: list[str] = []

    async def slow(request: Request) -> Mapping[str, Any]:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await server.storage.store_room("!late:hs.test", "11")
                except Exception as exc:
                    outcome.append(f"failed: {exc!r}")
                else:
                    outcome.append("stored")
        raise AssertionError("unreachable")

    async def request(url: str) -> None:
        # The server goes away mid-request.
        async with _client(tmp_path) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(url)

    async with trio.open_nursery() as nursery, open_homeserver(_config(tmp_path)) as server:
        server.federation_app.router.add("GET", "/_matrix/key/slow", slow)
        nursery.start_soon(request, _url(server, "/_matrix/key/slow"))
        await entered.wait()
    assert outcome == ["stored"]
    async with open_homeserver(_config(tmp_path)) as again:
        assert await again.storage.get_room_version("!late:hs.test") == "11"


def _our_threads() -> set[threading.Thread]:
    # Trio keeps idle worker threads for a while; they are its own, reused
    # by the next call, not ours. While one runs a job it is named
    # "<function> from <task>", as trio.to_thread documents.
    return {
        thread
        for thread in threading.enumerate()
        if not thread.name.startswith("Trio thread")
        and " from " not in thread.name
        and thread is not threading.main_thread()
    }


async def test_no_thread_outlives_the_server(tmp_path: Path) -> None:
    before = _our_threads()
    async with open_homeserver(_config(tmp_path)) as server:
        await server.storage.store_room("!room:hs.test", "10")
        # The first housekeeping pass reads on Trio's threads, named for
        # their job while it runs.
        await server.housekeeping.wait_for_pass(1)
        started = _our_threads() - before
        assert {thread.name for thread in started} == {"ranvier-storage-writer"}
    # The writer thread is told to end as the actor stops; it may take a
    # moment to see that.
    for thread in started:
        await trio.to_thread.run_sync(thread.join, 5)
    # Threads of earlier tests may have ended meanwhile; none is new.
    assert _our_threads() <= before


async def test_a_port_in_use_fails_the_start_plainly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = (
            ListenerConfig(type="federation", port=0),
            ListenerConfig(type="federation", port=port),
        )
        with pytest.raises(OSError, match=re.escape(f"cannot listen on 127.0.0.1:{port}")):
            async with open_homeserver(_config(tmp_path, listeners=listeners)):
                raise AssertionError("started on a port in use")
    # What did start (storage, the first listener) has stopped: the database
    # is free for the next start.
    async with open_homeserver(_config(tmp_path)) as server:
        await server.storage.store_room("!room:hs.test", "10")


async def test_a_bad_configuration_names_the_key() -> None:
    config = Config(listeners=(ListenerConfig(type="federation", port=70000),))
    with pytest.raises(ConfigError) as caught:
        HomeServer(config)
    assert caught.value.key == "listeners[0].port"
    assert "listeners[0].port" in str(caught.value)
    with pytest.raises(ConfigError, match=re.escape("listeners[0].port")):
        async with open_homeserver(config):
            raise AssertionError("started with a bad configuration")


async def test_a_malformed_key_file_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "signing.key").write_text("ed25519 a_1 not-base64!\n")
    with pytest.raises(KeyFileError) as caught:
        async with open_homeserver(_config(tmp_path)):
            raise AssertionError("started with a bad key")
    assert caught.value.path == tmp_path / "signing.key"
    assert caught.value.line == 1
    assert not (tmp_path / "homeserver.db").exists()


async def test_a_configured_certificate_that_is_missing_is_not_replaced(tmp_path: Path) -> None:
    certificate = tmp_path / "real.crt"
    tls = TlsConfig(certificate_path=certificate, private_key_path=tmp_path / "real.key")
    with pytest.raises(CertificateFileError, match=re.escape(str(certificate))):
        async with open_homeserver(_config(tmp_path, tls=tls)):
            raise AssertionError("started without its certificate")
    assert not certificate.exists()
    assert not (tmp_path / "tls.crt").exists()


async def test_half_a_certificate_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not really\n")
    with pytest.raises(CertificateFileError, match=re.escape("tls.key does not exist")):
        async with open_homeserver(_config(tmp_path)):
            raise AssertionError("started with half a certificate")


async def test_plain_http_listeners_need_no_certificate(tmp_path: Path) -> None:
    listeners = (ListenerConfig(type="federation", port=0, tls=False),)
    async with (
        open_homeserver(_config(tmp_path, listeners=listeners)) as server,
        httpx.AsyncClient() as client,
    ):
        (bound,) = server.listeners
        assert bound.scheme == "http"
        response = await client.get(f"{bound.url}{VERSION_PATH}")
        assert response.status_code == 200
    assert not (tmp_path / "tls.crt").exists()


async def test_a_client_listener_serves_the_client_api_over_plain_http(tmp_path: Path) -> None:
    listeners = (
        ListenerConfig(type="client", port=0),
        ListenerConfig(type="federation", port=0),
    )
    async with (
        open_homeserver(_config(tmp_path, listeners=listeners)) as server,
        httpx.AsyncClient() as client,
    ):
        client_listener, federation_listener = server.listeners
        assert (client_listener.config.type, client_listener.scheme) == ("client", "http")
        assert federation_listener.scheme == "https"
        response = await client.get(f"{client_listener.url}/_matrix/client/versions")
        assert response.status_code == 200
        assert "v1.11" in response.json()["versions"]
        assert response.headers["access-control-allow-origin"] == "*"
        # The federation API is not served on the client listener.
        response = await client.get(f"{client_listener.url}{VERSION_PATH}")
        assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED")


async def test_the_data_directory_is_created_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    previous = os.umask(0)
    try:
        async with open_homeserver(_config(data_dir)):
            pass
    finally:
        os.umask(previous)
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "signing.key") == 0o600


async def test_an_existing_data_directory_keeps_its_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o750)
    async with open_homeserver(_config(tmp_path)):
        pass
    assert _mode(tmp_path) == 0o750


async def test_a_file_where_the_data_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        async with open_homeserver(_config(tmp_path / "data")):
            raise AssertionError("started without a data directory")


async def test_an_error_in_the_block_comes_out_as_itself(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        async with open_homeserver(_config(tmp_path)):
            _ = 1 / 0


async def test_cancelling_around_the_block_stops_the_server(tmp_path: Path) -> None:
    # Cancelled once it is up, however long starting takes.
    with trio.CancelScope() as scope:
        async with open_homeserver(_config(tmp_path)) as server:
            port = server.federation_port
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert await _refused(port)


async def test_run_in_a_nursery_reports_ready(tmp_path: Path) -> None:
    server = HomeServer(_config(tmp_path))
    with pytest.raises(RuntimeError, match="has not started"):
        _ = server.federation_port
    with pytest.raises(RuntimeError, match="has not started"):
        _ = server.storage
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert await server.storage.get_room_version("!none:hs.test") is None
        with pytest.raises(RuntimeError, match="runs once"):
            await nursery.start(server.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="runs once"):
        await server.run()


async def test_start_up_objects_are_frozen_out_of_the_collector_once(tmp_path: Path) -> None:
    async with open_homeserver(_config(tmp_path / "first")):
        frozen = gc.get_freeze_count()
        assert frozen > 0
    # Objects made since (the second server's own) are left to the collector.
    async with open_homeserver(_config(tmp_path / "second")):
        assert gc.get_freeze_count() == frozen


async def test_a_homeserver_without_federation_listeners(tmp_path: Path) -> None:
    async with open_homeserver(_config(tmp_path, listeners=())) as server:
        assert server.listeners == ()
        with pytest.raises(RuntimeError, match="no federation listener"):
            _ = server.federation_port
        await server.storage.store_room("!room:hs.test", "10")


async def test_local_users_act_through_the_server(tmp_path: Path) -> None:
    server = HomeServer(_config(tmp_path))
    with pytest.raises(RuntimeError, match="has not started"):
        await server.create_room("@alice:hs.test")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        alice, bob = "@alice:hs.test:8448", "@bob:hs.test:8448"
        room_id = await server.create_room(alice, preset="public_chat", name="Lobby")
        assert await server.join_room(bob, room_id) in await server.storage.get_forward_extremities(
            room_id
        )
        message = await server.send_event(bob, room_id, "m.room.message", {"body": "hi"})
        invite = await server.invite(alice, room_id, "@carol:hs.test:8448")
        leave = await server.leave_room(bob, room_id)
        rows = await server.storage.get_events([message, invite, leave])
        assert {row.type for row in rows.values()} == {"m.room.message", "m.room.member"}
        assert all(not row.outlier and row.rejected_reason is None for row in rows.values())
        # Nobody else is in the room: nothing was queued for another server.
        assert server.federation_sender.active_destinations == frozenset()
        with pytest.raises(ranvier.MatrixError) as not_a_room:
            await server.join_room(bob, "#lobby:hs.test:8448")
        assert not_a_room.value.errcode == "M_INVALID_PARAM"
        nursery.cancel_scope.cancel()


# Each API's listener answers a path it does not serve with 404 and a
# method a served path does not take with 405, both M_UNRECOGNIZED.
_UNKNOWN_ON_CLIENT_LISTENER = [
    ("GET", "/_matrix/unknown", 404),
    ("GET", "/_matrix/client/unknown", 404),
    ("GET", "/_matrix/client/v1/unknown", 404),
    ("GET", "/_matrix/client/v3/room/unknown", 404),
    ("PUT", "/_matrix/client/v3/login", 405),
    ("GET", "/_matrix/media/unknown", 404),
    ("GET", "/_matrix/media/v3/unknown", 404),
    ("PATCH", "/_matrix/media/v3/upload", 405),
]
_UNKNOWN_ON_FEDERATION_LISTENER = [
    ("GET", "/_matrix/unknown", 404),
    ("GET", "/_matrix/federation/unknown", 404),
    ("GET", "/_matrix/federation/v1/unknown", 404),
    ("PUT", "/_matrix/federation/v1/version", 405),
    ("GET", "/_matrix/key/unknown", 404),
    ("GET", "/_matrix/key/v2/unknown", 404),
    ("PUT", "/_matrix/key/v2/query", 405),
]


async def test_unknown_endpoints_and_methods_are_unrecognized(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with open_test_homeserver(tmp_path / "hs", federation=pki) as hs:
        user = await hs.register_user("alice")
        async with (
            hs.client(user) as client,
            httpx.AsyncClient(
                base_url=hs.federation_url, verify=pki.client_context()
            ) as federation,
        ):
            for http, cases in (
                (client, _UNKNOWN_ON_CLIENT_LISTENER),
                (federation, _UNKNOWN_ON_FEDERATION_LISTENER),
            ):
                for method, path, status in cases:
                    response = await http.request(method, path)
                    assert response.status_code == status, (method, path)
                    assert response.json()["errcode"] == "M_UNRECOGNIZED", (method, path)
