"""The storage actor: the one task that writes to the database.

Invariants
----------

* **One writer.** Only the actor writes, through one connection that lives
  on one dedicated thread, the writer thread. No other connection writes.
* **Group commit.** The actor takes the first waiting request, then every
  other request already waiting, up to ``batch_cap``, and runs them in one
  ``BEGIN IMMEDIATE ... COMMIT``, in the order they were sent.
* **Failures stay with their request.** A request whose operation raises is
  rolled back alone; its caller gets that exception; the rest of the batch
  commits and the actor goes on. The batch is first run straight through,
  without savepoints (an open savepoint makes SQLite copy aside every page
  written under it, which costs more than the writes), and neighbouring
  requests that can be combined (:class:`CombinableWrite`, such as event
  persists) run as one operation. If any request raises, the transaction
  is rolled back whole and the batch runs again with one SAVEPOINT per
  request, so the outcome is always what one savepoint per request gives.
* **Writes are pure.** A write operation touches nothing but the database
  and does the same on the same data, because it may run twice.
* **Writes are counted.** Each operation run, whether it succeeds or
  not, moves the marks of :mod:`ranvier.storage.write_marks`: the counts
  of the rooms it says it writes, or the count that stands for every room.
  A :class:`MarkedWrite` counts itself, and may refuse to run when its
  room's mark moved since one it was given.
* **Answers come after the commit.** No caller hears of success before the
  transaction holding its write has committed.
* **Writes outlive their callers.** A request that reached the channel is
  written even if its caller is then cancelled; only the answer is dropped.
  The actor never waits for a caller: each answer goes into a one-shot slot
  of the request's own, which never blocks.
* **No batch is abandoned.** Once a batch is on the writer thread, the actor
  waits for it shielded from cancellation, so a cancelled actor still
  commits and answers the batch in hand before it stops.
* **Fatal errors are loud.** A database error that is not about one request
  (disk full, I/O error, corruption, a lock held by another process) fails
  the whole batch and every request still waiting, then leaves :meth:`run`
  with that error, so the owning nursery learns of it instead of writes
  vanishing.
* **A stopped actor refuses at once.** After :meth:`run` returns or raises,
  every write raises :class:`~ranvier.errors.StorageUnavailableError`.
* **Checkpoints stay out of commits, and the WAL stays bounded.** Copying
  the WAL into the database file (and, unless ``synchronous=OFF``, syncing
  both) is work no commit needs to wait for. Once batches have changed
  ``checkpoint_after_changes`` rows since the last checkpoint began (a
  stand-in for pages written, which the actor cannot count), the actor
  has a task of its own run one in ``trio.to_thread``, on a connection of its own
  that syncs as the writer does, so ``synchronous`` means what it meant.
  It is PASSIVE: the writer, which appends to the WAL, and readers go on
  beside it, and frames a reader still needs stay in the WAL. At most one
  runs at a time. The writer's automatic checkpoint stays on as a backstop
  at ``_BACKSTOP_PAGES``, far above what these checkpoints let the WAL
  reach. A checkpoint that fails loses nothing (the pages are still in the
  WAL); it is logged and tried again after as many changes. A stopping
  actor waits for the one under way. The default, 5,000 changes, is some
  16 transactions of 50 PDUs (about 300 rows each): rarer checkpoints
  copy a page written by several of them once, and sync less often.

Handing work to the writer thread
---------------------------------

A sqlite3 connection belongs to the thread that opened it, and
``trio.to_thread.run_sync`` may pick a different worker thread on each call,
so the actor keeps a thread of its own fed by a job queue. The actor waits
for a job on a :class:`trio.Event`, and the thread hands the result back with
``TrioToken.run_sync_soon``, which queues a callback on the Trio loop and
returns at once. (``trio.from_thread.run_sync`` would instead keep the writer
thread waiting until the loop got round to the callback.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, NoReturn, Protocol, TypeAlias, TypeVar, cast

import trio

from ranvier.errors import StorageUnavailableError
from ranvier.failures import sole_failure
from ranvier.metrics import Histogram

from .connections import SynchronousMode, open_checkpointer, open_writer
from .schema import migrate
from .write_marks import WriteMark, WriteMarks

__all__ = [
    "CombinableWrite",
    "MarkedWrite",
    "StorageActor",
    "WriteOperation",
    "WriteStats",
    "is_fatal_database_error",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_log: Final = logging.getLogger(__name__)

#: The writer's own automatic checkpoint, which only checkpoints falling far
#: behind let the WAL reach: 10,000 pages are about 40 MB.
_BACKSTOP_PAGES: Final = 10_000
# Buckets of the batch metrics: requests per batch up to the default cap,
# and seconds from a batch's start in the writer to its commit.
_BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_SECONDS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

#: A write: a function of the write connection, run on the writer thread
#: inside the actor's transaction (and, when a batch is retried, inside a
#: savepoint of its own). It must be pure: it may run twice.
WriteOperation: TypeAlias = Callable[[sqlite3.Connection], T]


class CombinableWrite(Protocol[T_co]):
    """A write that can run in one go with neighbouring writes of its kind.

    Many small writes cost mostly their per-statement overhead; run together
    they become one statement per table. ``run_combined`` must leave the
    database exactly as running ``writes`` one after another would, and
    return their results in order.
    """

    #: Writes with equal keys may be combined; None: never combined.
    @property
    def combine_key(self) -> Hashable | None: ...

    def __call__(self, conn: sqlite3.Connection, /) -> T_co: ...

    def run_combined(
        self, conn: sqlite3.Connection, writes: Sequence[Any], /
    ) -> Sequence[T_co]: ...


class MarkedWrite(Protocol[T_co]):
    """A write that checks or hands out marks of the writes before it
    (:mod:`ranvier.storage.write_marks`), and so counts itself: the actor
    runs ``run_marked`` instead of calling it, on the writer thread.
    """

    def __call__(self, conn: sqlite3.Connection, /) -> T_co: ...

    def run_marked(self, conn: sqlite3.Connection, marks: WriteMarks, /) -> T_co: ...


# Error codes (primary, the low byte) that are about the database rather than
# one request.
_FATAL_CODES = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)


def is_fatal_database_error(exc: BaseException) -> bool:
    """Whether an error means the database itself is in trouble."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _FATAL_CODES


