"""Joining a big room with partial state, and the resync after: ranvier beside Synapse.

A ranvier homeserver, the *resident*, runs in this process on loopback with
TLS and holds a public room of 1,000, 10,000 or 50,000 members (sizes from
``RANVIER_BENCH_JOIN_SIZES=1000,10000`` if set). The room is real: each
member's join is hashed and signed with the resident's key and taken
through core as an event pushed over federation is (context, the three
auth checks, current state), fifty to a write as a transaction's events
are. Building it is timed apart (``build_s``) and counts nowhere else;
then the room's creator sends a message, as in a live room, which warms
what a resident hosting the room would have warm for both joiners alike.

Then two kinds of server join it, each with partial state (MSC3706):

* a ranvier homeserver in a process of its own (``bench/_ranvier_joiner.py``):
  ``join_s`` is until :meth:`HomeServer.join_room` returns, ``resync_s``
  from the same start until :meth:`HomeServer.wait_for_full_state` does;
* a fresh Synapse (a new database for each size), whose user joins through
  the client API, ``POST /join/{roomId}?server_name=<resident>``:
  ``synapse_join_s`` is until that answers, ``synapse_resync_s`` from the
  same start until ``GET /rooms/{roomId}/joined_members`` answers, which
  Synapse holds back until the room's full state is in.

ranvier joins first, then Synapse, each a new server; each joiner's user
leaves again before the next joins, so all join a room of the same members
through the same resident (whatever the resident keeps warmer by then
favours Synapse). Every joiner keeps running, idle, until the room is done
with: the next ones fetch its key to check the join and leave it signed.
Rooms of up to 10,000 members are joined three times by each
(``RANVIER_BENCH_JOIN_REPEATS`` to change it, for every size), and the
shortest times are kept: on a shared machine, the longer ones measure the
rest of the machine. ``rss_mb`` and ``synapse_rss_mb`` are the joiners'
highest peak resident memory (``VmHWM``), start-up included.

A fast but wrong result fails the benchmark: the ranvier joiner must come
back partial from the join and hold, after the resync, exactly the
resident's current state; Synapse must answer with exactly the resident's
joined members.

``resync_speedup_vs_synapse`` is Synapse's resync time over ranvier's at
10,000 members (at the largest size run, if 10,000 is not). The aims:
joins at least as fast as Synapse's at every size, resyncs ten times as
fast, a third of Synapse's memory; ``aims_met`` says which hold.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import trio

from bench import JsonLines
from bench._ranvier_joiner import JoinerSettings, peak_rss_mb, state_digest
from bench._synapse_server import start_synapse, synapse_python
from ranvier.config import Config, DatabaseConfig, FederationConfig, ListenerConfig, TlsConfig
from ranvier.core.ingest_batch import RoomRun
from ranvier.server import HomeServer, open_homeserver
from ranvier.testing import Pki, RoomBuilder, free_port, ingest

SIZES: Final = (1_000, 10_000, 50_000)
SIZES_VARIABLE: Final = "RANVIER_BENCH_JOIN_SIZES"
#: Joins of each kind per room, the best kept; bigger rooms are joined once.
REPEATS: Final = 3
REPEATED_UP_TO: Final = 10_000
REPEATS_VARIABLE: Final = "RANVIER_BENCH_JOIN_REPEATS"
HEADLINE_MEMBERS: Final = 10_000
VERSION: Final = "12"
#: Events per write while building a room: a federation transaction's worth.
BUILD_BATCH: Final = 50
#: The bound on one joiner's join and resync, however big the room.
JOINER_SECONDS: Final = 1800.0
_ROOT: Final = Path(__file__).resolve().parent.parent
_MEMBER: Final = "m.room.member"


def _sizes() -> list[int]:
    text = os.environ.get(SIZES_VARIABLE, "").strip()
    if not text:
        return list(SIZES)
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"{SIZES_VARIABLE}={text!r}: not a comma-separated list of numbers"
        ) from None
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"{SIZES_VARIABLE}={text!r}: member counts must be at least 1")
    return sizes


def _repeats(members: int) -> int:
    text = os.environ.get(REPEATS_VARIABLE, "").strip()
    if not text:
        return REPEATS if members <= REPEATED_UP_TO else 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{REPEATS_VARIABLE}={text!r}: not a whole number of at least 1")
    return int(text)


def _best(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The shortest times of several runs (the longer ones measure the rest
    of the machine) and the highest peak memory.
    """
    return {
        **runs[0],
        "join_s": min(run["join_s"] for run in runs),
        "resync_s": min(run["resync_s"] for run in runs),
        "rss_mb": max(run["rss_mb"] for run in runs),
    }


