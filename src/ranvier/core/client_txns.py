"""Idempotent client requests: a retried transaction answers with its first event.

A client sends ``PUT .../send/{eventType}/{txnId}`` (or ``/redact``) and may
not hear the answer; it then sends the same request again. The spec scopes
a transaction ID to the device that used it and the HTTP path it was used
on, so the key is ``(owner, scope)`` where the scope is the request path
(which ends in the transaction ID) and the owner (:class:`TxnOwner`) the
user's device. A token with no device (an admin's puppet token, an
application service acting as a user without naming a device) owns its
transactions by itself, as Synapse scopes them by access token: two such
tokens of one user are two clients, which must not be answered each
other's events. The first event sent for a key is recorded in storage,
where it outlives a restart of the server.

Invariants
----------

* **One event per transaction.** Concurrent requests with one key wait for
  each other: the second finds what the first recorded. Across processes
  storage's primary key decides, and the loser answers with the winner's
  event (the spare event it sent is then a duplicate the client never
  sees an ID of; this cannot happen in a single process).
* **Nothing recorded for a failed send.** A send that raises records
  nothing, so the retry tries again.
* **Recorded with the event where it can be.** While a transaction's
  request runs, the event creator may take it
  (:func:`claim_client_transaction`) and record it in the same commit as
  the event it sends; otherwise it is recorded in a write of its own once
  the send returns. Either way the send is answered only once the record
  is on disk.
* **Kept for a while.** Clients retry within minutes, or after a restart
  or a long network failure; a transaction is forgotten ``keep_ms`` after
  it was recorded (a day by default here; the server passes
  ``[housekeeping] client_transaction_days``, a week by default), by a
  prune that a recording runs at most once every ``prune_every_ms`` (an
  hour), and by the housekeeping task, so the table stays the size of that
  window's sends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import trio

from .builder import Clock, wall_clock_ms

if TYPE_CHECKING:
    from .accounts import Requester

__all__ = [
    "DEFAULT_KEEP_MS",
    "DEFAULT_PRUNE_EVERY_MS",
    "ClientTransactionStore",
    "ClientTransactions",
    "PendingTransaction",
    "TxnKey",
    "TxnOwner",
    "TxnRow",
    "claim_client_transaction",
]

#: ``(user_id, device_id, token_hash, scope)``: see :class:`TxnOwner`.
TxnKey = tuple[str, str, bytes, str]

#: A transaction's row: its key, then ``(room_id, event_id, created_ts)``.
TxnRow = tuple[str, str, bytes, str, str, str, int]


@dataclass(frozen=True, slots=True)
class TxnOwner:
    """Whose transaction IDs: a user's device, or a token with no device.

    ``token_hash`` is the SHA-256 of the access token when ``device_id`` is
    empty, and empty beside a device: a device's transactions are its own
    across its tokens (a refreshed token carries on its transactions, as
    the spec says), a device-less token's are the token's.
    """

    user_id: str
    device_id: str
    token_hash: bytes = b""

    @classmethod
    def of(cls, requester: Requester) -> TxnOwner:
        """The owner of the transactions ``requester`` sends."""
        if requester.device_id:
            return cls(requester.user_id, requester.device_id)
        return cls(requester.user_id, "", requester.token_hash)

    def key(self, scope: str) -> TxnKey:
        """The transaction's key in storage: ``(user, device, token, scope)``."""
        return (self.user_id, self.device_id, self.token_hash, scope)


class ClientTransactionStore(Protocol):
    """Where transactions' events are recorded
    (:class:`ranvier.storage.client_transactions.ClientTransactionStorage`).
    """

    async def get_client_transaction(
        self, user_id: str, device_id: str, token_hash: bytes, txn_id: str
    ) -> str | None: ...

    async def get_client_transactions(self, keys: Collection[TxnKey]) -> Mapping[TxnKey, str]: ...

    async def add_client_transaction(
        self,
        user_id: str,
        device_id: str,
        token_hash: bytes,
        txn_id: str,
        *,
        room_id: str,
        event_id: str,
        created_ts: int,
    ) -> str: ...

    async def delete_client_transactions_before(self, created_ts: int) -> int: ...


#: How long a transaction is remembered, and how often the old are dropped.
DEFAULT_KEEP_MS: Final = 24 * 60 * 60 * 1000
DEFAULT_PRUNE_EVERY_MS: Final = 60 * 60 * 1000


