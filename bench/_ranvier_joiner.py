"""A ranvier homeserver that joins one room and reports how long it took.

Run by ``bench/joins.py`` as a process of its own
(``python -m bench._ranvier_joiner '<json>'``), so that its peak resident
memory is its own and not the resident's or the benchmark's. The JSON
argument names the room, the server to join through and this server's
name, data directory, certificate and CA (see :class:`JoinerSettings`).

The server starts first and the clock only after: start-up is not the join.
Then one user joins with partial state, and the process writes one JSON
line to stdout for each step:

* ``joined``: ``join_s``, seconds until :meth:`HomeServer.join_room`
  returned, whether the room was then partial and how many members the
  state held;
* ``resynced``: ``resync_s``, seconds from the start of the join until the
  room's full state was in, with a digest of the current state (for the
  benchmark to compare with the resident's), its member count and the
  process's peak resident memory (``VmHWM``) in MiB, read as the resync
  ends, before the digest's own read of the whole state.

It then waits for a line on stdin: ``leave`` makes the user leave the room
(the resident then no longer counts this server in the room), and the end
of stdin stops the server.

With ``profile`` set, the whole run is profiled with cProfile and the stats
are written there.
"""

from __future__ import annotations

import cProfile
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench import signature_process_wanted
from ranvier.config import Config, DatabaseConfig, FederationConfig, ListenerConfig, TlsConfig
from ranvier.malloc import limit_malloc_arenas
from ranvier.protocol.auth import StateKey
from ranvier.server import open_homeserver

__all__ = ["JoinerSettings", "peak_rss_mb", "state_digest"]

_MEMBER = "m.room.member"


class JoinerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the joiner is told on its command line."""

    server_name: str
    port: int
    data_dir: str
    certificate: str
    private_key: str
    ca_file: str
    room_id: str
    via: str
    user: str
    profile: str | None = None


def peak_rss_mb(pid: int | str = "self") -> float:
    """The peak resident memory (``VmHWM``) of a process, in MiB.

    Linux keeps the high-water mark itself, so nothing has to sample the
    process while it works.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")


def state_digest(state: Mapping[StateKey, str]) -> str:
    """A digest of a room state that two servers holding the same state agree on."""
    entries = sorted(
        (event_type, state_key, event_id) for (event_type, state_key), event_id in state.items()
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _config(settings: JoinerSettings) -> Config:
    return Config(
        server_name=settings.server_name,
        data_dir=Path(settings.data_dir),
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=settings.port),),
        tls=TlsConfig(
            certificate_path=Path(settings.certificate),
            private_key_path=Path(settings.private_key),
        ),
        # A throwaway database: durability is not what is measured, and the
        # resident runs the same way.
        database=DatabaseConfig(synchronous="OFF"),
        federation=FederationConfig(
            ca_file=Path(settings.ca_file),
            request_timeout_seconds=600,
            signature_process=signature_process_wanted(),
        ),
    )


async def _join(settings: JoinerSettings) -> None:
    async with open_homeserver(_config(settings)) as hs:
        room_id = settings.room_id
        started = time.perf_counter()
        await hs.join_room(settings.user, room_id, [settings.via])
        join_s = time.perf_counter() - started
        partial = await hs.storage.is_partial_state_room(room_id)
        state = await hs.storage.get_current_state_ids(room_id)
        _say(
            step="joined",
            join_s=join_s,
            partial=partial,
            members=sum(key[0] == _MEMBER for key in state),
        )
        await hs.wait_for_full_state(room_id)
        resync_s = time.perf_counter() - started
        # Taken before the benchmark's own check reads the whole state. The
        # signature process's peak is added: it is memory the server uses.
        process = hs.signature_process
        helper_mb = peak_rss_mb(process.pid) if process is not None and process.pid else 0.0
        rss_mb = peak_rss_mb() + helper_mb
        state = await hs.storage.get_current_state_ids(room_id)
        _say(
            step="resynced",
            resync_s=resync_s,
            members=sum(key[0] == _MEMBER for key in state),
            state_digest=state_digest(state),
            rss_mb=rss_mb,
            signature_process_rss_mb=helper_mb,
        )
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            if line.strip() == "leave":
                await hs.leave_room(settings.user, room_id)
                _say(step="left")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench._ranvier_joiner '<settings as JSON>'", file=sys.stderr)
        return 2
    settings = msgspec.json.decode(argv[0], type=JoinerSettings)
    # As `ranvier serve` runs.
    limit_malloc_arenas()
    if settings.profile is None:
        trio.run(_join, settings)
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        trio.run(_join, settings)
    finally:
        profiler.disable()
        profiler.dump_stats(settings.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
