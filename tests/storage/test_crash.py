"""Acknowledged writes survive the process being killed at any moment."""

import io
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

WRITER = Path(__file__).parent / "crash_writer.py"
RUNS = 16


def _acknowledged(output: bytes) -> set[str]:
    # Only whole lines: each was printed after its write was acknowledged.
    return {line.decode() for line in output.split(b"\n")[:-1] if line}


def _stored(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
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
