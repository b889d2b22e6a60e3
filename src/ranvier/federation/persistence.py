"""Transaction de-duplication: a transaction sent again gets the same answer.

A server sends a transaction again when it did not hear our answer (a
timeout, a dropped connection), with the same transaction ID. The spec has
the receiver answer it as before without handling it again.

Invariants
----------

* **An answer, once given, is the answer.** Every 200 answer to a
  transaction is recorded under ``(origin, transaction ID)`` before it is
  sent; a transaction already recorded is answered from the record, and
  nothing else happens. The handler may record the answer itself, in the
  commit of the transaction's writes (:meth:`ReceivedTransactions.record_of`,
  :class:`Recorded`); otherwise it is recorded in a write of its own.
* **One run per transaction.** A repeat that arrives while the first is
  still being handled waits for it and gets its answer. If the first is
  cancelled or fails before it has an answer, one waiting repeat runs the
  transaction itself; nothing waits on a run nobody is doing.
* **Only 200 answers are kept.** A transaction refused as a whole (too many
  PDUs, the origin sending too fast, storage unavailable) is not recorded,
  so the sender can send it again and have it handled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.storage.records import ReceivedTransaction

__all__ = ["ReceivedTransactions", "Recorded", "TransactionStore"]


class TransactionStore(Protocol):
    """Where answers are kept; :class:`ranvier.storage.Storage` is one."""

    async def get_received_transaction(
        self, origin: str, transaction_id: str
    ) -> ReceivedTransaction | None: ...

    async def record_transaction(self, transaction: ReceivedTransaction) -> None: ...


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a handler returns for an answer it recorded itself, with the
    record :meth:`ReceivedTransactions.record_of` made: ``answer`` is
    given, and nothing more is written.
    """

    answer: Any


class _Run:
    """A transaction being handled, for repeats of it to wait on."""

    def __init__(self) -> None:
        self.done = trio.Event()
        #: The answer, once there is one; None if the run ended without one.
        self.answer: Any = None


class ReceivedTransactions:
    """Runs each ``(origin, transaction ID)`` once and answers repeats alike.

    ``clock`` gives milliseconds since the epoch for the record.
    """

    def __init__(
        self, store: TransactionStore, *, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self._store = store
        self._clock = clock
        self._runs: dict[tuple[str, str], _Run] = {}

    def record_of(self, origin: str, transaction_id: str, answer: Any) -> ReceivedTransaction:
        """The record of ``answer`` (a 200 answer's JSON body) to a transaction."""
        return ReceivedTransaction(
            origin=origin,
            transaction_id=transaction_id,
            response_code=200,
            response_json=msgspec.json.encode(answer),
            received_ts=self._clock(),
        )

    def in_flight(self) -> int:
        """How many transactions are being handled now."""
        return len(self._runs)

    async def run_once(
        self, origin: str, transaction_id: str, handle: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The answer to transaction ``transaction_id`` of ``origin``: the
        recorded one if there is one, else what ``handle()`` returns, which
        is recorded first.

        ``handle`` returns the JSON body of a 200 answer, or the body in a
        :class:`Recorded` once it recorded it, or raises to refuse the
        transaction as a whole; the exception is not recorded and reaches
        this call's caller (repeats waiting on it run again).
        """
        key = (origin, transaction_id)
        while True:
            run = self._runs.get(key)
            if run is not None:
                await run.done.wait()
                if run.answer is not None:
                    return run.answer
                continue
            recorded = await self._store.get_received_transaction(origin, transaction_id)
            if recorded is not None:
                return msgspec.json.decode(recorded.response_json)
            if key in self._runs:
                # Another repeat started a run while the read was under way.
                continue
            run = _Run()
            self._runs[key] = run
            try:
                handled = await handle()
                if isinstance(handled, Recorded):
                    answer = handled.answer
                else:
                    answer = handled
                    await self._store.record_transaction(
                        self.record_of(origin, transaction_id, answer)
                    )
                run.answer = answer
                return answer
            finally:
                del self._runs[key]
                run.done.set()
