"""Checking batches of ed25519 signatures in a process of their own.

libsodium releases the GIL while it checks a signature, so worker threads
could check a batch on another core, in principle. In practice a thread
needs the GIL back after every signature (some 40 µs), and while the event
loop runs Python it gets it only when the loop blocks or after the switch
interval (5 ms): measured under ``/send``, the threads checked a
transaction's signatures one after another, late, and slowed the reads
running beside them fourfold. A process has a GIL of its own: it checks
while the loop parses, judges and writes, and the loop spends a pipe write
and a read per chunk on it.

:class:`SignatureProcess` is a homeserver component
(``await nursery.start(process.run)``). The process is started at the
first request, not before, so a server that never checks a batch (most
test servers; a server in small rooms) never pays its few MiB. Requests
are answered in the order they were written, each with one verdict per
signature. If the process cannot be started, or dies, requests raise
:class:`SignatureProcessUnavailable` and callers check their signatures in
threads as before; the process is tried again after a pause. It ends
when it has had no work for a while (five minutes), so that a server that
checks a big batch now and then does not keep it, and with its component:
its stdin is closed, and it is killed if it lingers.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import trio

from ranvier.core.event_signatures import OffloadUnavailable, SignedMessage

__all__ = ["SignatureProcess", "SignatureProcessUnavailable"]

_log: Final = logging.getLogger(__name__)

_LENGTH: Final = struct.Struct("!I")
_KEY_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
_PROGRAM: Final = Path(__file__).with_name("_signature_worker.py")


class SignatureProcessUnavailable(OffloadUnavailable):
    """The process is not running: check the signatures another way."""


class _Request:
    """A request written to the process, answered in turn."""

    __slots__ = ("_answered", "_then", "count", "verdicts")

    def __init__(self, count: int) -> None:
        self.count = count
        self._answered = trio.Event()
        self._then: Callable[[list[bool] | None], None] | None = None
        self.verdicts: list[bool] | None = None

    def answer(self, verdicts: list[bool] | None) -> None:
        self.verdicts = verdicts
        self._answered.set()
        then, self._then = self._then, None
        if then is not None:
            then(verdicts)

    def when_answered(self, callback: Callable[[list[bool] | None], None]) -> None:
        """Have ``callback`` called with the verdicts once they are read,
        or with None if the process ends first; at once if that is known.

        It is called on the task that reads the process's answers, and must
        neither block nor raise.
        """
        if self._answered.is_set():
            callback(self.verdicts)
        else:
            self._then = callback

    async def holds(self) -> list[bool]:
        """Whether each signature holds; raises
        :class:`SignatureProcessUnavailable` if the process ended first."""
        await self._answered.wait()
        if self.verdicts is None:
            raise SignatureProcessUnavailable("the signature process ended before answering")
        return self.verdicts


class _Generation:
    """One run of the child process, from the request that wants it to its end."""

    __slots__ = ("ended", "idle", "ready", "stdin", "wanted")

    def __init__(self) -> None:
        #: Set by the first request; run starts the process then.
        self.wanted = trio.Event()
        #: Set once the process is up, or could not be started.
        self.ready = trio.Event()
        #: Set once the process has ended and its requests are failed.
        self.ended = trio.Event()
        self.stdin: trio.abc.SendStream | None = None
        #: The process is ending because it was idle, not because it failed.
        self.idle = False


class SignatureProcess:
    """Checks signatures in a child process, started when first asked.

    ``retry_seconds`` is the pause after the process failed before it is
    started again; meanwhile requests are refused at once. The process
    ends after ``idle_seconds`` without a request, giving its memory back,
    and the next request starts it again (in about 10 ms).
    ``max_in_flight`` bounds the requests written and not yet answered.
    :meth:`send` and :meth:`verify` may only be called while :meth:`run` runs.
    """

    def __init__(
        self,
        *,
        retry_seconds: float = 30.0,
        idle_seconds: float = 300.0,
        max_in_flight: int = 16,
    ) -> None:
        self._retry_seconds = retry_seconds
        self._idle_seconds = idle_seconds
        self._limiter = trio.CapacityLimiter(max_in_flight)
        self._generation = _Generation()
        self._waiting: deque[_Request] = deque()
        self._send_lock = trio.Lock()
        self._refused_until = -math.inf
        self._last_sent = -math.inf
        #: The child's process ID while it runs (to read its memory, say).
        self.pid: int | None = None
        #: How many times the process was started.
        self.starts = 0
        #: Requests the process has answered, and signatures checked in them.
        self.answered = 0
        self.checked = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the process at the first request and keep it serving until
        cancelled: started again at the next request when it ended idle,
        after a pause when it failed."""
        task_status.started()
        while True:
            generation = self._generation
            await generation.wanted.wait()
            try:
                await self._serve(generation)
            finally:
                self.pid = None
                while self._waiting:
                    self._answered(self._waiting.popleft(), None)
                self._generation = _Generation()
                if not generation.idle:
                    self._refused_until = trio.current_time() + self._retry_seconds
                generation.ready.set()
                generation.ended.set()

    async def send(self, messages: Sequence[SignedMessage]) -> _Request:
        """Hand ``messages`` to the process; their verdicts come with
        ``await request.holds()``.

        Returns once they are written, so that the caller can go on while
        they are checked. Raises :class:`SignatureProcessUnavailable` when
        the process cannot take them.

        When the process runs, has room for another request, and its pipe
        takes the whole frame, as it nearly always does, this returns
        without letting other tasks run: a transaction hands its PDUs over
        a chunk at a time while it parses them, and each pause there would
        cost it a turn of the event loop (several per request).
        """
        frame = _frame(messages)
        request = _Request(len(messages))
        try:
            self._limiter.acquire_on_behalf_of_nowait(request)
        except trio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(request)
        waiting = False
        try:
            while True:
                if trio.current_time() < self._refused_until:
                    raise SignatureProcessUnavailable("the signature process failed recently")
                generation = self._generation
                generation.wanted.set()
                if not generation.ready.is_set():
                    await generation.ready.wait()
                try:
                    self._send_lock.acquire_nowait()
                except trio.WouldBlock:
                    await self._send_lock.acquire()
                try:
                    stdin = generation.stdin
                    if stdin is not None:
                        # Queued before it is written: the answer may be read
                        # as soon as the write lets other tasks run.
                        self._waiting.append(request)
                        waiting = True
                        self._last_sent = trio.current_time()
                        await _write(stdin, frame)
                        break
                finally:
                    self._send_lock.release()
                if not generation.idle:
                    raise SignatureProcessUnavailable("the signature process is not running")
                # It is ending for want of work: the next one takes this.
                await generation.ended.wait()
        except BaseException:
            if not waiting:
                self._limiter.release_on_behalf_of(request)
            raise
        return request

    async def verify(self, messages: Sequence[SignedMessage]) -> list[bool]:
        """Whether each signature holds, in order.

        Raises :class:`SignatureProcessUnavailable` when the process cannot
        answer; nothing is known then of any of ``messages``.
        """
        if not messages:
            return []
        request = await self.send(messages)
        return await request.holds()

    def _answered(self, request: _Request, verdicts: list[bool] | None) -> None:
        self._limiter.release_on_behalf_of(request)
        if verdicts is not None:
            self.answered += 1
            self.checked += len(verdicts)
        request.answer(verdicts)

    async def _serve(self, generation: _Generation) -> None:
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-I", str(_PROGRAM)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        except OSError as exc:
            _log.warning("cannot start the signature process; checking in threads: %s", exc)
            return
        assert process.stdin is not None
        assert process.stdout is not None
        stdout = process.stdout
        self.pid = process.pid
        self.starts += 1
        self._last_sent = trio.current_time()
        _log.info("signature process started (pid %d)", process.pid)
        try:
            generation.stdin = process.stdin
            generation.ready.set()
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    await self._read_answers(stdout)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                await self._until_idle(generation)
                # Its stdin closed, the child ends, and read sees it.
                await process.stdin.aclose()
            if generation.idle:
                _log.info("signature process ended after %g s without work", self._idle_seconds)
            else:
                _log.warning(
                    "the signature process ended; checking in threads for %g s",
                    self._retry_seconds,
                )
        finally:
            generation.stdin = None
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()
                with trio.move_on_after(1):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    async def _until_idle(self, generation: _Generation) -> None:
        """Return once nothing was sent for ``idle_seconds`` and nothing is
        waiting, with ``generation`` closed to new requests."""
        while True:
            deadline = self._last_sent + self._idle_seconds
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            async with self._send_lock:
                if not self._waiting:
                    generation.stdin = None
                    generation.idle = True
                    return
            # Requests are still being answered: look again later.
            await trio.sleep(self._idle_seconds)

    async def _read_answers(self, stdout: trio.abc.ReceiveStream) -> None:
        buffer = bytearray()
        while chunk := await stdout.receive_some(65536):
            buffer += chunk
            while len(buffer) >= _LENGTH.size:
                (count,) = _LENGTH.unpack_from(buffer)
                if len(buffer) < _LENGTH.size + count:
                    break
                verdicts = [byte == 1 for byte in buffer[_LENGTH.size : _LENGTH.size + count]]
                del buffer[: _LENGTH.size + count]
                if not self._waiting or self._waiting[0].count != count:
                    _log.error("the signature process answered out of turn; stopping it")
                    return
                self._answered(self._waiting.popleft(), verdicts)