def _progress(text: str) -> None:
    print(f"[joins] {text}", flush=True)


def _certificate(pki: Pki, directory: Path, label: str) -> tuple[Path, Path]:
    issued = pki.ca.issue_cert("127.0.0.1", "localhost")
    certificate, key = directory / f"{label}.crt", directory / f"{label}.key"
    certificate.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return certificate, key


def _resident_config(directory: Path, pki: Pki) -> Config:
    port = free_port()
    certificate, key = _certificate(pki, directory, "resident")
    return Config(
        server_name=f"127.0.0.1:{port}",
        data_dir=directory / "resident",
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=port),),
        tls=TlsConfig(certificate_path=certificate, private_key_path=key),
        # Temporary files: durability is not what is measured.
        database=DatabaseConfig(synchronous="OFF"),
        federation=FederationConfig(ca_file=pki.ca_file, request_timeout_seconds=600),
    )


# --- The resident's room --------------------------------------------------------------


async def _build_room(hs: HomeServer, members: int) -> str:
    """A public, named room on the resident with ``members`` of its users joined."""
    alice = f"@alice:{hs.server_name}"
    room = RoomBuilder(VERSION, alice, keys={hs.server_name: hs.signing_key})
    room.public_room()
    room.state_event(alice, "m.room.name", {"name": f"{members} members"})
    # Every join is authorised by the same few events; without a copy of
    # the whole state per event, building 50,000 of them stays linear.
    before_joins = dict(room.state)
    room.track_state = False
    for n in range(members):
        user = f"@member{n}:{hs.server_name}"
        room.member(user, "join", content={"displayname": f"Member {n}"}, state=before_joins)
    events = room.order
    step = max(1, len(events) // 10 // BUILD_BATCH * BUILD_BATCH)
    async with hs.room_locks.hold(room.room_id):
        for start in range(0, len(events), BUILD_BATCH):
            batch = events[start : start + BUILD_BATCH]
            run = RoomRun(hs.storage, hs.storage, room.room_id, room.room_version)
            await run.load(batch)
            for event in batch:
                outcome = await ingest(run, event)
                if outcome.failure is not None:
                    raise AssertionError(f"{event!r} failed the auth checks: {outcome.failure}")
            await run.write()
            if start and start % step == 0:
                _progress(f"  {start:,} of {len(events):,} events written")
    return room.room_id


async def _liven(hs: HomeServer, room_id: str) -> None:
    """Make the resident as a server that has been hosting the room would be.

    The room's creator says something, through the resident's own event
    creation, so that what a live room keeps warm (the members' servers,
    the current state in SQLite's page cache) is warm for both joiners and
    not only for the second; the building's garbage is collected first.
    """
    gc.collect()
    await hs.send_event(
        f"@alice:{hs.server_name}", room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"}
    )


async def _joined_members(hs: HomeServer, room_id: str) -> set[str]:
    state = await hs.storage.get_current_state_ids(room_id)
    members = {event_id: key[1] for key, event_id in state.items() if key[0] == _MEMBER}
    ids = list(members)
    joined = set()
    for start in range(0, len(ids), 1000):
        rows = await hs.storage.get_events(ids[start : start + 1000])
        for event_id, row in rows.items():
            if msgspec.json.decode(row.json)["content"].get("membership") == "join":
                joined.add(members[event_id])
    return joined


async def _membership(hs: HomeServer, room_id: str, user: str) -> str | None:
    state = await hs.storage.get_current_state_ids(room_id)
    event_id = state.get((_MEMBER, user))
    row = None if event_id is None else await hs.storage.get_event(event_id)
    if row is None:
        return None
    membership: str = msgspec.json.decode(row.json)["content"].get("membership")
    return membership


async def _left(hs: HomeServer, room_id: str, user: str) -> None:
    """Return once the resident has ``user``'s leave; fail after a minute."""
    for _ in range(1200):
        if await _membership(hs, room_id, user) == "leave":
            return
        await trio.sleep(0.05)
    raise AssertionError(f"the resident never got the leave of {user}")


# --- The ranvier joiner ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _ranvier_joined(
    hs: HomeServer, directory: Path, pki: Pki, room_id: str, label: str
) -> AsyncIterator[dict[str, Any]]:
    """A ranvier joiner that has joined, resynced and left again; yields its figures.

    It keeps running until the block ends: the events it signed are in the
    room's history, and the next server to join fetches its key to check them.
    """
    port = free_port()
    certificate, key = _certificate(pki, directory, f"joiner-{label}")
    settings = JoinerSettings(
        server_name=f"127.0.0.1:{port}",
        port=port,
        data_dir=str(directory / f"joiner-{label}"),
        certificate=str(certificate),
        private_key=str(key),
        ca_file=str(pki.ca_file),
        room_id=room_id,
        via=hs.server_name,
        user=f"@joiner:127.0.0.1:{port}",
        profile=os.environ.get("RANVIER_BENCH_JOIN_PROFILE"),
    )
    if settings.profile:
        settings = msgspec.structs.replace(settings, profile=f"{settings.profile}.{label}")
    command = [
        sys.executable,
        "-m",
        "bench._ranvier_joiner",
        msgspec.json.encode(settings).decode(),
    ]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        lines = JsonLines(process.stdout)
        with trio.fail_after(JOINER_SECONDS):
            joined = await lines.next()
            if not joined["partial"]:
                raise AssertionError(f"the ranvier joiner's join had full state: {joined}")
            _progress(f"  ranvier joined in {joined['join_s']:.3f} s; resyncing")
            resynced = await lines.next()
        expected = await hs.storage.get_current_state_ids(room_id)
        if resynced["state_digest"] != state_digest(expected):
            expected_members = sum(key[0] == _MEMBER for key in expected)
            raise AssertionError(
                f"after its resync the ranvier joiner holds another state than the resident:"
                f" {resynced['members']} members against {expected_members}"
            )
        # Leave, so that the next joiner joins a room of the same members
        # through the same resident, with no second server to hear from.
        await process.stdin.send_all(b"leave\n")
        if (await lines.next())["step"] != "left":
            raise AssertionError("the ranvier joiner did not leave")
        await _left(hs, room_id, settings.user)
        yield {"join_s": joined["join_s"], **resynced}
        await process.stdin.aclose()
        with trio.fail_after(60):
            await process.wait()
        if process.returncode != 0:
            raise AssertionError(f"the ranvier joiner exited with {process.returncode}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- The Synapse joiner ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _synapse_joined(
    hs: HomeServer,
    nursery: trio.Nursery,
    directory: Path,
    pki: Pki,
    http: httpx.AsyncClient,
    room_id: str,
) -> AsyncIterator[dict[str, Any]]:
    """A fresh Synapse whose user has joined, resynced and left again; yields
    its figures. It keeps running until the block ends, as the ranvier
    joiner does.
    """
    synapse = await start_synapse(nursery, directory, pki, http)
    try:
        version = (await http.get(synapse.base_url + "/_matrix/federation/v1/version")).json()
        token = await synapse.register("joiner")
        user = f"@joiner:{synapse.server_name}"
        started = time.perf_counter()
        with trio.fail_after(JOINER_SECONDS):
            await synapse.join(token, room_id, hs.server_name)
            join_s = time.perf_counter() - started
            _progress(f"  Synapse joined in {join_s:.3f} s; resyncing")
            members = await synapse.joined_members(token, room_id)
        resync_s = time.perf_counter() - started
        rss_mb = peak_rss_mb(synapse.pid)
        expected = await _joined_members(hs, room_id)
        if members != expected:
            raise AssertionError(
                f"Synapse's joined members differ from the resident's: {len(members)} against"
                f" {len(expected)}, e.g. {sorted(members ^ expected)[:5]}"
            )
        if user not in members:
            raise AssertionError(f"{user} is not among the room's members")
        await synapse.leave(token, room_id)
        await _left(hs, room_id, user)
    except BaseException:
        _progress(f"Synapse's log ends:\n{synapse.log_tail()}")
        await synapse.stop()
        raise
    try:
        yield {
            "join_s": join_s,
            "resync_s": resync_s,
            "rss_mb": rss_mb,
            "members": len(members),
            "version": version["server"]["version"],
        }
    finally:
        await synapse.stop()


