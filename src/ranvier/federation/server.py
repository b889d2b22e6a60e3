"""Incoming transactions: ``PUT /_matrix/federation/v1/send/{txnId}``.

A transaction carries up to 50 PDUs and 100 EDUs from one origin.
:class:`TransactionHandler` answers it once every PDU in it has been
written or definitively refused, so a 200 answer means "persisted": a PDU
whose result carries no error is in storage, and never dropped afterwards.
The answer lists a result per PDU; a PDU that fails fails alone.

Invariants
----------

* **A repeat changes nothing.** A transaction sent again with the same ID
  gets the first answer (:mod:`ranvier.federation.persistence`). A
  transaction without EDUs whose PDUs one write takes has its answer
  recorded in that write's commit (see
  :meth:`ranvier.core.ingest.FederationIngester.receive_pdus`); EDUs are
  handled beside the PDUs, so the answer to one with EDUs is recorded once
  both are done.
* **One transaction per origin at a time.** The spec has a sender wait for
  each answer; a sender that does not is served in turn. At most
  ``max_waiting_per_origin`` of its transactions wait; more are refused
  with 429 ``M_LIMIT_EXCEEDED`` and recorded nowhere, so a flood makes the
  sender slow down and send again instead of growing our memory, and
  nothing it sent is lost.
* **Bounded work across origins.** At most ``max_concurrent_transactions``
  transactions are handled at once, whatever the number of origins.
* **PDUs of one room in order, rooms concurrently** (see
  :mod:`ranvier.core.ingest`).
* **EDUs never break a transaction.** They are read one by one; a broken
  one, one of a type we do not handle, or one whose handler fails is
  logged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.core.ingest import PduOutcome, TransactionAnswer
from ranvier.errors import BadJsonError, LimitExceededError, MatrixError
from ranvier.failures import sole_failure
from ranvier.federation.persistence import ReceivedTransactions, Recorded
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.untrusted_json import untrusted_json_decoder

__all__ = [
    "KNOWN_EDU_TYPES",
    "MAX_EDUS_PER_TRANSACTION",
    "MAX_PDUS_PER_TRANSACTION",
    "PDU_OUTCOMES",
    "EduHandler",
    "IgnoreEdus",
    "PduReceiver",
    "TransactionHandler",
    "add_transaction_routes",
]

_log: Final = logging.getLogger(__name__)

MAX_PDUS_PER_TRANSACTION: Final = 50
MAX_EDUS_PER_TRANSACTION: Final = 100

#: The EDU types the spec defines; others are ignored.
KNOWN_EDU_TYPES: Final = frozenset(
    {
        "m.typing",
        "m.receipt",
        "m.presence",
        "m.device_list_update",
        "m.signing_key_update",
        "m.direct_to_device",
    }
)

SEND_PATH: Final = "/_matrix/federation/v1/send/{txn_id}"

#: What became of a received PDU: stored and accepted, stored but rejected
#: or soft-failed, held already, or dropped (bad signature, unreadable …).
PDU_OUTCOMES: Final = ("accepted", "rejected", "soft_failed", "already_known", "dropped")


class PduReceiver(Protocol):
    """Where a transaction's PDUs go; :class:`ranvier.core.ingest.FederationIngester` is one.

    ``answer``, when given, may be recorded with the PDUs' write (see
    :meth:`ranvier.core.ingest.FederationIngester.receive_pdus`).
    """

    async def receive_pdus(
        self, origin: str, pdus: Sequence[bytes], *, answer: TransactionAnswer | None = None
    ) -> Sequence[PduOutcome]: ...


class EduHandler(Protocol):
    """Where EDUs of the types in :data:`KNOWN_EDU_TYPES` go."""

    async def on_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]) -> None: ...


class IgnoreEdus:
    """An :class:`EduHandler` for a server that handles no EDUs yet."""

    async def on_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()


class _IncomingTransaction(msgspec.Struct):
    """A ``/send`` body read leniently: PDUs and EDUs stay as bytes, so one
    bad unit cannot make the whole body unreadable.
    """

    origin: str
    origin_server_ts: int
    pdus: list[msgspec.Raw] = []
    edus: list[msgspec.Raw] = []


class _Edu(msgspec.Struct):
    edu_type: str
    content: dict[str, Any]


# The transaction's nesting is not limited as a whole: each PDU is checked
# as it is parsed, and each EDU here, so that one fails alone.
_decode_transaction = untrusted_json_decoder(_IncomingTransaction, check_nesting=False)
_decode_edu = untrusted_json_decoder(_Edu)


@dataclass(eq=False, slots=True)
class _OriginQueue:
    """The transactions of one origin: one handled, a few waiting."""

    lock: trio.Lock
    #: Transactions of the origin holding or waiting for the lock.
    entered: int = 0


class TransactionHandler:
    """Handles ``PUT /send/{txnId}``; register it with :func:`add_transaction_routes`.

    ``pdus`` takes each transaction's PDUs, ``edus`` its EDUs (by default
    none are handled), ``transactions`` answers repeats.
    """

    def __init__(
        self,
        *,
        pdus: PduReceiver,
        transactions: ReceivedTransactions,
        edus: EduHandler | None = None,
        max_concurrent_transactions: int = 16,
        max_waiting_per_origin: int = 4,
        retry_after_ms: int = 1_000,
    ) -> None:
        if max_concurrent_transactions < 1 or max_waiting_per_origin < 0:
            raise ValueError("the limits on transactions must be positive")
        self._pdus = pdus
        self._transactions = transactions
        self._edus = edus if edus is not None else IgnoreEdus()
        self._limiter = trio.CapacityLimiter(max_concurrent_transactions)
        self._max_waiting = max_waiting_per_origin
        self._retry_after_ms = retry_after_ms
        self._origins: dict[str, _OriginQueue] = {}
        #: Transactions handled (repeats answered from the record are not),
        #: their PDUs by what became of them (see :data:`PDU_OUTCOMES`) and
        #: their EDUs by type ("other" for types the spec does not define);
        #: for metrics and tests.
        self.transactions_handled = 0
        self.pdu_outcomes = dict.fromkeys(PDU_OUTCOMES, 0)
        self.edus_received = dict.fromkeys((*sorted(KNOWN_EDU_TYPES), "other"), 0)

    def queued(self, origin: str) -> int:
        """How many transactions of ``origin`` are being handled or waiting."""
        queue = self._origins.get(origin)
        return 0 if queue is None else queue.entered

    async def on_send(self, request: Request) -> Mapping[str, Any]:
        """The route's handler."""
        origin = request.origin
        if origin is None:
            raise MatrixError(
                "transactions must be signed", errcode="M_UNAUTHORIZED", http_status=401
            )
        transaction_id = request.path_params["txn_id"]
        transaction = _read_transaction(request.body)
        if transaction.origin != origin:
            raise MatrixError(
                f"the transaction says it is from {transaction.origin!r}, but {origin!r}"
                " signed the request",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        answer: Mapping[str, Any] = await self._transactions.run_once(
            origin, transaction_id, lambda: self._in_turn(origin, transaction_id, transaction)
        )
        return answer

    async def _in_turn(
        self, origin: str, transaction_id: str, transaction: _IncomingTransaction
    ) -> dict[str, Any] | Recorded:
        queue = self._origins.get(origin)
        if queue is None:
            queue = self._origins[origin] = _OriginQueue(trio.Lock())
        if queue.entered > self._max_waiting:
            raise LimitExceededError(
                f"{origin} has {queue.entered} transactions in progress here; send one at a time",
                retry_after_ms=self._retry_after_ms,
            )
        queue.entered += 1
        try:
            async with queue.lock, self._limiter:
                return await self._handle(origin, transaction_id, transaction)
        finally:
            queue.entered -= 1
            if not queue.entered:
                del self._origins[origin]

    async def _handle(
        self, origin: str, transaction_id: str, transaction: _IncomingTransaction
    ) -> dict[str, Any] | Recorded:
        outcomes: Sequence[PduOutcome] = ()
        answer: TransactionAnswer | None = None

        async def handle_pdus() -> None:
            nonlocal outcomes
            outcomes = await self._pdus.receive_pdus(
                origin, [bytes(pdu) for pdu in transaction.pdus], answer=answer
            )

        if not transaction.edus:
            # Most of a busy room's transactions: no tasks to start, no
            # nursery to wait on, each a few scheduler turns of the loop;
            # and the answer may go with the PDUs' write, a write the fewer.
            answer = TransactionAnswer(
                lambda outcomes: self._transactions.record_of(
                    origin, transaction_id, _answer_body(outcomes)
                )
            )
            await handle_pdus()
        else:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(handle_pdus)
                    nursery.start_soon(self._handle_edus, origin, transaction.edus)
            except BaseExceptionGroup as group:
                raise sole_failure(group) from None
        self.transactions_handled += 1
        counts = self.pdu_outcomes
        for outcome in outcomes:
            counts[_outcome_name(outcome)] += 1
        # The same outcomes the answer recorded with the PDUs was made from.
        body = _answer_body(outcomes)
        return body if answer is None or answer.recorded is None else Recorded(body)

    async def _handle_edus(self, origin: str, edus: Sequence[msgspec.Raw]) -> None:
        for index, raw in enumerate(edus):
            try:
                edu = _decode_edu(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.info("ignoring EDU %d from %s: %s", index, origin, exc)
                continue
            if edu.edu_type not in KNOWN_EDU_TYPES:
                self.edus_received["other"] += 1
                _log.debug("ignoring EDU of unknown type %r from %s", edu.edu_type, origin)
                continue
            self.edus_received[edu.edu_type] += 1
            try:
                await self._edus.on_edu(origin, edu.edu_type, edu.content)
            except Exception:
                _log.exception("handling a %s EDU from %s failed", edu.edu_type, origin)


def _read_transaction(body: bytes) -> _IncomingTransaction:
    try:
        transaction = _decode_transaction(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadJsonError(f"invalid transaction: {exc}") from None
    if len(transaction.pdus) > MAX_PDUS_PER_TRANSACTION:
        raise BadJsonError(
            f"a transaction holds at most {MAX_PDUS_PER_TRANSACTION} PDUs,"
            f" this one {len(transaction.pdus)}"
        )
    if len(transaction.edus) > MAX_EDUS_PER_TRANSACTION:
        raise BadJsonError(
            f"a transaction holds at most {MAX_EDUS_PER_TRANSACTION} EDUs,"
            f" this one {len(transaction.edus)}"
        )
    return transaction


def _answer_body(outcomes: Sequence[PduOutcome]) -> dict[str, Any]:
    """The body of the 200 answer to a transaction whose PDUs had ``outcomes``."""
    results: dict[str, dict[str, str]] = {}
    for outcome in outcomes:
        if outcome.event_id is not None:
            results[outcome.event_id] = (
                {} if outcome.error is None else {"error": _describe(outcome.error)}
            )
    return {"pdus": results}


def _outcome_name(outcome: PduOutcome) -> str:
    result = outcome.result
    if result is None:
        return "dropped"
    if result.already_known:
        return "already_known"
    if result.rejected_reason is not None:
        return "rejected"
    return "soft_failed" if result.soft_failed else "accepted"


def _describe(error: MatrixError) -> str:
    return f"{error.errcode}: {error.message}"


def add_transaction_routes(router: Router, handler: TransactionHandler) -> None:
    """Serve ``PUT /_matrix/federation/v1/send/{txnId}`` with ``handler``."""
    # Not rate limited: a sender keeps one transaction in flight, and a flood
    # of PDUs is slowed by the per-origin queues, never refused or delayed
    # by the clock (which would cut a legitimate burst to a few a second).
    router.add("PUT", SEND_PATH, handler.on_send, units_checked=True, rate_limited=False)