async def _write(stdin: trio.abc.SendStream, frame: bytes) -> None:
    # A frame cut short would garble every later one.
    with trio.CancelScope(shield=True):
        try:
            written = _write_now(stdin, frame)
            if written < len(frame):
                await stdin.send_all(memoryview(frame)[written:])
        except (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError) as exc:
            # The process is gone: run answers every request waiting, the
            # one just queued too, as unanswerable.
            raise SignatureProcessUnavailable(f"the signature process is gone: {exc}") from exc


def _write_now(stdin: trio.abc.SendStream, frame: bytes) -> int:
    """Write what the pipe takes of ``frame`` now, without waiting (its
    file descriptor is non-blocking), and say how much that was: the rest
    goes through ``send_all``, which waits for room. The caller holds the
    send lock, so no ``send_all`` of another frame runs meanwhile."""
    if not isinstance(stdin, trio.lowlevel.FdStream):
        return 0
    try:
        return os.write(stdin.fileno(), frame)
    except BlockingIOError:
        return 0


def _frame(messages: Sequence[SignedMessage]) -> bytes:
    parts: list[bytes] = []
    for key, signature, message in messages:
        if len(key) != _KEY_BYTES or len(signature) != _SIGNATURE_BYTES:
            raise ValueError("an ed25519 key is 32 bytes and a signature 64")
        parts += (key, signature, _LENGTH.pack(len(message)), message)
    body = b"".join(parts)
    return _LENGTH.pack(len(body)) + body
