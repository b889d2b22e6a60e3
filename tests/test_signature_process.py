"""The signature process as the server runs it: a real child process,
started at the first request, answering each in turn, refused for a while
after it fails and started again, and ended with its component."""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey
from trio.testing import MockClock

from ranvier.config import Config, DatabaseConfig, ListenerConfig
from ranvier.core.event_signatures import OffloadUnavailable, SignedMessage
from ranvier.server import open_homeserver
from ranvier.signature_process import SignatureProcess, SignatureProcessUnavailable

#: Every wait of these tests ends well within this, or the test fails.
LIMIT = 30


def _key(n: int) -> SigningKey:
    return SigningKey(bytes([n + 1]) * 32)


def _signed(key: SigningKey, message: bytes) -> SignedMessage:
    return (key.verify_key.encode(), key.sign(message).signature, message)


def _forged(key: SigningKey, message: bytes) -> SignedMessage:
    """``key``'s signature on other bytes than ``message``."""
    return (key.verify_key.encode(), key.sign(message + b"!").signature, message)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@asynccontextmanager
async def _running(
    process: SignatureProcess, *, limit: float = LIMIT
) -> AsyncIterator[trio.Nursery]:
    """``process`` run as the server runs it, until the block ends."""
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            yield nursery
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _answered_once(mock_clock: MockClock, process: SignatureProcess) -> AsyncIterator[int]:
    """``process`` run in real time, which the test may jump ahead, once it
    has answered a first request; gives the child's process ID.

    Each wait after it needs a limit of its own: a jump would end a limit
    around the whole block.
    """
    mock_clock.rate = 1
    async with _running(process, limit=math.inf):
        with trio.fail_after(LIMIT):
            pid = await _first_answer(process)
        yield pid


async def _first_answer(process: SignatureProcess) -> int:
    """Has ``process`` answer a first request; gives its child's process ID."""
    assert await process.verify([_signed(_key(0), b"first")]) == [True]
    pid = process.pid
    assert pid is not None
    return pid


async def _until_gone(process: SignatureProcess, pid: int) -> None:
    """Wait until the component has seen its child ``pid`` end."""
    # The component has no signal for it: it is polled.
    while process.pid == pid:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_signatures_are_judged_in_order() -> None:
    process = SignatureProcess()
    alice, bob = _key(0), _key(1)
    messages = [
        _signed(alice, b"one"),
        _forged(alice, b"two"),
        _signed(bob, b"three"),
        # Alice's signature presented as Bob's.
        (bob.verify_key.encode(), alice.sign(b"four").signature, b"four"),
        _signed(bob, b""),
    ]
    async with _running(process):
        assert await process.verify(messages) == [True, False, True, False, True]
        # The same process answers the next request too.
        assert await process.verify(messages[:1]) == [True]
    assert process.starts == 1
    assert (process.answered, process.checked) == (2, 6)


async def test_nothing_to_check_starts_nothing() -> None:
    process = SignatureProcess()
    async with _running(process):
        assert await process.verify([]) == []
        assert process.starts == 0
        assert process.pid is None


async def test_the_process_starts_at_the_first_request() -> None:
    process = SignatureProcess()
    async with _running(process):
        await trio.sleep(0.05)
        assert process.pid is None
        assert process.starts == 0
        assert await process.verify([_signed(_key(0), b"hello")]) == [True]
        pid = process.pid
        assert pid is not None
        assert pid != os.getpid()
        assert _alive(pid)
        assert process.starts == 1


async def test_a_malformed_key_or_signature_is_refused_before_it_is_written() -> None:
    process = SignatureProcess()
    key, signature, message = _signed(_key(0), b"hello")
    async with _running(process):
        with pytest.raises(ValueError, match="32 bytes"):
            await process.send([(key[:31], signature, message)])
        with pytest.raises(ValueError, match="32 bytes"):
            await process.send([(key, signature + b"\x00", message)])
        # Nothing was written: the stream of requests is not garbled.
        assert await process.verify([(key, signature, message)]) == [True]