# --- The run --------------------------------------------------------------------------


async def _main(directory: Path, sizes: Sequence[int]) -> dict[str, Any]:
    pki = Pki.create(directory)
    per_size: dict[int, dict[str, Any]] = {}
    async with (
        open_homeserver(_resident_config(directory, pki)) as hs,
        httpx.AsyncClient(verify=pki.client_context(), timeout=JOINER_SECONDS) as http,
        trio.open_nursery() as nursery,
    ):
        for members in sizes:
            _progress(f"{members:,} members: building the room on the resident")
            started = time.perf_counter()
            room_id = await _build_room(hs, members)
            build_s = time.perf_counter() - started
            await _liven(hs, room_id)
            _progress(f"  built in {build_s:.1f} s")
            ranvier_runs, synapse_runs = [], []
            async with contextlib.AsyncExitStack() as joiners:
                for n in range(_repeats(members)):
                    label = f"{members}-{n + 1}"
                    ranvier = await joiners.enter_async_context(
                        _ranvier_joined(hs, directory, pki, room_id, label)
                    )
                    _progress(
                        f"  ranvier: join {ranvier['join_s']:.3f} s,"
                        f" resync {ranvier['resync_s']:.2f} s, peak {ranvier['rss_mb']:.0f} MiB"
                    )
                    synapse = await joiners.enter_async_context(
                        _synapse_joined(
                            hs, nursery, directory / f"synapse-{label}", pki, http, room_id
                        )
                    )
                    _progress(
                        f"  Synapse: join {synapse['join_s']:.3f} s,"
                        f" resync {synapse['resync_s']:.2f} s, peak {synapse['rss_mb']:.0f} MiB"
                    )
                    ranvier_runs.append(ranvier)
                    synapse_runs.append(synapse)
            per_size[members] = {
                "build_s": build_s,
                "ranvier": _best(ranvier_runs),
                "synapse": _best(synapse_runs),
                "load": os.getloadavg()[0],
            }
        nursery.cancel_scope.cancel()
    return _figures(per_size)


