"""A whole ranvier homeserver inside a test, started in milliseconds.

Projects that talk to a Matrix homeserver (bots, clients, bridges) can test
against a real one in their own test process, on a temporary directory::

    async with open_test_homeserver(tmp_path) as hs:
        alice = await hs.register_user("alice")
        async with hs.client(alice) as client:
            response = await client.get("/_matrix/client/v3/account/whoami")

:func:`open_test_homeserver` runs the same :class:`~ranvier.server.HomeServer`
that ``ranvier serve`` runs, with settings for tests: the client API on
plain HTTP on 127.0.0.1 and a port the system picks, SQLite with
``synchronous = OFF`` (a test's database need not survive a power cut),
open registration (so a client under test can ``/register``), password
hashes at argon2id's lowest cost (microseconds, not a fifth of a second,
for each registration and login with a password), no rate limits, no
housekeeping task (tests set the clocks of the parts whose rows it would
prune; ``hs.server.housekeeping.run_pass`` runs a pass), and no
federation listener unless the test asks for one by
passing a :class:`~ranvier.testing.network.Pki`, whose CA signs the
listener's certificate and is the only CA the server trusts, so that two
test homeservers federate with each other over TLS on loopback.

Without a Pki the server trusts no CA at all for its outgoing requests
(only a certificate whose key was thrown away), so a test that reaches for
another server by mistake fails instead of reaching the internet; not
loading the system's CA certificates also saves more than half of a start.
A new data directory gets its database as a copy of an empty one migrated
once a process, which saves most of the rest.

For pytest (with pytest-trio), :mod:`ranvier.testing.pytest_plugin` gives
the same as a fixture; docs/testing.md shows both.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from ranvier.config import (
    Config,
    DatabaseConfig,
    FederationConfig,
    HousekeepingConfig,
    ListenerConfig,
    RateLimitConfig,
    RegistrationConfig,
    TlsConfig,
)
from ranvier.federation.transport.tls import generate_self_signed_certificate
from ranvier.server import HomeServer, open_homeserver
from ranvier.storage.schema import migrate

from .network import Pki, free_port

__all__ = [
    "RestartableHomeserver",
    "TestHomeserver",
    "TestUser",
    "config_for_tests",
    "federating_config",
    "loopback_tls",
    "open_test_homeserver",
]

#: How long a request of a test client may take before it times out.
_CLIENT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class TestUser:
    """A registered user, logged in on one device."""

    # Not a test class, though pytest would collect it by its name.
    __test__ = False

    user_id: str
    access_token: str
    device_id: str


class TestHomeserver:
    """A running test homeserver: the server, its URLs, and shortcuts."""

    __test__ = False

    def __init__(self, server: HomeServer) -> None:
        #: The :class:`~ranvier.server.HomeServer` itself, for reaching past the API.
        self.server = server

    @property
    def server_name(self) -> str:
        return self.server.server_name

    @property
    def client_url(self) -> str:
        """The client-server API's base URL, such as ``http://127.0.0.1:41234``."""
        return self._url("client")

    @property
    def federation_url(self) -> str:
        """The federation listener's base URL (only when started with a Pki)."""
        return self._url("federation")

    def _url(self, listener_type: str) -> str:
        for bound in self.server.listeners:
            if bound.config.type == listener_type:
                return bound.url
        raise RuntimeError(f"this test homeserver has no {listener_type} listener")

    async def register_user(
        self, localpart: str, password: str | None = None, *, admin: bool = False
    ) -> TestUser:
        """Create an account and log in a device for it.

        It is made directly, not through ``/register``, so it works whatever
        the server's registration policy. Without a ``password`` (the
        default, and quicker: no password hash to compute) the account can
        use only the token returned.
        """
        registration = await self.server.accounts.register(localpart, password, admin=admin)
        assert registration.access_token is not None
        assert registration.device_id is not None
        return TestUser(registration.user_id, registration.access_token, registration.device_id)

    def client(self, user: TestUser | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client for the client API, sending ``user``'s token if given.

        Keyword arguments go to :class:`httpx.AsyncClient`. Use it as
        ``async with``, which closes it. A request may take a minute before
        it times out, where httpx's own default is 5 s: on a loaded test
        machine, a request that does real work (a join over federation, a
        password hash) may take longer than that without anything being
        wrong.
        """
        kwargs.setdefault("timeout", _CLIENT_TIMEOUT_SECONDS)
        headers = httpx.Headers(kwargs.pop("headers", None))
        if user is not None:
            headers["Authorization"] = f"Bearer {user.access_token}"
        return httpx.AsyncClient(base_url=self.client_url, headers=headers, **kwargs)


def config_for_tests(
    data_dir: Path,
    *,
    federation: Pki | None = None,
    rate_limits: bool = False,
    server_name: str = "localhost",
) -> Config:
    """The configuration :func:`open_homeserver` is given; see the module's doc.

    With ``federation``, the server is named ``127.0.0.1:<port>`` after its
    federation listener (a free port chosen now), so other servers reach it
    by its name, and ``server_name`` is not used.
    """
    listeners = [ListenerConfig(type="client", host="127.0.0.1", port=0)]
    data_dir.mkdir(parents=True, exist_ok=True)
    tls = TlsConfig()
    if federation is None:
        ca_file = data_dir / "trusted-ca.pem"
        ca_file.write_bytes(_untrusted_certificate())
        federation_config = FederationConfig(ca_file=ca_file)
    else:
        port = free_port()
        server_name = f"127.0.0.1:{port}"
        tls = loopback_tls(federation, data_dir / "tls")
        federation_config = FederationConfig(ca_file=federation.ca_file, request_timeout_seconds=10)
        listeners.append(ListenerConfig(type="federation", host="127.0.0.1", port=port))
    return Config(
        server_name=server_name,
        data_dir=data_dir,
        listeners=tuple(listeners),
        tls=tls,
        database=DatabaseConfig(synchronous="OFF"),
        federation=federation_config,
        ratelimit=RateLimitConfig(enabled=rate_limits),
        housekeeping=HousekeepingConfig(enabled=False),
        registration=RegistrationConfig(
            enabled=True,
            password_hash_time_cost=1,
            password_hash_memory_kib=8,
            password_hash_parallelism=1,
        ),
    )


def loopback_tls(pki: Pki, stem: Path) -> TlsConfig:
    """A certificate for 127.0.0.1 from ``pki``'s CA, written to
    ``stem.crt`` and ``stem.key``, as a server's TLS settings."""
    issued = pki.ca.issue_cert("127.0.0.1")
    certificate, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
    certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return TlsConfig(certificate_path=certificate, private_key_path=key)


def federating_config(directory: Path, pki: Pki, label: str, *extra: ListenerConfig) -> Config:
    """A whole server's settings for tests of servers federating over TLS on
    loopback, kept across its restarts: named ``127.0.0.1:<port>`` after a
    federation listener on a free port, with a certificate from ``pki``
    and ``pki``'s CA the only one trusted, its data in ``directory/label``,
    and ``extra`` listeners (a client listener, say). Nothing else is set
    for tests: registration and rate limits are as by default."""
    port = free_port()
    return Config(
        server_name=f"127.0.0.1:{port}",
        data_dir=directory / label,
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=port), *extra),
        tls=loopback_tls(pki, directory / label),
        # A test's database need not survive a power cut.
        database=DatabaseConfig(synchronous="OFF"),
        federation=FederationConfig(ca_file=pki.ca_file, request_timeout_seconds=10),
    )


