"""Server ACLs applied to what a transaction (``/send``) carries.

The spec protects ``/send`` unit by unit rather than as a whole, since one
transaction mixes rooms:

* a PDU for a room whose ``m.room.server_acl`` denies the sending server is
  ignored, and its result in the answer says so (403 ``M_FORBIDDEN``);
* an ``m.typing`` EDU for such a room is ignored, and so are all of an
  ``m.receipt`` EDU's receipts for such a room (its receipts for other rooms
  stand).

The checks wrap the transaction's real receivers, so ingestion and the EDU
handlers never see what the ACL keeps out. A PDU whose room is not known
here, or that cannot be read far enough to name its room, goes on: there
is no ACL to apply, and the ingester gives such a PDU its own answer.

The ACL is read from the room's current state when the transaction is
handled, once per room and transaction: one read of the room's state for
the ACL's key where no ACL is set, as in most rooms. Not even that when
the ingester knows the room has none (``known``): its last run of the
room read the key, and nothing wrote the room since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec

from ranvier.core.ingest import PduOutcome, TransactionAnswer
from ranvier.core.interfaces import StateReader
from ranvier.errors import MatrixError
from ranvier.federation.room_access import RoomAccess
from ranvier.federation.server import EduHandler, PduReceiver
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu, pdu_room_id
from ranvier.protocol.server_acl import SERVER_ACL_KEY
from ranvier.protocol.untrusted_json import untrusted_json_decoder

__all__ = ["AclCheckedEdus", "AclCheckedPdus", "AclStore", "KnownCurrentEntry"]


class AclStore(StateReader, Protocol):
    """The reads the ACL checks need: a room's version and its current state."""

    async def get_room_version(self, room_id: str) -> str | None: ...


class _RoomOnly(msgspec.Struct):
    room_id: str


# The PDU's nesting is checked when it is parsed as a PDU, after this.
_decode_room_only = untrusted_json_decoder(_RoomOnly, check_nesting=False)


class KnownCurrentEntry(Protocol):
    """A room's current state's entry for a key, known without a read:
    ``(True, entry)``, the entry None where the state has none; or
    ``(False, None)`` (:meth:`ranvier.core.ingest.FederationIngester.known_current_entry`)."""

    def __call__(self, room_id: str, key: StateKey, /) -> tuple[bool, str | None]: ...


class _Denials:
    """Whether the ACL of each room denies one origin, each room read once."""

    def __init__(self, store: AclStore, origin: str, known: KnownCurrentEntry | None) -> None:
        self._access = RoomAccess(store)
        self._origin = origin
        self._known_entry = known
        self._known: dict[str, MatrixError | None] = {}

    async def of(self, room_id: str) -> MatrixError | None:
        # A room known to have no ACL needs no read.
        if (
            room_id not in self._known
            and self._known_entry is not None
            and self._known_entry(room_id, SERVER_ACL_KEY) == (True, None)
        ):
            self._known[room_id] = None
        if room_id not in self._known:
            try:
                await self._access.check_server_acl(room_id, self._origin)
            except MatrixError as exc:
                self._known[room_id] = exc
            else:
                self._known[room_id] = None
        return self._known[room_id]


class AclCheckedPdus:
    """A :class:`~ranvier.federation.server.PduReceiver` that passes on only
    the PDUs whose room's ACL admits the sending server; ``known`` spares
    the read of a room known to have none.
    """

    def __init__(
        self, inner: PduReceiver, store: AclStore, *, known: KnownCurrentEntry | None = None
    ) -> None:
        self._inner = inner
        self._store = store
        self._known = known

    async def receive_pdus(
        self, origin: str, pdus: Sequence[bytes], *, answer: TransactionAnswer | None = None
    ) -> Sequence[PduOutcome]:
        denials = _Denials(self._store, origin, self._known)
        versions: dict[str, str | None] = {}
        refused: list[PduOutcome] = []
        admitted: list[bytes] = []
        for raw in pdus:
            outcome = await self._refusal(raw, denials, versions)
            if outcome is None:
                admitted.append(raw)
            else:
                refused.append(outcome)
        if not admitted:
            return refused
        if answer is None or not refused:
            return [*await self._inner.receive_pdus(origin, admitted, answer=answer), *refused]
        # The answer recorded must name the PDUs refused here too.
        outer = answer
        inner = TransactionAnswer(lambda outcomes: outer.record([*outcomes, *refused]))
        outcomes = await self._inner.receive_pdus(origin, admitted, answer=inner)
        outer.recorded = inner.recorded
        return [*outcomes, *refused]

    async def _refusal(
        self, raw: bytes, denials: _Denials, versions: dict[str, str | None]
    ) -> PduOutcome | None:
        """The outcome of a PDU the ACL keeps out; None for one it lets by."""
        room_id = pdu_room_id(raw)
        if room_id is None:
            return None
        # The ACL first: a room not known here has none, and the room's
        # version is only needed to name a PDU the ACL keeps out.
        denial = await denials.of(room_id)
        if denial is None:
            return None
        if room_id not in versions:
            versions[room_id] = await self._store.get_room_version(room_id)
        version = versions[room_id]
        if version is None:
            return None
        try:
            event_id: str | None = Pdu.from_json(raw, version).event_id
        except MatrixError:
            event_id = None
        return PduOutcome(event_id, error=denial)


class AclCheckedEdus:
    """An :class:`~ranvier.federation.server.EduHandler` that drops typing
    notices and receipts for rooms whose ACL denies the sending server.
    """

    def __init__(self, inner: EduHandler, store: AclStore) -> None:
        self._inner = inner
        self._store = store

    async def on_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]) -> None:
        denials = _Denials(self._store, origin, None)
        if edu_type == "m.typing":
            room_id = content.get("room_id")
            if isinstance(room_id, str) and await denials.of(room_id) is not None:
                return
        elif edu_type == "m.receipt":
            kept = {
                room_id: receipts
                for room_id, receipts in content.items()
                if not isinstance(room_id, str) or await denials.of(room_id) is None
            }
            if not kept:
                return
            content = kept
        await self._inner.on_edu(origin, edu_type, content)