async def test_concurrent_senders_each_get_their_own_answers() -> None:
    # Fewer requests may be in flight than there are tasks sending.
    process = SignatureProcess(max_in_flight=2)
    tasks, rounds = 6, 5
    got: dict[int, list[list[bool]]] = {}
    expected: dict[int, list[list[bool]]] = {}

    async def sender(task: int) -> None:
        key = _key(task)
        got[task], expected[task] = [], []
        for round_ in range(rounds):
            # Each task's requests differ in size and in which ones are forged.
            messages: list[SignedMessage] = []
            wanted: list[bool] = []
            for n in range(task + round_ + 1):
                message = f"task {task} round {round_} message {n}".encode()
                good = (n + task + round_) % 3 != 0
                messages.append(_signed(key, message) if good else _forged(key, message))
                wanted.append(good)
            request = await process.send(messages)
            await trio.lowlevel.checkpoint()
            got[task].append(await request.holds())
            expected[task].append(wanted)

    async with _running(process), trio.open_nursery() as senders:
        for task in range(tasks):
            senders.start_soon(sender, task)
    assert got == expected
    verdicts = [v for answers in got.values() for answer in answers for v in answer]
    assert len(verdicts) == sum(t + r + 1 for t in range(tasks) for r in range(rounds))
    assert True in verdicts
    assert False in verdicts
    assert process.starts == 1


async def test_a_request_the_pipe_takes_is_handed_over_without_a_pause() -> None:
    process = SignatureProcess()
    messages = [_signed(_key(0), f"message {n}".encode()) for n in range(8)]
    async with _running(process):
        await _first_answer(process)
        # No turn of the event loop: a transaction hands chunks over as it parses.
        with trio.testing.assert_no_checkpoints():
            request = await process.send(messages)
        assert await request.holds() == [True] * 8


async def test_a_frame_bigger_than_the_pipe_is_written_whole() -> None:
    process = SignatureProcess()
    key = _key(0)
    # Some 256 KiB, four times what a Linux pipe holds.
    big = [_signed(key, bytes([n]) * 65_536) for n in range(3)] + [_forged(key, b"x" * 65_536)]
    async with _running(process):
        pid = await _first_answer(process)
        os.kill(pid, signal.SIGSTOP)
        answers: list[list[bool]] = []

        async def send_big() -> None:
            request = await process.send(big)
            answers.append(await request.holds())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_big)
            # Stopped, the process reads nothing: the write waits for room.
            await trio.sleep(0.05)
            assert answers == []
            os.kill(pid, signal.SIGCONT)
        assert answers == [[True, True, True, False]]
        # The frames after it are read as frames.
        assert await process.verify([_signed(key, b"after")]) == [True]
    assert process.starts == 1


async def test_a_killed_process_fails_its_requests_and_is_refused_for_a_while() -> None:
    process = SignatureProcess(retry_seconds=3600)
    message = _signed(_key(0), b"hello")
    async with _running(process):
        pid = await _first_answer(process)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SignatureProcessUnavailable):
            await process.verify([message])
        await _until_gone(process, pid)
        assert process.pid is None
        assert not _alive(pid)
        # Within the pause: refused at once, nothing started.
        with pytest.raises(SignatureProcessUnavailable, match="failed recently"):
            await process.send([message])
        assert process.pid is None
        assert process.starts == 1


async def test_a_request_in_flight_when_the_process_dies_fails() -> None:
    process = SignatureProcess()
    message = _signed(_key(0), b"hello")
    async with _running(process):
        pid = await _first_answer(process)
        # Stopped, the process can read nothing: the request written next
        # waits in the pipe, certainly unanswered when the process dies.
        os.kill(pid, signal.SIGSTOP)
        request = await process.send([message, message])
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SignatureProcessUnavailable, match="ended before answering"):
            await request.holds()
        # What callers catch.
        assert issubclass(SignatureProcessUnavailable, OffloadUnavailable)


async def test_an_answer_reaches_a_callback_as_it_is_read() -> None:
    process = SignatureProcess()
    key = _key(0)
    messages = [_signed(key, b"one"), _forged(key, b"two")]
    async with _running(process):
        pid = await _first_answer(process)
        got: list[list[bool] | None] = []
        request = await process.send(messages)
        request.when_answered(got.append)
        assert await request.holds() == [True, False]
        assert got == [[True, False]]
        # Asked for once it is known: at once.
        late: list[list[bool] | None] = []
        request.when_answered(late.append)
        assert late == [[True, False]]
        # A request the process dies on: None.
        os.kill(pid, signal.SIGSTOP)
        lost = await process.send(messages)
        lost.when_answered(got.append)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SignatureProcessUnavailable):
            await lost.holds()
        assert got == [[True, False], None]


async def test_after_the_pause_the_process_starts_again(mock_clock: MockClock) -> None:
    process = SignatureProcess(retry_seconds=600)
    alice = _key(0)
    async with _answered_once(mock_clock, process) as first_pid:
        with trio.fail_after(LIMIT):
            os.kill(first_pid, signal.SIGKILL)
            await _until_gone(process, first_pid)
            with pytest.raises(SignatureProcessUnavailable):
                await process.verify([_signed(alice, b"refused")])
            assert process.pid is None
        mock_clock.jump(601)
        with trio.fail_after(LIMIT):
            verdicts = await process.verify([_signed(alice, b"again"), _forged(alice, b"no")])
        assert verdicts == [True, False]
        assert process.starts == 2
        assert process.pid is not None
        assert process.pid != first_pid
        assert _alive(process.pid)


