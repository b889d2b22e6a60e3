"""Admins' jobs redacting a user's events, kept so that a restart resumes
them and any process answers their status (:mod:`ranvier.core.admin_redactions`).

Table (the schema's ``_user_redactions`` migration)
---------------------------------------------------

``user_redactions`` has a row per job: whose events, asked by which
admin, in which rooms (a JSON list, fixed when the job is asked for), the
reason, the per-room limit, the time bounds and whether only the admin
may redact; its status (``active``, ``complete`` or ``failed``), the
events whose redaction failed (a JSON object, event ID to why), the error
that ended a failed job, and when it was asked for and finished.

Invariants
----------

* **At most one active job per user**: the insert reads the user's active
  jobs in the same transaction, so two admins asking at once do not both
  start one.
* **Every write can run twice** (``registered_write``): starting inserts
  the row unless it is there (a repeat answers that it started), failures
  are merged into the object by event ID, finishing sets the same values.
* **Finished jobs are forgotten** once older than the keep time given
  when a job starts: the rows are small, but nothing else removes them.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from .membership_sql import MEMBERSHIP
from .readers import ReaderPool
from .records import STORED_EVENT_COLUMNS, StoredEvent, stored_event_from_row
from .redactions import RedactedEvent, served
from .write_backend import WriteBackend, registered_write

__all__ = ["AdminRedactionStorage", "RedactionJob", "RedactionStatus"]

RedactionStatus = Literal["active", "complete", "failed"]

_COLUMNS: Final = (
    "redact_id, user_id, admin_id, rooms, reason, per_room_limit, before_ts, after_ts,"
    " use_admin, status, failed, error, created_ts, finished_ts"
)
_EVENT_COLUMNS: Final = ", ".join(f"e.{column}" for column in STORED_EVENT_COLUMNS)
_decode_rooms: Final = msgspec.json.Decoder(list[str]).decode
_decode_failed: Final = msgspec.json.Decoder(dict[str, str]).decode


@dataclass(frozen=True, slots=True)
class RedactionJob:
    """One job as stored."""

    redact_id: str
    user_id: str
    admin_id: str
    rooms: list[str]
    reason: str | None
    per_room_limit: int
    before_ts: int | None
    after_ts: int | None
    use_admin: bool
    status: RedactionStatus = "active"
    failed: dict[str, str] | None = None
    error: str | None = None
    created_ts: int = 0
    finished_ts: int | None = None


def _job(row: Sequence[Any]) -> RedactionJob:
    return RedactionJob(
        redact_id=row[0],
        user_id=row[1],
        admin_id=row[2],
        rooms=_decode_rooms(row[3]),
        reason=row[4],
        per_room_limit=row[5],
        before_ts=row[6],
        after_ts=row[7],
        use_admin=bool(row[8]),
        status=row[9],
        failed=_decode_failed(row[10]),
        error=row[11],
        created_ts=row[12],
        finished_ts=row[13],
    )


class AdminRedactionStorage:
    """The jobs, and the reads that find what a job redacts."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    # The jobs.

    async def start_job(self, job: RedactionJob, *, forget_before_ts: int) -> bool:
        """Record ``job`` as active, unless another job of the same user is;
        whether it was recorded. Finished jobs older than
        ``forget_before_ts`` go in the same write."""
        return await self._writer.submit(
            functools.partial(
                _start_job,
                redact_id=job.redact_id,
                user_id=job.user_id,
                admin_id=job.admin_id,
                rooms=msgspec.json.encode(job.rooms).decode(),
                reason=job.reason,
                per_room_limit=job.per_room_limit,
                before_ts=job.before_ts,
                after_ts=job.after_ts,
                use_admin=job.use_admin,
                created_ts=job.created_ts,
                forget_before_ts=forget_before_ts,
            )
        )

    async def restart_job(self, redact_id: str) -> None:
        """Forget the failures of an active job run again from its start."""
        await self._writer.submit(functools.partial(_restart_job, redact_id=redact_id))

    async def record_failures(self, redact_id: str, failures: Mapping[str, str]) -> None:
        """Add events whose redaction failed, with why."""
        await self._writer.submit(
            functools.partial(_record_failures, redact_id=redact_id, failures=dict(failures))
        )

    async def finish_job(
        self, redact_id: str, status: RedactionStatus, *, error: str | None, finished_ts: int
    ) -> None:
        await self._writer.submit(
            functools.partial(
                _finish_job,
                redact_id=redact_id,
                status=status,
                error=error,
                finished_ts=finished_ts,
            )
        )

    async def job(self, redact_id: str) -> RedactionJob | None:
        return await self._readers.read(functools.partial(_read_job, redact_id=redact_id))

    async def active_jobs(self) -> list[RedactionJob]:
        """The jobs a stop left unfinished, oldest first."""
        return await self._readers.read(_active_jobs)

    # What a job redacts.

    async def rooms_of(self, user_id: str) -> list[str]:
        """The rooms whose current state has ``user_id`` joined or banned."""
        return await self._readers.read(functools.partial(_rooms_of, user_id=user_id))

    async def unredacted_events(
        self,
        user_id: str,
        room_id: str,
        *,
        types: Collection[str],
        limit: int,
        before_ts: int | None = None,
        after_ts: int | None = None,
    ) -> list[StoredEvent]:
        """Up to ``limit`` of ``user_id``'s accepted events of ``types`` in
        ``room_id`` (a member event only if it is a join), newest first,
        within the time bounds (inclusive), less those a redaction already
        applies to."""
        return await self._readers.read(
            functools.partial(
                _unredacted_events,
                user_id=user_id,
                room_id=room_id,
                types=tuple(types),
                limit=limit,
                before_ts=before_ts,
                after_ts=after_ts,
            )
        )


