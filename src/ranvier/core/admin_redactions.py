"""Admins redacting a user's events in bulk (Synapse's
``POST /_synapse/admin/v1/user/{userId}/redact`` and its status).

A job redacts, room by room, up to ``limit`` (1000 by default) of the
user's newest messages, encrypted messages and joins (what Synapse's job
redacts: a join carries the name and avatar the user showed), within
``after_ts`` and ``before_ts`` when given, in the rooms named, or, when
none are, in every room whose current state has the user joined or
banned. Events a redaction already applies to are passed over, and count
towards the limit, as they do on Synapse.

Who redacts, in each room, is decided once as the room's turn comes: the
requesting admin, when joined to it with the room's ``redact`` level;
else the most powerful user of this server joined with that level; else
the user, when one of ours and still joined (anyone may redact their own
events). With ``use_admin`` only the requesting admin redacts. Where
nobody can, each of the room's events fails with the reason. A redaction
the rules refuse fails alone; the job goes on.

The job runs in this component's nursery, which the server owns, and is
answered at once with its ID. Its record is in the database
(:mod:`ranvier.storage.admin_redactions`): any process answers its status,
and a job a stop interrupted is run again from its first room when the
main process next starts (what was redacted is then passed over; its
failures are forgotten and found again). A worker runs the jobs asked of
it and resumes none. At most one job per user is active at a time, as on
Synapse; a finished job is kept :data:`KEEP_FINISHED_MS`.

The status is ``active``, ``complete`` (the value Synapse answers) or
``failed`` (the job itself broke, with ``error``); ``failed_redactions``
maps each event whose redaction failed to why.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Protocol

import trio

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.storage.admin_reads import UserRow
from ranvier.storage.admin_redactions import RedactionJob, RedactionStatus
from ranvier.storage.records import StoredEvent

from .builder import wall_clock_ms
from .interfaces import EventSender
from .local_powers import PowerReader, read_local_powers

__all__ = ["DEFAULT_LIMIT", "KEEP_FINISHED_MS", "REDACTED_TYPES", "UserRedactions"]

_log: Final = logging.getLogger(__name__)

#: How many of a user's events a job looks at per room, unless told.
DEFAULT_LIMIT: Final = 1000
#: How long a finished job's status stays readable.
KEEP_FINISHED_MS: Final = 7 * 24 * 3600 * 1000
#: The event types a job redacts (member events: joins only).
REDACTED_TYPES: Final = ("m.room.member", "m.room.message", "m.room.encrypted")


class JobStore(Protocol):
    """:class:`ranvier.storage.admin_redactions.AdminRedactionStorage`."""

    async def start_job(self, job: RedactionJob, *, forget_before_ts: int) -> bool: ...

    async def restart_job(self, redact_id: str) -> None: ...

    async def record_failures(self, redact_id: str, failures: Mapping[str, str]) -> None: ...

    async def finish_job(
        self, redact_id: str, status: RedactionStatus, *, error: str | None, finished_ts: int
    ) -> None: ...

    async def job(self, redact_id: str) -> RedactionJob | None: ...

    async def active_jobs(self) -> list[RedactionJob]: ...

    async def rooms_of(self, user_id: str) -> list[str]: ...

    async def unredacted_events(
        self,
        user_id: str,
        room_id: str,
        *,
        types: Collection[str],
        limit: int,
        before_ts: int | None = None,
        after_ts: int | None = None,
    ) -> list[StoredEvent]: ...


class Accounts(Protocol):
    """:class:`ranvier.storage.admin.AdminStorage`."""

    async def user(self, user_id: str) -> UserRow | None: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _optional_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and type(value) is not int:
        raise _invalid(f"'{key}' must be an integer")
    return value


class UserRedactions:
    """Runs admins' redaction jobs; see the module's doc.

    Started with ``await nursery.start(redactions.run)``; ``resume`` says
    whether to run again the jobs a stop left active (the main process's
    part).
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: JobStore,
        state: PowerReader,
        events: EventSender,
        accounts: Accounts,
        resume: bool = True,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._state = state
        self._events = events
        self._accounts = accounts
        self._resume = resume
        self._clock = clock
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self._resume:
                for job in await self._store.active_jobs():
                    _log.info("resuming redaction job %s of %s", job.redact_id, job.user_id)
                    await self._store.restart_job(job.redact_id)
                    nursery.start_soon(self._run_job, job, name=f"redact {job.redact_id}")
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # Asking and reading.

    async def start(self, admin_id: str, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start a job as ``POST .../user/{userId}/redact`` asks; its ID."""
        if not is_valid_user_id(user_id):
            raise _invalid(f"{user_id[:255]!r} is not a user ID")
        local = user_id.partition(":")[2] == self._server_name
        if local and await self._accounts.user(user_id) is None:
            raise MatrixError(f"user {user_id} not found", errcode="M_NOT_FOUND", http_status=404)
        rooms = body.get("rooms")
        if rooms is None:
            raise MatrixError(
                "'rooms' is required: a list of room IDs, or an empty list for all of the"
                " user's rooms",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        if type(rooms) is not list or any(type(room) is not str for room in rooms):
            raise _invalid("'rooms' must be a list of room IDs")
        reason = body.get("reason")
        if reason is not None and type(reason) is not str:
            raise _invalid("'reason' must be a string")
        limit = _optional_int(body, "limit")
        if limit is not None and limit <= 0:
            raise _invalid("'limit' must be a positive integer")
        use_admin = body.get("use_admin", False)
        if use_admin is None:
            use_admin = False
        if type(use_admin) is not bool:
            raise _invalid("'use_admin' must be true or false")
        before_ts = _optional_int(body, "before_ts")
        after_ts = _optional_int(body, "after_ts")
        for room_id in rooms:
            if not room_id.startswith("!") or len(room_id) > 255:
                raise _invalid(f"{room_id[:255]!r} is not a room ID")
            if await self._state.get_room_version(room_id) is None:
                raise MatrixError(
                    f"room {room_id} is not known to this server",
                    errcode="M_NOT_FOUND",
                    http_status=404,
                )
        if not rooms:
            rooms = await self._store.rooms_of(user_id)
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("the redaction jobs are not running")
        now = self._clock()
        job = RedactionJob(
            redact_id=secrets.token_urlsafe(16),
            user_id=user_id,
            admin_id=admin_id,
            rooms=list(dict.fromkeys(rooms)),
            reason=reason,
            per_room_limit=limit or DEFAULT_LIMIT,
            before_ts=before_ts,
            after_ts=after_ts,
            use_admin=use_admin,
            created_ts=now,
        )
        if not await self._store.start_job(job, forget_before_ts=now - KEEP_FINISHED_MS):
            raise MatrixError(
                f"a redaction of {user_id}'s events is already running", http_status=400
            )
        nursery.start_soon(self._run_job, job, name=f"redact {job.redact_id}")
        return {"redact_id": job.redact_id}

    async def status(self, redact_id: str) -> dict[str, Any]:
        """``GET .../user/redact_status/{redactId}``; 404 for an unknown ID."""
        job = await self._store.job(redact_id)
        if job is None:
            raise MatrixError(
                f"redact id {redact_id[:64]!r} not found", errcode="M_NOT_FOUND", http_status=404
            )
        answer: dict[str, Any] = {
            "status": job.status,
            "failed_redactions": dict(job.failed or {}),
        }
        if job.status == "failed":
            answer["error"] = job.error or "the job stopped on an unexpected error"
        return answer

    # Running.

    async def _run_job(self, job: RedactionJob) -> None:
        try:
            for room_id in job.rooms:
                failures = await self._redact_room(job, room_id)
                if failures:
                    await self._store.record_failures(job.redact_id, failures)
        except Exception as exc:
            # A failure of the server's own (storage, a bug), not of one
            # redaction: the job ends failed, and the server carries on.
            _log.exception("redaction job %s failed", job.redact_id)
            await self._finish(job, "failed", f"{type(exc).__name__}: {exc}")
        else:
            await self._finish(job, "complete", None)

    async def _finish(self, job: RedactionJob, status: RedactionStatus, error: str | None) -> None:
        try:
            await self._store.finish_job(
                job.redact_id, status, error=error, finished_ts=self._clock()
            )
        except Exception:
            # Left active: the main process runs it again when it next starts.
            _log.exception("the end of redaction job %s was not recorded", job.redact_id)

    async def _redact_room(self, job: RedactionJob, room_id: str) -> dict[str, str]:
        events = await self._store.unredacted_events(
            job.user_id,
            room_id,
            types=REDACTED_TYPES,
            limit=job.per_room_limit,
            before_ts=job.before_ts,
            after_ts=job.after_ts,
        )
        if not events:
            return {}
        redactor, why_not = await self._redactor(job, room_id)
        if redactor is None:
            return dict.fromkeys((event.event_id for event in events), why_not)
        failures: dict[str, str] = {}
        for event in events:
            content: dict[str, Any] = {"redacts": event.event_id}
            if job.reason is not None:
                content["reason"] = job.reason
            try:
                await self._events.send_event(redactor, room_id, "m.room.redaction", content)
            except MatrixError as exc:
                failures[event.event_id] = exc.message
        return failures

    async def _redactor(self, job: RedactionJob, room_id: str) -> tuple[str | None, str]:
        """Who redacts in ``room_id``, or None and why nobody can."""
        powers = await read_local_powers(
            self._state, self._server_name, room_id, about=(job.user_id, job.admin_id)
        )
        if powers is None:
            return None, f"room {room_id} is not known to this server"
        required = powers.named_level("redact")
        if job.use_admin:
            if powers.strongest(required, prefer=job.admin_id) == job.admin_id:
                return job.admin_id, ""
            return None, (
                f"{job.admin_id} is not joined to {room_id} with the power to redact"
                f" others' events (level {required})"
            )
        redactor = powers.strongest(required, prefer=job.admin_id)
        if redactor is not None:
            return redactor, ""
        if job.user_id in powers.joined_local():
            return job.user_id, ""
        return None, (
            f"no user of {self._server_name} joined to {room_id} may redact"
            f" {job.user_id}'s events there (that takes level {required})"
        )