async def test_a_program_that_exits_at_once_fails_requests_without_hanging(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("ranvier.signature_process._PROGRAM", tmp_path / "missing.py")
    process = SignatureProcess(retry_seconds=3600)
    message = _signed(_key(0), b"hello")
    async with _running(process):
        with pytest.raises(SignatureProcessUnavailable):
            await process.verify([message])
        # Refused at once from when the component has seen the child end.
        while process.pid is not None:  # noqa: ASYNC110
            await trio.sleep(0.01)
        with pytest.raises(SignatureProcessUnavailable, match="failed recently"):
            await process.verify([message])
        assert process.starts == 1
        assert (process.answered, process.checked) == (0, 0)


async def test_a_process_that_cannot_be_started_fails_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    process = SignatureProcess(retry_seconds=3600)
    message = _signed(_key(0), b"hello")
    async with _running(process):
        with pytest.raises(SignatureProcessUnavailable, match="not running"):
            await process.verify([message])
        with pytest.raises(SignatureProcessUnavailable, match="failed recently"):
            await process.verify([message])
    assert process.starts == 0
    assert process.pid is None


async def test_the_process_ends_with_its_component() -> None:
    process = SignatureProcess()
    async with _running(process):
        assert await process.verify([_signed(_key(0), b"hello")]) == [True]
        pid = process.pid
        assert pid is not None
        assert _alive(pid)
    # Ended and reaped by the time the component's nursery is left.
    assert not _alive(pid)
    assert process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_homeserver_runs_its_signature_process_as_a_component(tmp_path: Path) -> None:
    config = Config(
        server_name="hs.test",
        data_dir=tmp_path,
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=0),),
        database=DatabaseConfig(synchronous="OFF"),
    )
    with trio.fail_after(LIMIT):
        async with open_homeserver(config) as server:
            process = server.signature_process
            assert process is not None
            assert process.pid is None
            # Were it not running, this would wait for ever.
            assert await process.verify([_signed(_key(0), b"hello")]) == [True]
            pid = process.pid
            assert pid is not None
            assert _alive(pid)
    assert not _alive(pid)


async def test_an_idle_process_ends_and_the_next_request_starts_it_again(
    mock_clock: MockClock,
) -> None:
    process = SignatureProcess(idle_seconds=60)
    alice = _key(0)
    async with _answered_once(mock_clock, process) as first_pid:
        mock_clock.jump(61)
        with trio.fail_after(LIMIT):
            await _until_gone(process, first_pid)
            assert not _alive(first_pid)
            # Ended for want of work, not failed: the next request is not
            # refused, and starts it again.
            verdicts = await process.verify([_signed(alice, b"again"), _forged(alice, b"no")])
        assert verdicts == [True, False]
        assert process.starts == 2
        assert process.pid not in (None, first_pid)


async def test_a_request_as_the_idle_process_ends_is_answered(mock_clock: MockClock) -> None:
    process = SignatureProcess(idle_seconds=60)
    alice = _key(0)
    async with _answered_once(mock_clock, process):
        mock_clock.jump(61)
        # Sent at once, while the component wakes to end the process: by the
        # process it was written to, or by the next one.
        with trio.fail_after(LIMIT):
            assert await process.verify([_signed(alice, b"meanwhile")]) == [True]
        assert process.starts in (1, 2)
        assert process.answered == 2


async def test_a_process_with_a_request_in_flight_is_not_idle(mock_clock: MockClock) -> None:
    process = SignatureProcess(idle_seconds=60)
    alice = _key(0)
    async with _answered_once(mock_clock, process) as pid:
        os.kill(pid, signal.SIGSTOP)
        try:
            with trio.fail_after(LIMIT):
                request = await process.send([_signed(alice, b"held")])
            mock_clock.jump(61)
            # Time for the component to look, in real time.
            await trio.sleep(0.2)
            assert process.pid == pid
        finally:
            os.kill(pid, signal.SIGCONT)
        with trio.fail_after(LIMIT):
            assert await request.holds() == [True]
        # Still the same process, which goes on taking requests: the work it
        # had kept it from counting as idle.
        await trio.sleep(0.5)
        assert process.pid == pid
        assert _alive(pid)
        assert process.starts == 1
