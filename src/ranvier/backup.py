"""A consistent copy of the server's files, taken while the server runs.

What a backup keeps, and why it can be trusted:

- The database is copied with SQLite's online backup API from a read-only
  connection that holds one read transaction from the first page to the
  last. In WAL mode that transaction sees one moment of the database, the
  moment the backup started, whatever the server commits meanwhile: the
  copy is never torn, and the backup never starts over because the server
  wrote (which a copy that opens a transaction per step would do, forever on
  a busy server). Readers never block SQLite's writer in WAL mode, and the
  server's checkpoints are PASSIVE, so the server is not held up; the WAL
  only grows until the backup ends.
- Pages are copied a few hundred at a time with a short pause between
  steps, so a server in the same process keeps the GIL most of the time.
- The copy is one database file, complete without a WAL: it is written
  under a temporary name, passes ``PRAGMA integrity_check`` and only then
  takes the database's own name.
- The signing key and the TLS certificate and key are copied byte for byte
  with their file modes, so the signing key stays readable by its owner
  only.
- A backup is never written over another: the destination must be missing
  or empty, and a backup that fails leaves nothing of itself behind.

Media files are not copied: they are plain files that are only ever added
or deleted whole, often large, and ``rsync`` copies them better.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ranvier.config import Config
from ranvier.os_errors import describe_os_error

__all__ = ["BackupError", "BackupReport", "CopiedFile", "backup_data"]

#: Pages copied in one step of the backup API (4 KiB each by default).
DEFAULT_PAGES_PER_STEP: Final = 256
#: The pause between two steps.
DEFAULT_PAUSE_SECONDS: Final = 0.005


class BackupError(Exception):
    """A backup that could not be made; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class CopiedFile:
    """One file of the server and where its copy is."""

    source: Path
    copy: Path


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup copied."""

    database: CopiedFile
    #: The pages the database copy holds, and the steps taken to copy them.
    database_pages: int
    steps: int
    #: The signing key and TLS files found, in that order.
    files: tuple[CopiedFile, ...]
    #: Where the media files are, which the backup does not copy.
    media_store: Path


def backup_data(
    config: Config,
    destination: Path,
    *,
    pages_per_step: int = DEFAULT_PAGES_PER_STEP,
    pause_seconds: float = DEFAULT_PAUSE_SECONDS,
    progress: Callable[[int, int], None] | None = None,
) -> BackupReport:
    """Copy the configured server's database, signing key and TLS files into
    ``destination``, each under its own file name.

    Blocking: run it in a thread of its own beside a running server.
    ``progress`` is called after every step with the pages copied so far
    and the pages in all. Raises :class:`BackupError`.
    """
    if pages_per_step <= 0:
        raise ValueError("pages_per_step must be positive")
    database = config.paths.database
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    others = _other_files(config)
    _check_distinct_names([database, *others])
    created_directory = _claim_destination(destination)
    written: list[Path] = []
    try:
        copied = [_copy_file(source, destination / source.name, written) for source in others]
        pages, steps = _copy_database(
            database,
            destination / database.name,
            written,
            pages_per_step=pages_per_step,
            pause_seconds=pause_seconds,
            progress=progress,
        )
        _sync_directory(destination)
    except BaseException as exc:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        if created_directory:
            with contextlib.suppress(OSError):
                destination.rmdir()
        if isinstance(exc, OSError):
            raise BackupError(describe_os_error(exc)) from None
        raise
    return BackupReport(
        database=CopiedFile(database, destination / database.name),
        database_pages=pages,
        steps=steps,
        files=tuple(copied),
        media_store=config.media_store,
    )


def _other_files(config: Config) -> list[Path]:
    """The signing key and TLS files that exist: a server that never served
    over TLS has none of the latter, and one whose database was made by
    ``register-user`` before its first start has no key yet.
    """
    paths = config.paths
    candidates = (paths.signing_key, paths.tls_certificate, paths.tls_private_key)
    return [path for path in candidates if path.is_file()]


def _check_distinct_names(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.name in seen:
            raise BackupError(
                f"{seen[path.name]} and {path} have the same file name; a backup keeps"
                " each file under its own name, so rename one of them"
            )
        seen[path.name] = path


def _claim_destination(destination: Path) -> bool:
    """Make ``destination`` ours: create it (True) or find it empty (False)."""
    try:
        destination.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not destination.is_dir():
            raise BackupError(f"{destination} exists and is not a directory") from None
        try:
            with os.scandir(destination) as entries:
                occupied = any(True for _ in entries)
        except OSError as exc:
            raise BackupError(describe_os_error(exc)) from None
        if occupied:
            raise BackupError(
                f"{destination} is not empty; a backup is never written over another:"
                " give a new or empty directory"
            ) from None
        return False
    except OSError as exc:
        raise BackupError(f"cannot create {destination}: {exc.strerror}") from None
    return True


def _copy_file(source: Path, copy: Path, written: list[Path]) -> CopiedFile:
    data = source.read_bytes()
    mode = stat.S_IMODE(source.stat().st_mode)
    # Created readable by its owner only, whatever the umask, and given the
    # source's mode once written; O_EXCL never writes over a file.
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written.append(copy)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
        os.fchmod(file.fileno(), mode)
    return CopiedFile(source, copy)


def _copy_database(
    database: Path,
    copy: Path,
    written: list[Path],
    *,
    pages_per_step: int,
    pause_seconds: float,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Copy ``database`` to ``copy`` through a temporary file; (pages, steps)."""
    from ranvier.storage.connections import open_reader
    from ranvier.storage.schema import schema_version

    partial = copy.with_name(f".{copy.name}.partial")
    sidecars = [partial.with_name(partial.name + suffix) for suffix in ("-journal", "-wal", "-shm")]
    try:
        source = open_reader(database)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the database {database}: {exc}") from None
    pages = steps = 0
    try:
        if schema_version(source) == 0:
            raise BackupError(f"{database} is not a ranvier database (it has no schema)")
        # The read transaction starts at its first read, not at BEGIN; from
        # then on every step reads the same moment of the database.
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        written.extend([partial, *sidecars])
        target = sqlite3.connect(partial, isolation_level=None)
        try:

            def on_step(status: int, remaining: int, total: int) -> None:
                nonlocal pages, steps
                pages, steps = total, steps + 1
                if progress is not None:
                    progress(total - remaining, total)
                if remaining:
                    time.sleep(pause_seconds)

            source.backup(target, pages=pages_per_step, progress=on_step)
        finally:
            target.close()
        source.execute("COMMIT")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the database {database}: {exc}") from None
    finally:
        source.close()
    _check_integrity(partial, database)
    for sidecar in sidecars:
        if sidecar.exists():
            raise BackupError(f"the copy of {database} left {sidecar} behind: it is not whole")
    os.chmod(partial, stat.S_IMODE(database.stat().st_mode))
    os.rename(partial, copy)
    written.append(copy)
    return pages, steps


def _check_integrity(copy: Path, database: Path) -> None:
    try:
        with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as conn:
            rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        # So damaged that the check itself cannot run.
        rows = [str(exc)]
    if rows != ["ok"]:
        shown = "; ".join(rows[:5]) + ("; ..." if len(rows) > 5 else "")
        raise BackupError(
            f"the copy of {database} failed SQLite's integrity check (the database itself"
            f" may be damaged: stop the server and check it): {shown}"
        )


def _sync_directory(directory: Path) -> None:
    # The new names are durable only once the directory is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