@dataclass(frozen=True, slots=True)
class _Ok(Generic[T]):
    value: T

    def unwrap(self) -> T:
        return self.value


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException

    def unwrap(self) -> NoReturn:
        raise self.error


_Answer: TypeAlias = _Ok[T] | _Failed


class _Request:
    """A write and the one-shot slot its answer goes into.

    Answering sets a :class:`trio.Event`, which never blocks: a caller that
    went away simply never looks at the answer, and the write stays.
    """

    __slots__ = ("_answered", "answer", "operation")

    def __init__(self, operation: WriteOperation[Any]) -> None:
        self.operation = operation
        self.answer: _Answer[Any] | None = None
        self._answered = trio.Event()

    def reply(self, answer: _Answer[Any]) -> None:
        if self.answer is None:
            self.answer = answer
            self._answered.set()

    async def wait(self) -> _Answer[Any]:
        await self._answered.wait()
        assert self.answer is not None
        return self.answer


@dataclass(frozen=True, slots=True)
class WriteStats:
    """How the actor has grouped its work so far."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    #: WAL checkpoints the actor started beside the writer.
    checkpoints: int = 0
    #: Of those, the ones that have finished (whether or not they succeeded).
    checkpoints_finished: int = 0


def _unavailable(reason: BaseException | None) -> StorageUnavailableError:
    if reason is None or isinstance(reason, trio.Cancelled):
        return StorageUnavailableError("the storage actor has stopped")
    error = StorageUnavailableError(f"the database failed ({reason}); this write was not committed")
    error.__cause__ = reason
    return error


def _combine_key(operation: WriteOperation[Any]) -> Hashable | None:
    # Not isinstance(): a runtime Protocol check costs more than the write.
    key: Hashable | None = getattr(operation, "combine_key", None)
    return key


def _runs(operations: Sequence[WriteOperation[Any]]) -> Iterator[list[WriteOperation[Any]]]:
    """The operations in order, neighbours with one combine key together."""
    run: list[WriteOperation[Any]] = []
    run_key: Hashable | None = None
    for operation in operations:
        key = _combine_key(operation)
        if run and (key is None or key != run_key):
            yield run
            run = []
        run.append(operation)
        run_key = key
    if run:
        yield run


def _run_straight(
    conn: sqlite3.Connection, operations: Sequence[WriteOperation[Any]], marks: WriteMarks
) -> list[_Answer[Any]] | _Failed:
    """Every operation's answer, combining neighbours where they allow it; or
    the first failure, with the transaction left to roll back.
    """
    answers: list[_Answer[Any]] = []
    for run in _runs(operations):
        try:
            if len(run) > 1:
                try:
                    values = cast(CombinableWrite[Any], run[0]).run_combined(conn, run)
                finally:
                    for operation in run:
                        marks.note(operation)
            else:
                values = [_call(conn, run[0], marks)]
        except Exception as exc:
            if is_fatal_database_error(exc):
                raise
            return _Failed(exc)
        answers.extend(_Ok(value) for value in values)
    return answers


def _call(conn: sqlite3.Connection, operation: WriteOperation[T], marks: WriteMarks) -> T:
    """Run one operation and count it (:mod:`ranvier.storage.write_marks`); a
    :class:`MarkedWrite` counts itself."""
    run_marked = getattr(operation, "run_marked", None)
    if run_marked is not None:
        return cast(MarkedWrite[T], operation).run_marked(conn, marks)
    try:
        return operation(conn)
    finally:
        marks.note(operation)


def _run_alone(
    conn: sqlite3.Connection, operation: WriteOperation[Any], marks: WriteMarks
) -> _Answer[Any]:
    conn.execute("SAVEPOINT request")
    try:
        value = _call(conn, operation, marks)
    except Exception as exc:
        if is_fatal_database_error(exc):
            raise
        conn.execute("ROLLBACK TO request")
        conn.execute("RELEASE request")
        return _Failed(exc)
    conn.execute("RELEASE request")
    return _Ok(value)


def _run_batch(
    conn: sqlite3.Connection, operations: Sequence[WriteOperation[Any]], marks: WriteMarks
) -> list[_Answer[Any]]:
    """One transaction for the batch; runs on the writer thread.

    Raises only on a fatal error, after rolling the whole batch back.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        answers = _run_straight(conn, operations, marks)
        if isinstance(answers, _Failed):
            conn.execute("ROLLBACK")
            if len(operations) == 1:
                # Rolling back the transaction rolled back exactly it.
                return [answers]
            conn.execute("BEGIN IMMEDIATE")
            answers = [_run_alone(conn, operation, marks) for operation in operations]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The error being raised says more than one from ROLLBACK would.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return answers


