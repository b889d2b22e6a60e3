"""Send-to-device messaging: ``PUT /sendToDevice/{eventType}/{txnId}``, the
``m.direct_to_device`` EDU, and the messages a sync hands a device.

Invariants
----------

* **Once per transaction ID.** A client's retry of a send (same device,
  or same token for a request made with no device, and same transaction
  ID) queues nothing and sends no EDU again: the
  transaction is recorded in the same write as the messages. As for room
  sends (:mod:`ranvier.core.client_txns`), a transaction is forgotten a
  day after, by a prune a send runs at most once an hour.
* **Only for devices that exist.** A message for a local device that does
  not exist is dropped; ``*`` reaches every device the user has when it
  is sent.
* **Delivered to other servers, however long it takes.** The
  ``m.direct_to_device`` EDU for each other server is written to the
  outbox in the same write as the transaction and the local messages, and
  the federation sender keeps it there until that server takes it
  (through a backoff, and after a restart). Its ``message_id`` lets the
  receiver take it once, however often it is sent.
* **A server speaks for its own users.** An ``m.direct_to_device`` EDU
  whose sender is not of the sending server is dropped whole, and one may
  only reach users of this server.
* **Delivered until acknowledged.** A sync hands out the messages after
  its token's seventh part, a page at a time; the next sync's token
  acknowledges them, and only then are they deleted
  (:meth:`ranvier.core.e2e_keys.E2eKeys.for_sync`). A queued message wakes
  its recipient's long-polls.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec

from ranvier.core.builder import Clock, wall_clock_ms
from ranvier.core.client_txns import DEFAULT_KEEP_MS, DEFAULT_PRUNE_EVERY_MS, TxnOwner
from ranvier.core.notifier import StreamNotifier
from ranvier.errors import MatrixError
from ranvier.protocol.x_matrix import split_server_name

__all__ = ["OutboxSender", "ToDevice", "ToDeviceStore"]

_log: Final = logging.getLogger(__name__)

_EDU: Final = "m.direct_to_device"


class ToDeviceStore(Protocol):
    """To-device storage (:class:`ranvier.storage.e2e_keys.E2eKeyStorage`)."""

    async def send_to_device(
        self,
        *,
        sender: str,
        sender_device: str | None,
        txn_id: str | None,
        messages: Sequence[tuple[str, str, bytes]],
        now_ms: int,
        remote: Sequence[tuple[str, bytes]] = ...,
        txn_token: bytes = ...,
    ) -> tuple[bool, int | None, list[tuple[str, str]]]: ...

    async def forget_to_device_transactions(self, before_ms: int) -> int: ...


class OutboxSender(Protocol):
    """Sends the EDUs written to the outbox for a destination, without
    waiting (:class:`ranvier.federation.sender.FederationSender`).
    """

    def outbox_filled(self, destination: str) -> None: ...


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _bad(message: str, errcode: str = "M_BAD_JSON") -> MatrixError:
    return MatrixError(message, errcode=errcode, http_status=400)


def _messages(body: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The body's ``messages``, checked to be shaped as the spec says."""
    messages = body.get("messages")
    if not isinstance(messages, dict):
        raise _bad("'messages' must be an object of users to devices to contents")
    for user_id, by_device in messages.items():
        if not user_id.startswith("@") or ":" not in user_id:
            raise _bad(f"{user_id[:80]!r} is not a user ID", "M_INVALID_PARAM")
        try:
            # Checked here: an EDU kept for a server that cannot exist
            # would be tried again for ever.
            split_server_name(_server_of(user_id))
        except ValueError:
            raise _bad(
                f"{user_id[:80]!r} does not name a valid server", "M_INVALID_PARAM"
            ) from None
        if not isinstance(by_device, dict):
            raise _bad(f"the messages for {user_id} must be an object of devices")
        for device_id, content in by_device.items():
            if not isinstance(content, dict):
                raise _bad(
                    f"the message for {user_id}'s device {device_id[:80]!r} must be an object"
                )
    return messages


