"""EDUs from other servers: receipts, typing, presence, to-device messages
and device list updates, read and handed on.

:class:`EduDispatcher` is the :class:`~ranvier.federation.server.EduHandler`
of incoming transactions. It reads each EDU's content into the shape the
spec gives it, then hands it to the core handler of its type, which checks
that the sending server speaks for the users named and is in the rooms.
EDU types it does not handle are ignored. A broken entry in an EDU is
dropped alone; content that is not shaped as the spec says at all raises
:class:`~ranvier.errors.BadJsonError`, which the transaction handler logs,
skipping that EDU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec
import trio

from ranvier.core.e2e_keys import E2eKeys
from ranvier.core.presence import Presence
from ranvier.core.receipts import Receipts, RemoteReceipt
from ranvier.core.to_device import ToDevice
from ranvier.core.typing import TypingNotices
from ranvier.errors import BadJsonError
from ranvier.protocol.canonical import CANONICAL_INT_MAX

__all__ = ["EduDispatcher"]

_log: Final = logging.getLogger(__name__)


class _ReceiptData(msgspec.Struct):
    # Within what canonical JSON and SQLite's integers hold.
    ts: Annotated[int, msgspec.Meta(ge=0, le=CANONICAL_INT_MAX)]
    thread_id: str | None = None


class _UserReceipt(msgspec.Struct):
    event_ids: list[str]
    data: _ReceiptData


class _Typing(msgspec.Struct):
    room_id: str
    user_id: str
    typing: bool


class _Presence(msgspec.Struct):
    push: list[dict[str, Any]] = []


def _convert(content: Mapping[str, Any], kind: type[Any], what: str) -> Any:
    try:
        return msgspec.convert(content, kind)
    except msgspec.ValidationError as exc:
        raise BadJsonError(f"invalid {what}: {exc}") from None


def _receipts(content: Mapping[str, Any]) -> list[RemoteReceipt]:
    """The ``m.read`` receipts of an ``m.receipt`` EDU; other receipt types
    and broken entries are left out.
    """
    found: list[RemoteReceipt] = []
    for room_id, by_type in content.items():
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            continue
        if not isinstance(by_type, dict) or not isinstance(by_type.get("m.read"), dict):
            continue
        for user_id, raw in by_type["m.read"].items():
            try:
                receipt = msgspec.convert(raw, _UserReceipt)
            except msgspec.ValidationError as exc:
                _log.info("dropping the receipt of %s in %s: %s", user_id, room_id, exc)
                continue
            if not receipt.event_ids or not isinstance(user_id, str):
                continue
            # The spec has exactly one event ID; of several, the last.
            event_id = receipt.event_ids[-1]
            if not event_id.startswith("$"):
                continue
            found.append(
                RemoteReceipt(room_id, user_id, event_id, receipt.data.ts, receipt.data.thread_id)
            )
    return found


class EduDispatcher:
    """Hands ``m.receipt``, ``m.typing``, ``m.presence`` and
    ``m.direct_to_device`` EDUs, and ``m.device_list_update`` and
    ``m.signing_key_update``, to their
    handlers; any of them may be left out, and its EDUs are ignored. The
    handlers may be set after construction: the server builds the
    transaction handler before what these need.
    """

    def __init__(
        self,
        *,
        receipts: Receipts | None = None,
        typing: TypingNotices | None = None,
        presence: Presence | None = None,
        to_device: ToDevice | None = None,
        e2e_keys: E2eKeys | None = None,
    ) -> None:
        self.receipts = receipts
        self.typing = typing
        self.presence = presence
        self.to_device = to_device
        self.e2e_keys = e2e_keys

    async def on_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]) -> None:
        if edu_type == "m.receipt" and self.receipts is not None:
            await self.receipts.on_remote_receipts(origin, _receipts(content))
        elif edu_type == "m.typing" and self.typing is not None:
            typing = _convert(content, _Typing, "m.typing EDU")
            await self.typing.on_remote_typing(
                origin, typing.room_id, typing.user_id, typing.typing
            )
        elif edu_type == "m.presence" and self.presence is not None:
            presence = _convert(content, _Presence, "m.presence EDU")
            await self.presence.on_remote_presence(origin, presence.push)
        elif edu_type == "m.direct_to_device" and self.to_device is not None:
            await self.to_device.on_remote(origin, content)
        elif (
            edu_type in ("m.device_list_update", "m.signing_key_update")
            and self.e2e_keys is not None
        ):
            await self.e2e_keys.on_remote_update(origin, content, edu_type=edu_type)
        else:
            await trio.lowlevel.checkpoint()
