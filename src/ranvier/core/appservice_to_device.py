"""To-device messages for application services (MSC4203, once part of
MSC2409).

A bridge that does end-to-end encryption for its users needs what is sent
to their devices: room keys, key requests, verification. A service whose
registration sets ``receive_ephemeral`` (or the older
``de.sorunome.msc2409.push_ephemeral``) and ``org.matrix.msc3202`` (see
:class:`ranvier.core.appservices.Registration`) finds them in each
transaction's ``to_device`` list, and under the key of the unstable
proposal, ``de.sorunome.msc2409.to_device``, which the bridges in use read.
Each message is what a sync would hand the device (``type``, ``sender``,
``content``) with ``to_user_id`` and ``to_device_id`` naming it.

A message concerns a service when it was sent to a device of one of its
users: its sender or a local user of its users namespace, exclusive or
not (the MSC says "covered by the namespaces"). A message sent to ``*``
was stored for each device the user had when it was sent
(:mod:`ranvier.core.to_device`), so each device's copy goes to the service
with that device's ID.

Invariants
----------

* **Read from the inbox, not queued beside it.** A service's place in the
  to-device stream is a position, stored with the transaction that carries
  the messages (:mod:`ranvier.storage.appservices`), so a restart neither
  loses nor repeats one. A transaction carries at most
  :data:`MAX_MESSAGES`; more go in the next ones, in stream order.
* **Exclusive users' messages are the service's alone.** The MSC leaves
  to the server when a message delivered to a service leaves the device's
  inbox, and suggests this, which is done here: a message for a user of
  the service's *exclusive* namespace is deleted from the inbox in the
  write that stores the transaction carrying it (the transaction keeps it
  for its retries). Such users are the bridge's puppets, which do not
  sync: left in the inbox, their messages would pile up for ever (Synapse,
  in the versions read, leaves them). A message for a user of a
  non-exclusive namespace, who usually syncs as well, stays in the inbox
  until the device's sync acknowledges it, as for anyone. A message that
  another service receiving to-device messages also covers stays too,
  since that service may not have read it yet.
* **What a device already took is not sent.** The stream is read from the
  inbox: a non-exclusive user's device that syncs and acknowledges a
  message before the service's task reads it (the task wakes with the
  message's notification, so this is rare) keeps it from the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from ranvier.storage.appservices import InboxMessage

from .appservices import AppService, AppServices

__all__ = ["MAX_MESSAGES", "AppServiceToDevice", "ToDeviceBatch", "ToDeviceStore"]

#: To-device messages in one transaction at most, as Synapse sends.
MAX_MESSAGES: Final = 100
#: Inbox rows read at a time.
_BATCH: Final = 200


class ToDeviceStore(Protocol):
    """Storage's side: :class:`ranvier.storage.appservices.AppServiceStorage`."""

    async def to_device_after(self, after: int, *, limit: int) -> list[InboxMessage]: ...

    async def to_device_position(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ToDeviceBatch:
    """The to-device messages for one transaction and the position they
    were read through.
    """

    messages: list[dict[str, Any]]
    through: int
    #: Inbox rows to delete with the transaction: the service's alone.
    taken: list[int]
    #: Whether the stream had more than one batch: read again without waiting.
    more: bool


class AppServiceToDevice:
    """Reads what is new for a service in the to-device stream."""

    def __init__(self, *, store: ToDeviceStore, services: AppServices) -> None:
        self._store = store
        self._services = services

    async def position(self) -> int:
        return await self._store.to_device_position()

    async def collect(self, service: AppService, since: int) -> ToDeviceBatch:
        """What ``service`` is to be sent after ``since``."""
        rows = await self._store.to_device_after(since, limit=_BATCH)
        messages: list[dict[str, Any]] = []
        taken: list[int] = []
        for row in rows:
            if not service.owns_user(row.user_id):
                continue
            messages.append(_for_service(row))
            if self._only_for(service, row.user_id):
                taken.append(row.stream_id)
            if len(messages) == MAX_MESSAGES:
                return ToDeviceBatch(messages, row.stream_id, taken, more=True)
        through = rows[-1].stream_id if rows else since
        return ToDeviceBatch(messages, through, taken, more=len(rows) == _BATCH)

    def _only_for(self, service: AppService, user_id: str) -> bool:
        """Whether ``user_id``'s messages are ``service``'s alone: the user
        is in its exclusive namespace and no other service is sent them.
        """
        if not service.owns_user_exclusively(user_id):
            return False
        return not any(
            other.id != service.id
            and other.url is not None
            and other.receives_to_device
            and other.owns_user(user_id)
            for other in self._services
        )


def _for_service(row: InboxMessage) -> dict[str, Any]:
    stored = msgspec.json.decode(row.message)
    message: dict[str, Any] = {
        "type": stored["type"],
        "sender": stored["sender"],
        "content": stored["content"],
        "to_user_id": row.user_id,
        "to_device_id": row.device_id,
    }
    return message