def _run_batch_counting_changes(
    conn: sqlite3.Connection, operations: Sequence[WriteOperation[Any]], marks: WriteMarks
) -> tuple[list[_Answer[Any]], int]:
    """:func:`_run_batch`, and the rows it changed (those rolled back included)."""
    before = conn.total_changes
    answers = _run_batch(conn, operations, marks)
    return answers, conn.total_changes - before


def _checkpoint(open_connection: Callable[[], sqlite3.Connection]) -> tuple[int, int, int]:
    """A PASSIVE checkpoint on a connection of its own: ``(busy, frames in
    the WAL, frames checkpointed)``.
    """
    conn = open_connection()
    try:
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    return int(busy), int(frames), int(done)


class _WriterThread:
    """A thread that owns the write connection and runs jobs in turn."""

    def __init__(self, open_connection: Callable[[], sqlite3.Connection]) -> None:
        self._open_connection = open_connection
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Touched only on the writer thread.
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(
            target=self._main, name="ranvier-storage-writer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open_connection()
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                # SQLite moves the log into the database file when its last
                # connection closes, but a read-only one cannot, and the
                # readers close after this: without this, what the log
                # holds stays out of the file, which a copy of the file
                # alone would lack. PASSIVE, so that no reader (in a worker,
                # say) holds the stop up; a checkpoint that fails loses
                # nothing.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                _log.warning("the last checkpoint before closing failed: %s", exc)
            finally:
                conn.close()

    async def _run(self, function: Callable[[], T]) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        answers: list[_Answer[T]] = []

        def deliver(answer: _Answer[T]) -> None:
            answers.append(answer)
            done.set()

        def job() -> None:
            answer: _Answer[T]
            try:
                answer = _Ok(function())
            except BaseException as exc:
                answer = _Failed(exc)
            # When the Trio run is over, nobody is left to tell.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(deliver, answer)

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        return answers[0].unwrap()

    async def call(self, operation: WriteOperation[T]) -> T:
        """Run ``operation`` on the writer thread, opening the connection first
        if need be, and wait for it whatever happens to the caller.
        """
        return await self._run(lambda: operation(self._connection()))

    async def stop(self) -> None:
        """Close the connection on its own thread and end the thread."""
        try:
            await self._run(self._close_connection)
        finally:
            self._jobs.put(None)


class StorageActor:
    """The task that alone writes; see the invariants above.

    Start it with ``await nursery.start(actor.run)``: it returns once the
    database is open and migrated. Then :meth:`submit` write operations from
    any task.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: SynchronousMode = "FULL",
        batch_cap: int = 256,
        queue_size: int = 1024,
        max_page_count: int | None = None,
        checkpoint_after_changes: int = 5_000,
    ) -> None:
        if batch_cap < 1:
            raise ValueError(f"batch_cap must be at least 1, not {batch_cap}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if checkpoint_after_changes < 1:
            raise ValueError(
                f"checkpoint_after_changes must be at least 1, not {checkpoint_after_changes}"
            )
        self.path = path
        self._open = functools.partial(
            open_writer,
            path,
            synchronous=synchronous,
            max_page_count=max_page_count,
            wal_autocheckpoint=_BACKSTOP_PAGES,
        )
        self._open_checkpointer = functools.partial(
            open_checkpointer, path, synchronous=synchronous
        )
        self._checkpoint_after = checkpoint_after_changes
        self._changes = 0
        #: Set to ask the checkpoint task for a checkpoint; replaced when it starts one.
        self._checkpoint_wanted = trio.Event()
        self._checkpointing = False
        #: Set whenever no checkpoint is asked for or under way.
        self._checkpoint_idle = trio.Event()
        self._checkpoint_idle.set()
        self._batch_cap = batch_cap
        # Counted on the writer thread only.
        self._marks = WriteMarks()
        self._send, self._receive = trio.open_memory_channel[_Request](queue_size)
        self._ran = False
        self._stats = WriteStats()
        #: For metrics: requests committed and requests that failed alone
        #: (rolled back to their savepoint), requests per batch, and seconds
        #: per batch in the writer thread, commit included.
        self.writes_committed = 0
        self.writes_failed = 0
        self.batch_sizes = Histogram(_BATCH_SIZE_BUCKETS)
        self.batch_seconds = Histogram(_BATCH_SECONDS_BUCKETS)

    @property
    def queue_depth(self) -> int:
        """Write requests waiting for the writer now."""
        return self._receive.statistics().current_buffer_used

    @property
    def stats(self) -> WriteStats:
        return self._stats

    def room_mark(self, room_id: str) -> WriteMark:
        """The room's mark as the writes counted so far leave it. The
        writer thread counts while this reads, so a write under way may be
        counted or not: it is a hint, which the write's own check makes
        sure of."""
        return self._marks.of(room_id)

    async def wait_for_checkpoint(self) -> None:
        """Return once no WAL checkpoint is asked for or under way (at once
        if none is): after it, the database file alone holds every write
        the last checkpoint could move.
        """
        await self._checkpoint_idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open and migrate the database, then write until cancelled or a
        fatal database error, which is raised from here.
        """
        if self._ran:
            raise RuntimeError("a StorageActor runs once")
        self._ran = True
        writer = _WriterThread(self._open)
        writer.start()
        reason: BaseException | None = None
        try:
            await writer.call(migrate)
            try:
                # The checkpoint task is cancelled with the writes, and a
                # checkpoint under way is waited for: its thread is not
                # abandoned.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._run_checkpoints)
                    task_status.started()
                    await self._serve(writer)
            except BaseExceptionGroup as group:
                # Callers expect the fatal database error itself, as before
                # the checkpoint task existed.
                raise sole_failure(group) from None
        except BaseException as exc:
            reason = exc
            raise
        finally:
            self._refuse_waiting(reason)
            with trio.CancelScope(shield=True):
                await writer.stop()

    async def _serve(self, writer: _WriterThread) -> NoReturn:
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < self._batch_cap:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            operations = [request.operation for request in batch]
            started = time.perf_counter()
            try:
                answers, changes = await writer.call(
                    functools.partial(
                        _run_batch_counting_changes, operations=operations, marks=self._marks
                    )
                )
            except BaseException as exc:
                for request in batch:
                    request.reply(_Failed(_unavailable(exc)))
                raise
            self.batch_seconds.observe(time.perf_counter() - started)
            self.batch_sizes.observe(len(batch))
            self._changes += changes
            if self._changes >= self._checkpoint_after:
                self._start_checkpoint()
            self._stats = dataclasses.replace(
                self._stats,
                batches=self._stats.batches + 1,
                requests=self._stats.requests + len(batch),
                largest_batch=max(self._stats.largest_batch, len(batch)),
            )
            for request, answer in zip(batch, answers, strict=True):
                if isinstance(answer, _Ok):
                    self.writes_committed += 1
                else:
                    self.writes_failed += 1
                request.reply(answer)

    def _start_checkpoint(self) -> None:
        """Ask for a checkpoint beside the writer, unless one is under way."""
        if self._checkpointing:
            return
        self._checkpointing = True
        self._checkpoint_idle = trio.Event()
        self._changes = 0
        self._stats = dataclasses.replace(self._stats, checkpoints=self._stats.checkpoints + 1)
        self._checkpoint_wanted.set()

    async def _run_checkpoints(self) -> NoReturn:
        while True:
            await self._checkpoint_wanted.wait()
            self._checkpoint_wanted = trio.Event()
            try:
                busy, frames, moved = await trio.to_thread.run_sync(
                    _checkpoint, self._open_checkpointer
                )
            except sqlite3.Error as exc:
                _log.warning("a WAL checkpoint of %s failed: %s", self.path, exc)
            else:
                _log.debug("checkpointed %d of %d WAL frames (busy: %d)", moved, frames, busy)
            finally:
                self._checkpointing = False
                self._checkpoint_idle.set()
                self._stats = dataclasses.replace(
                    self._stats, checkpoints_finished=self._stats.checkpoints_finished + 1
                )

    def _refuse_waiting(self, reason: BaseException | None) -> None:
        """Answer every request still in the channel, and close it so that
        later writes fail at once.
        """
        while True:
            try:
                request = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            request.reply(_Failed(_unavailable(reason)))
        self._receive.close()

    async def submit(self, operation: WriteOperation[T]) -> T:
        """Have the actor run ``operation`` and return its result, or raise
        what it raised.

        Once this has handed the request over, cancelling the caller does not
        stop the write.
        """
        request = _Request(operation)
        try:
            await self._send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _unavailable(None) from None
        answer: _Answer[T] = await request.wait()
        return answer.unwrap()