class RestartableHomeserver:
    """A homeserver a test stops and starts again on the same data, in the
    test's ``nursery``."""

    def __init__(self, nursery: trio.Nursery, config: Config) -> None:
        self._nursery = nursery
        self.config = config
        self._stop = trio.Event()
        self._stopped = trio.Event()

    async def start(self) -> HomeServer:
        """Start it; the server once it serves."""
        self._stop, self._stopped = trio.Event(), trio.Event()
        started: HomeServer = await self._nursery.start(self._serve, self._stop, self._stopped)
        return started

    async def stop(self) -> None:
        """Stop it, returning once it has stopped."""
        self._stop.set()
        await self._stopped.wait()

    async def _serve(
        self, stop: trio.Event, stopped: trio.Event, *, task_status: trio.TaskStatus[HomeServer]
    ) -> None:
        try:
            async with open_homeserver(self.config) as hs:
                task_status.started(hs)
                await stop.wait()
        finally:
            stopped.set()


_untrusted: bytes | None = None
_empty: bytes | None = None


def _empty_database() -> bytes:
    """A database file at the current schema version with nothing in it.

    Migrating takes tens of milliseconds, copying a file almost none: it is
    migrated once a process, by this code's own migrations, so a copy is
    exactly what the server would have made.
    """
    global _empty
    if _empty is None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "empty.db"
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                migrate(conn)
            _empty = path.read_bytes()
    return _empty


def _untrusted_certificate() -> bytes:
    """A self-signed certificate whose private key nobody has: trusting it
    alone trusts no server. Made once a process (a few milliseconds).
    """
    global _untrusted
    if _untrusted is None:
        _untrusted, _ = generate_self_signed_certificate("untrusted.invalid")
    return _untrusted


@asynccontextmanager
async def open_test_homeserver(
    data_dir: Path,
    *,
    federation: Pki | None = None,
    rate_limits: bool = False,
    server_name: str = "localhost",
    config: Config | None = None,
) -> AsyncIterator[TestHomeserver]:
    """Run a homeserver for tests in ``data_dir`` for an ``async with`` block.

    ``config`` replaces the whole configuration (start from
    :func:`config_for_tests` and change what the test needs); the
    other arguments are then not used. Leaving the block stops the server
    and every task it started.
    """
    if config is None:
        config = config_for_tests(
            data_dir, federation=federation, rate_limits=rate_limits, server_name=server_name
        )
    database = config.paths.database
    if not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        database.write_bytes(_empty_database())
    async with open_homeserver(config) as server:
        yield TestHomeserver(server)