@registered_write
def _start_job(
    conn: sqlite3.Connection,
    *,
    redact_id: str,
    user_id: str,
    admin_id: str,
    rooms: str,
    reason: str | None,
    per_room_limit: int,
    before_ts: int | None,
    after_ts: int | None,
    use_admin: bool,
    created_ts: int,
    forget_before_ts: int,
) -> bool:
    if conn.execute("SELECT 1 FROM user_redactions WHERE redact_id = ?", (redact_id,)).fetchone():
        return True
    busy = conn.execute(
        "SELECT 1 FROM user_redactions WHERE user_id = ? AND status = 'active'", (user_id,)
    ).fetchone()
    if busy is not None:
        return False
    conn.execute(
        "DELETE FROM user_redactions WHERE status != 'active' AND finished_ts < ?",
        (forget_before_ts,),
    )
    conn.execute(
        f"INSERT INTO user_redactions ({_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', '{}', NULL, ?, NULL)",
        (
            redact_id,
            user_id,
            admin_id,
            rooms,
            reason,
            per_room_limit,
            before_ts,
            after_ts,
            int(use_admin),
            created_ts,
        ),
    )
    return True


@registered_write
def _restart_job(conn: sqlite3.Connection, *, redact_id: str) -> None:
    conn.execute(
        "UPDATE user_redactions SET failed = '{}' WHERE redact_id = ? AND status = 'active'",
        (redact_id,),
    )


@registered_write
def _record_failures(conn: sqlite3.Connection, *, redact_id: str, failures: dict[str, str]) -> None:
    row = conn.execute(
        "SELECT failed FROM user_redactions WHERE redact_id = ?", (redact_id,)
    ).fetchone()
    if row is None:
        return
    merged = _decode_failed(str(row[0])) | failures
    conn.execute(
        "UPDATE user_redactions SET failed = ? WHERE redact_id = ?",
        (msgspec.json.encode(merged, order="sorted").decode(), redact_id),
    )


@registered_write
def _finish_job(
    conn: sqlite3.Connection,
    *,
    redact_id: str,
    status: str,
    error: str | None,
    finished_ts: int,
) -> None:
    conn.execute(
        "UPDATE user_redactions SET status = ?, error = ?, finished_ts = ? WHERE redact_id = ?",
        (status, error, finished_ts, redact_id),
    )


def _read_job(conn: sqlite3.Connection, *, redact_id: str) -> RedactionJob | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM user_redactions WHERE redact_id = ?", (redact_id,)
    ).fetchone()
    return None if row is None else _job(row)


def _active_jobs(conn: sqlite3.Connection) -> list[RedactionJob]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM user_redactions WHERE status = 'active'"
        " ORDER BY created_ts, redact_id"
    ).fetchall()
    return [_job(row) for row in rows]


def _rooms_of(conn: sqlite3.Connection, *, user_id: str) -> list[str]:
    return [
        str(room_id)
        for (room_id,) in conn.execute(
            "SELECT cs.room_id FROM current_state AS cs JOIN events AS e"
            " ON e.event_id = cs.event_id WHERE cs.type = 'm.room.member'"
            f" AND cs.state_key = ? AND {MEMBERSHIP} IN ('join', 'ban') ORDER BY cs.room_id",
            (user_id,),
        )
    ]


def _unredacted_events(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    room_id: str,
    types: tuple[str, ...],
    limit: int,
    before_ts: int | None,
    after_ts: int | None,
) -> list[StoredEvent]:
    marks = ",".join("?" * len(types))
    bounds = ""
    parameters: list[object] = [room_id, user_id, *types]
    if before_ts is not None:
        bounds += " AND e.origin_server_ts <= ?"
        parameters.append(before_ts)
    if after_ts is not None:
        bounds += " AND e.origin_server_ts >= ?"
        parameters.append(after_ts)
    parameters.append(limit)
    # Walks the room's events newest first on (room_id, stream_ordering):
    # there is no index by sender, and a job is an admin's rare request.
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events AS e"
        " WHERE e.room_id = ? AND e.sender = ? AND e.type IN"
        f" ({marks}) AND e.outlier = 0 AND e.soft_failed = 0 AND e.rejected_reason IS NULL"
        f" AND (e.type != 'm.room.member' OR {MEMBERSHIP} = 'join')"
        f"{bounds} ORDER BY e.stream_ordering DESC LIMIT ?",
        parameters,
    ).fetchall()
    events = [stored_event_from_row(row) for row in rows]
    return [event for event in served(conn, events) if not isinstance(event, RedactedEvent)]
