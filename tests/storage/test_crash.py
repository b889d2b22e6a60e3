"""Acknowledged writes survive the process being killed at any moment."""

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import ranvier

WRITER = Path(__file__).parent / "crash_writer.py"
RUNS = 16


def _writer_environment() -> dict[str, str]:
    """The environment with this process's ranvier first on the path, so the
    writer runs the code under test and not another installed copy."""
    source = str(Path(ranvier.__file__).resolve().parent.parent)
    inherited = os.environ.get("PYTHONPATH")
    path = source if not inherited else os.pathsep.join([source, inherited])
    return {**os.environ, "PYTHONPATH": path}


def _acknowledged(output: bytes) -> set[str]:
    # Only whole lines: each was printed after its write was acknowledged.
    return {line.decode() for line in output.split(b"\n")[:-1] if line}


def _stored(path: Path) -> set[str]:
    """The event IDs in the database, checking it is whole.

    A writer killed before its first migration committed leaves no database,
    or one with no schema yet; it had acknowledged nothing, so nothing is
    stored is the right answer then, not an error.
    """
    if not path.exists():
        return set()
    # Read-write, to recover from the write-ahead log as a writer would, but
    # without creating a database that is not there.
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema")}
        if "events" not in tables:
            # Migrations commit whole: no events table means none has.
            assert conn.execute("PRAGMA user_version").fetchone() == (0,), tables
            assert not tables, tables
            return set()
        return {event_id for (event_id,) in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "crash.db"
    acknowledged: set[str] = set()
    for run in range(RUNS):
        process = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_writer_environment(),
        )
        stdout = process.stdout
        assert isinstance(stdout, io.BufferedReader)
        # Sometimes before the first write (during start-up and migrations),
        # otherwise after a random number of acknowledgements.
        wanted = 0 if rng.random() < 0.2 else rng.randint(1, 150)
        seen = b""
        while seen.count(b"\n") < wanted:
            chunk = stdout.read1(4096)
            if not chunk:
                break
            seen += chunk
        process.send_signal(signal.SIGKILL)
        rest, errors = process.communicate()
        assert process.returncode == -signal.SIGKILL, (seed, errors.decode())
        acknowledged |= _acknowledged(seen + rest)
        missing = acknowledged - _stored(path)
        assert not missing, (seed, run, sorted(missing)[:5])
    # The kills landed in the middle of real work.
    assert len(acknowledged) > RUNS * 10, seed
