"""Fixtures for testing ranvier against a real Synapse on loopback.

One Synapse serves the whole run (it takes a few seconds to start); each
test gets a fresh ranvier HomeServer, on a port and under a server name of
its own, so Synapse never mixes up two tests' servers. Both present
certificates from one test CA: ranvier checks Synapse's, Synapse (as it
does on loopback) checks none.

These tests need Synapse installed in a Python of its own, named by
``RANVIER_SYNAPSE_PYTHON``; ``nox -s interop`` sets that up. Without it
every test here errors saying so: nothing is skipped.

When a test fails, its report ends with what Synapse logged while it ran.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import httpx
import pytest

from ranvier.config import Config, DatabaseConfig, FederationConfig, ListenerConfig, TlsConfig
from ranvier.server import HomeServer, open_homeserver
from ranvier.testing.network import Pki, free_port

from ._synapse import SYNAPSE_PYTHON_VARIABLE, SynapseProcess, start_synapse

_RUNNING: pytest.StashKey[SynapseProcess] = pytest.StashKey()
_LOG_MARK: pytest.StashKey[int] = pytest.StashKey()


@pytest.fixture(scope="session")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The CA of every certificate in the run, Synapse's and ranvier's."""
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def synapse(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, interop_pki: Pki
) -> Iterator[SynapseProcess]:
    """The Synapse of this run, healthy; stopped at the end of the run."""
    python = os.environ.get(SYNAPSE_PYTHON_VARIABLE)
    if not python:
        pytest.fail(
            f"{SYNAPSE_PYTHON_VARIABLE} is not set: run `nox -s interop`, or set it to a"
            " Python interpreter that has matrix-synapse installed",
            pytrace=False,
        )
    if not Path(python).is_file():
        pytest.fail(f"{SYNAPSE_PYTHON_VARIABLE}={python}: no such file", pytrace=False)
    # Smaller caches: one Synapse serves every test, and memory is not measured here.
    started = start_synapse(
        Path(python), tmp_path_factory.mktemp("synapse"), interop_pki, cache_factor=0.5
    )
    request.config.stash[_RUNNING] = started
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def synapse_http(synapse: SynapseProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client of Synapse's client API that checks its certificate."""
    # /joined_members on a room Synapse is still resyncing waits for it.
    async with httpx.AsyncClient(verify=synapse.client_context(), timeout=30) as http:
        yield http


@pytest.fixture
def ranvier_config(tmp_path: Path, interop_pki: Pki) -> Config:
    """The configuration of a ranvier HomeServer named ``127.0.0.1:<port>``,
    for a test that starts it (again) itself.
    """
    port = free_port()
    issued = interop_pki.ca.issue_cert("127.0.0.1", "localhost")
    certificate, private_key = tmp_path / "ranvier.crt", tmp_path / "ranvier.key"
    certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(private_key))
    return Config(
        server_name=f"127.0.0.1:{port}",
        data_dir=tmp_path / "ranvier",
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=port),),
        tls=TlsConfig(certificate_path=certificate, private_key_path=private_key),
        # Temporary files: durability is not what these tests are about.
        database=DatabaseConfig(synchronous="OFF"),
        federation=FederationConfig(ca_file=interop_pki.ca_file, request_timeout_seconds=20),
    )


@pytest.fixture
async def ranvier(ranvier_config: Config) -> AsyncIterator[HomeServer]:
    """A running ranvier HomeServer named ``127.0.0.1:<port>``."""
    async with open_homeserver(ranvier_config) as hs:
        yield hs


@pytest.fixture(autouse=True)
def _ranvier_logs_in_reports() -> Iterator[None]:
    """ranvier's INFO records in the captured log of a failing test."""
    logger = logging.getLogger("ranvier")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def _synapse_log_mark(request: pytest.FixtureRequest) -> None:
    """Where Synapse's log stood when the test began (once Synapse is up),
    so that a failure reports what Synapse logged during the test.
    """
    if "synapse" in request.fixturenames:
        running: SynapseProcess = request.getfixturevalue("synapse")
        request.node.stash[_LOG_MARK] = running.log_size()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    running = item.config.stash.get(_RUNNING, None)
    if report.failed and running is not None:
        mark = item.stash.get(_LOG_MARK, 0)
        report.sections.append(
            (f"Synapse's log during this test ({running.log_path})", running.log_since(mark))
        )
    return report
