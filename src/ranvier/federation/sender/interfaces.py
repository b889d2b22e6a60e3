"""What the sender needs from storage and from the HTTP client, as
structural types: :class:`ranvier.storage.Storage` and
:class:`~ranvier.federation.transport.client.FederationHttpClient` have
these methods, and a worker could hand it others that do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Set
from typing import Any, Protocol

from ranvier.storage.reads import UnsentDestinationRoom
from ranvier.storage.records import DestinationRetry, StoredEvent

__all__ = ["DeliveryLog", "EduOutbox", "PduOutbox", "SenderStore", "TransactionClient"]


class TransactionClient(Protocol):
    """Sends one signed request and returns the decoded JSON answer, raising
    :class:`~ranvier.federation.transport.client.FederationError` when the
    destination did not give a usable one.
    """

    async def put_json(
        self,
        destination: str,
        path: str,
        content: Any,
        *,
        query: Mapping[str, Any] | None = None,
        max_response_bytes: int | None = None,
    ) -> Any: ...


class SenderStore(Protocol):
    """Retry state, how far each destination has been sent each room, and
    the reads that catching a destination up needs.
    """

    async def get_destination_retry(self, destination: str) -> DestinationRetry | None: ...

    async def store_destination_retry(
        self, destination: str, retry: DestinationRetry | None
    ) -> None: ...

    async def store_destination_rooms(
        self, destination: str, positions: Mapping[str, int]
    ) -> None: ...

    async def mark_destination_rooms_sent(
        self, destination: str, positions: Mapping[str, int]
    ) -> None: ...

    async def get_unsent_destination_rooms(
        self, destination: str, limit: int = ...
    ) -> Sequence[UnsentDestinationRoom]: ...

    async def get_destinations_with_unsent_rooms(
        self, after: str | None = ..., limit: int = ...
    ) -> Sequence[str]: ...

    async def get_forward_extremities(self, room_id: str) -> Set[str]: ...

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]: ...

    async def is_partial_state_room(self, room_id: str) -> bool: ...


class EduOutbox(Protocol):
    """EDUs that must reach their destination, kept in the database until
    it takes them (:class:`ranvier.storage.e2e_keys.E2eKeyStorage` keeps
    ``m.direct_to_device`` ones). Each is a JSON ``{"edu_type", "content"}``
    under a position that only grows.
    """

    async def outbox_destinations(self, after: str | None, limit: int) -> Sequence[str]: ...

    async def outbox_edus(
        self, destination: str, after: int, limit: int
    ) -> Sequence[tuple[int, bytes]]: ...

    async def delete_outbox_edus(self, destination: str, upto: int) -> int: ...


class PduOutbox(Protocol):
    """PDUs that must reach their destination though catching up cannot
    send them: our users' leaves of rooms purged here, whose events are
    gone (:class:`ranvier.storage.pdu_outbox.PduOutboxStorage`). Each is
    ``(position, event ID, JSON as stored)`` under a position that only
    grows, kept until the destination takes it.
    """

    async def pdu_outbox_destinations(self, after: str | None, limit: int) -> Sequence[str]: ...

    async def outbox_pdus(
        self, destination: str, after: int, limit: int
    ) -> Sequence[tuple[int, str, bytes]]: ...

    async def delete_outbox_pdus(self, destination: str, upto: int) -> int: ...


class DeliveryLog(Protocol):
    """Where the time a destination last took a transaction is kept, for
    operators (:class:`ranvier.storage.admin_federation.FederationAdminStorage`).
    """

    async def note_delivery(self, destination: str, ts_ms: int) -> None: ...
