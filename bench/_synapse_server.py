"""A real Synapse on loopback for benchmarks, driven from Trio.

The launcher itself is the interop tests' (``tests/interop/_synapse.py``:
configuration, keys, start, health, stop), so the benchmarks measure the
Synapse the tests check against. This module adapts it to a Trio program:
the blocking start and stop run in a worker thread, and a task in the
caller's nursery stops Synapse if that nursery is cancelled, so a failed
or interrupted benchmark leaves no server behind.

Synapse runs from ``RANVIER_SYNAPSE_PYTHON`` if set, else from the
benchmark's own interpreter (``nox -s bench`` installs Synapse there). Its
caches keep their default size: as a baseline it runs as an operator would
run it. Each :func:`start_synapse` gets a fresh database, so a measurement
of its memory is that of one job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio
from tests.interop._synapse import (
    SynapseClientError,
    SynapseProcess,
    SynapseStartError,
    SynapseUser,
    synapse_python,
)
from tests.interop._synapse import start_synapse as _launch

from ranvier.testing.network import Pki

__all__ = [
    "SynapseClientError",
    "SynapseServer",
    "SynapseStartError",
    "SynapseUser",
    "start_synapse",
    "synapse_python",
]


@dataclass
class SynapseServer:
    """A Synapse started by :func:`start_synapse`; stop it with :meth:`stop`."""

    process: SynapseProcess
    #: Trusts Synapse's certificate.
    http: httpx.AsyncClient

    @property
    def server_name(self) -> str:
        return self.process.server_name

    @property
    def base_url(self) -> str:
        """Both APIs, over TLS."""
        return self.process.base_url

    @property
    def client_url(self) -> str:
        """The client API over plain HTTP."""
        return self.process.client_url

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_since(max_lines=lines)

    async def register(self, localpart: str) -> str:
        """A new user through the shared-secret admin API; returns its access token."""
        user = await self.process.register(self.http, localpart)
        return user.access_token

    async def register_user(
        self, http: httpx.AsyncClient, localpart: str, *, plain: bool = False
    ) -> SynapseUser:
        """A new user acting through ``http``, over plain HTTP if ``plain``."""
        return await self.process.register(http, localpart, plain=plain)

    async def join(self, token: str, room_id: str, via: str) -> None:
        """``POST /join/{roomId}`` through ``via``; returns when Synapse answers."""
        await self._user(token).join(room_id, via)

    async def joined_members(self, token: str, room_id: str) -> set[str]:
        """The room's joined members. In a room joined with partial state,
        Synapse answers only once the room's full state is in.
        """
        return await self._user(token).joined_members(room_id)

    async def leave(self, token: str, room_id: str) -> None:
        await self._user(token).leave(room_id)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within ten seconds."""
        await trio.to_thread.run_sync(self.process.stop)

    def _user(self, token: str) -> SynapseUser:
        return SynapseUser("", token, self.base_url, self.http)


async def _stop_when_cancelled(process: SynapseProcess) -> None:
    """Return once Synapse has exited; stop it first if cancelled before."""
    try:
        await trio.to_thread.run_sync(process.process.wait, abandon_on_cancel=True)
    finally:
        # Cancelled, there is no awaiting here; a stop takes at most a few seconds.
        process.stop()


async def start_synapse(
    nursery: trio.Nursery, directory: Path, pki: Pki, http: httpx.AsyncClient
) -> SynapseServer:
    """Configure a Synapse with a fresh database in ``directory`` and start
    it; return once it answers ``/health``. It is stopped when ``nursery``
    is cancelled, if not before.

    ``http`` must trust ``pki``'s CA: Synapse's certificate comes from it.
    """
    python = synapse_python()
    launch = functools.partial(_launch, python, directory, pki)
    process = await trio.to_thread.run_sync(launch, abandon_on_cancel=False)
    nursery.start_soon(_stop_when_cancelled, process)
    return SynapseServer(process, http)