@dataclass(slots=True)
class PendingTransaction:
    """A client transaction whose event is being sent: what the event's
    writer records with the event, and what it recorded.
    """

    owner: TxnOwner
    txn_id: str
    room_id: str
    created_ts: int
    claimed: bool = False
    #: The event recorded for the transaction by the event's writer (an
    #: earlier one if the transaction had one); None until then.
    recorded: str | None = None

    def row(self, event_id: str) -> TxnRow:
        """The transaction's row in storage, for ``event_id``."""
        return (
            self.owner.user_id,
            self.owner.device_id,
            self.owner.token_hash,
            self.txn_id,
            self.room_id,
            event_id,
            self.created_ts,
        )


_pending: ContextVar[PendingTransaction | None] = ContextVar(
    "ranvier_client_transaction", default=None
)


def claim_client_transaction(room_id: str) -> PendingTransaction | None:
    """The transaction of the request running in this task, for the one
    event it sends into ``room_id``; None if there is none, or it was
    claimed already. Whoever claims it must set ``recorded`` once the
    event and the record are written, or leave it None to have it
    recorded after the send.
    """
    pending = _pending.get()
    if pending is None or pending.claimed or pending.room_id != room_id:
        return None
    pending.claimed = True
    return pending


class _KeyedLocks:
    """A lock per key, dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[TxnKey, tuple[trio.Lock, int]] = {}

    async def run(self, key: TxnKey, call: Callable[[], Awaitable[str]]) -> str:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await call()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _Read:
    """One read of transactions: the keys it looks up, and its answer."""

    __slots__ = ("done", "failed", "found", "keys")

    def __init__(self, key: TxnKey) -> None:
        self.keys: dict[TxnKey, None] = {key: None}
        self.done = trio.Event()
        self.found: Mapping[TxnKey, str] = {}
        self.failed = False


class _Lookups:
    """Looks up the transactions asked for at about the same time in one read.

    A lookup joins the read that is gathering keys, or else starts one and
    lets the lookups of the moment join it before it reads. A read that
    has begun takes no more keys, so a lookup sees whatever was recorded
    before it was asked. If a read fails, those that joined it ask again.
    """

    def __init__(self, store: ClientTransactionStore) -> None:
        self._store = store
        self._gathering: _Read | None = None

    async def get(self, key: TxnKey) -> str | None:
        while True:
            read = self._gathering
            if read is None:
                return await self._lead(key)
            read.keys[key] = None
            await read.done.wait()
            if not read.failed:
                return read.found.get(key)

    async def _lead(self, key: TxnKey) -> str | None:
        read = self._gathering = _Read(key)
        try:
            await trio.lowlevel.checkpoint()
            self._gathering = None
            read.found = await self._store.get_client_transactions(list(read.keys))
        except BaseException:
            read.failed = True
            raise
        finally:
            if self._gathering is read:
                self._gathering = None
            read.done.set()
        return read.found.get(key)


class ClientTransactions:
    """Runs each client transaction once and remembers its event."""

    def __init__(
        self,
        store: ClientTransactionStore,
        *,
        clock: Clock = wall_clock_ms,
        keep_ms: int = DEFAULT_KEEP_MS,
        prune_every_ms: int = DEFAULT_PRUNE_EVERY_MS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._keep_ms = keep_ms
        self._prune_every_ms = prune_every_ms
        self._pruned_at: int | None = None
        self._locks = _KeyedLocks()
        self._lookups = _Lookups(store)

    async def run(
        self,
        owner: TxnOwner,
        scope: str,
        room_id: str,
        send: Callable[[], Awaitable[str]],
    ) -> str:
        """The event ID ``send`` returned for ``owner``'s transaction
        ``scope``, calling it only if the transaction has none yet.
        """
        key = owner.key(scope)

        async def once() -> str:
            recorded = await self._lookups.get(key)
            if recorded is None:
                pending = PendingTransaction(owner, scope, room_id, self._clock())
                token = _pending.set(pending)
                try:
                    event_id = await send()
                finally:
                    _pending.reset(token)
                if pending.recorded is not None:
                    await self._prune()
                    return pending.recorded
                # Sent is sent: the record must follow even if the client gave up.
                with trio.CancelScope(shield=True):
                    recorded = await self._store.add_client_transaction(
                        *key,
                        room_id=room_id,
                        event_id=event_id,
                        created_ts=self._clock(),
                    )
                assert recorded is not None  # a shielded scope is never cancelled
                await self._prune()
            return recorded

        return await self._locks.run(key, once)

    async def _prune(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < self._prune_every_ms:
            return
        self._pruned_at = now
        await self._store.delete_client_transactions_before(now - self._keep_ms)