def _by_size(per_size: Mapping[int, Mapping[str, Any]], *path: str) -> dict[str, float]:
    figures = {}
    for members, measured in per_size.items():
        value: Any = measured
        for part in path:
            value = value[part]
        figures[str(members)] = round(value, 3)
    return figures


def _figures(per_size: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    join_s = _by_size(per_size, "ranvier", "join_s")
    resync_s = _by_size(per_size, "ranvier", "resync_s")
    synapse_join_s = _by_size(per_size, "synapse", "join_s")
    synapse_resync_s = _by_size(per_size, "synapse", "resync_s")
    rss_mb = _by_size(per_size, "ranvier", "rss_mb")
    synapse_rss_mb = _by_size(per_size, "synapse", "rss_mb")
    speedups = {n: round(synapse_resync_s[n] / resync_s[n], 2) for n in resync_s}
    headline = str(HEADLINE_MEMBERS) if str(HEADLINE_MEMBERS) in speedups else str(max(per_size))
    return {
        "resync_speedup_vs_synapse": speedups[headline],
        "resync_speedup_members": int(headline),
        "join_s": join_s,
        "resync_s": resync_s,
        "synapse_join_s": synapse_join_s,
        "synapse_resync_s": synapse_resync_s,
        "rss_mb": rss_mb,
        "synapse_rss_mb": synapse_rss_mb,
        "resync_speedup_vs_synapse_by_members": speedups,
        "aims_met": {
            "join_at_least_as_fast": all(join_s[n] <= synapse_join_s[n] for n in join_s),
            "resync_10x_faster": all(speedup >= 10 for speedup in speedups.values()),
            "third_of_synapse_memory": all(rss_mb[n] * 3 <= synapse_rss_mb[n] for n in rss_mb),
        },
        "build_s": _by_size(per_size, "build_s"),
        "synapse_version": next(iter(per_size.values()))["synapse"]["version"],
        "cpus": os.cpu_count(),
        # The machine's 1-minute load average after each size: above the
        # number of CPUs, other work shared them and the times are inflated.
        "load_average": _by_size(per_size, "load"),
    }


def run() -> dict[str, Any]:
    sizes = _sizes()
    synapse_python()  # Fail now, not after building the first room.
    with tempfile.TemporaryDirectory(prefix="ranvier-bench-joins-") as directory:
        return trio.run(_main, Path(directory), sizes)