class ToDevice:
    """Sends, receives and hands out to-device messages; see the module's doc."""

    def __init__(
        self,
        *,
        server_name: str,
        store: ToDeviceStore,
        notifier: StreamNotifier,
        edus: OutboxSender | None = None,
        clock: Clock = wall_clock_ms,
        keep_ms: int = DEFAULT_KEEP_MS,
        prune_every_ms: int = DEFAULT_PRUNE_EVERY_MS,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._notifier = notifier
        self._edus = edus
        self._clock = clock
        self._keep_ms = keep_ms
        self._prune_every_ms = prune_every_ms
        self._pruned_at: int | None = None

    async def send(
        self, owner: TxnOwner, event_type: str, txn_id: str, body: Mapping[str, Any]
    ) -> None:
        """A client's send: local devices' inboxes, and one EDU per other
        server with its users' messages. ``owner`` is the sender and whose
        transaction IDs these are: its device's, or a device-less token's.
        """
        user_id = owner.user_id
        messages = _messages(body)
        local: list[tuple[str, str, bytes]] = []
        remote: dict[str, dict[str, dict[str, Any]]] = {}
        for target, by_device in messages.items():
            server = _server_of(target)
            if server != self._server_name:
                remote.setdefault(server, {})[target] = by_device
                continue
            for target_device, content in by_device.items():
                message = {"type": event_type, "sender": user_id, "content": content}
                local.append((target, target_device, msgspec.json.encode(message)))
        outbox: list[tuple[str, bytes]] = []
        if self._edus is not None:
            for server, by_user in sorted(remote.items()):
                content = {
                    "sender": user_id,
                    "type": event_type,
                    "message_id": secrets.token_urlsafe(16),
                    "messages": by_user,
                }
                edu = {"edu_type": _EDU, "content": content}
                outbox.append((server, msgspec.json.encode(edu)))
        fresh, position, reached = await self._store.send_to_device(
            sender=user_id,
            sender_device=owner.device_id,
            txn_id=txn_id,
            messages=local,
            now_ms=self._clock(),
            remote=outbox,
            txn_token=owner.token_hash,
        )
        if position is not None:
            self._notifier.advance_to_device(position, {user for user, _ in reached})
        if fresh and self._edus is not None:
            for server, _ in outbox:
                self._edus.outbox_filled(server)
        await self._prune()

    async def _prune(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < self._prune_every_ms:
            return
        self._pruned_at = now
        await self._store.forget_to_device_transactions(now - self._keep_ms)

    async def on_remote(self, origin: str, content: Mapping[str, Any]) -> int:
        """An ``m.direct_to_device`` EDU from ``origin``; how many devices' inboxes
        it reached.
        """
        sender = content.get("sender")
        event_type = content.get("type")
        message_id = content.get("message_id")
        messages = content.get("messages")
        if (
            not isinstance(sender, str)
            or not isinstance(event_type, str)
            or not isinstance(message_id, str)
            or not isinstance(messages, dict)
        ):
            _log.info("dropping a to-device EDU from %s: not shaped as the spec says", origin)
            return 0
        if _server_of(sender) != origin:
            _log.info("dropping a to-device EDU from %s for %s, not its user", origin, sender)
            return 0
        local: list[tuple[str, str, bytes]] = []
        for target, by_device in messages.items():
            if _server_of(target) != self._server_name or not isinstance(by_device, dict):
                continue
            for target_device, message_content in by_device.items():
                if not isinstance(message_content, dict):
                    continue
                message = {"type": event_type, "sender": sender, "content": message_content}
                local.append((target, target_device, msgspec.json.encode(message)))
        if not local:
            return 0
        # The message ID makes a resent EDU (a retried transaction) a no-op.
        _, position, reached = await self._store.send_to_device(
            sender=sender,
            sender_device=None,
            txn_id=f"{origin}/{message_id}",
            messages=local,
            now_ms=self._clock(),
        )
        if position is not None:
            self._notifier.advance_to_device(position, {user for user, _ in reached})
        await self._prune()
        return len(reached)
