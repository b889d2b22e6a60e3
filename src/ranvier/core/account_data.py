"""Account data: what clients keep on the server for their own user, global
or per room (the spec's ``/user/{userId}/account_data`` endpoints).

Every change is a position of the account data stream, the third stream a
sync token carries: ``/sync`` reports a user's entries changed after the
token's position (all of them on an initial sync), and a change wakes the
user's long-polls through the :class:`~ranvier.core.notifier.StreamNotifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.storage.client_data import AccountDataChange

from .notifier import StreamNotifier

__all__ = ["AccountData", "AccountDataStore", "AccountDataUpdates"]

#: Types the server manages through other endpoints (read markers, push
#: rules): clients may not set them here.
_SERVER_MANAGED: Final = frozenset({"m.fully_read", "m.push_rules"})
_MAX_TYPE_LENGTH: Final = 255


class AccountDataStore(Protocol):
    """Account data in storage (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes
    ) -> int: ...

    async def get_account_data(
        self, user_id: str, room_id: str, data_type: str
    ) -> bytes | None: ...

    async def replace_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes, expected: bytes | None
    ) -> int | None: ...

    async def account_data_position(self) -> int: ...

    async def account_data_changes(
        self, user_id: str, after: int, upto: int
    ) -> list[AccountDataChange]: ...


@dataclass(frozen=True, slots=True)
class AccountDataUpdates:
    """A user's account data changed in a span of the stream, as ``/sync``
    lists it: global events, and events per room.
    """

    global_events: list[dict[str, Any]] = field(default_factory=list)
    room_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _forbidden(requester: str, user_id: str) -> MatrixError:
    return MatrixError(
        f"{requester} may not read or change the account data of {user_id}",
        errcode="M_FORBIDDEN",
        http_status=403,
    )


class AccountData:
    """Reads and writes account data, and tells the notifier of changes."""

    def __init__(self, store: AccountDataStore, notifier: StreamNotifier | None = None) -> None:
        self._store = store
        self._notifier = notifier

    async def put(
        self,
        requester: str,
        user_id: str,
        data_type: str,
        content: object,
        *,
        room_id: str | None = None,
    ) -> None:
        """Set ``user_id``'s account data of ``data_type`` (in ``room_id``
        when given) to ``content``, a JSON object.
        """
        _check(requester, user_id, data_type, room_id)
        if data_type in _SERVER_MANAGED:
            raise MatrixError(
                f"{data_type} is managed by the server; it cannot be set here",
                errcode="M_BAD_JSON",
                http_status=405,
            )
        if not isinstance(content, Mapping):
            raise MatrixError(
                "account data must be a JSON object", errcode="M_NOT_JSON", http_status=400
            )
        encoded = msgspec.json.encode(content)
        position = await self._store.put_account_data(user_id, room_id or "", data_type, encoded)
        if self._notifier is not None:
            self._notifier.advance_account_data(position, user_id)

    async def update(
        self,
        requester: str,
        user_id: str,
        data_type: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        room_id: str | None = None,
    ) -> None:
        """Set ``user_id``'s account data of ``data_type`` to ``change`` of
        what it holds (``{}`` for nothing).

        For entries that several requests edit a part of each (a room's
        tags): the entry is replaced only if it still holds what ``change``
        was given, else read and changed again, so that two processes'
        changes at once both stand.
        """
        _check(requester, user_id, data_type, room_id)
        while True:
            stored = await self._store.get_account_data(user_id, room_id or "", data_type)
            held: dict[str, Any] = {} if stored is None else msgspec.json.decode(stored)
            position = await self._store.replace_account_data(
                user_id, room_id or "", data_type, msgspec.json.encode(change(held)), stored
            )
            if position is not None:
                break
        if self._notifier is not None:
            self._notifier.advance_account_data(position, user_id)

    async def get(
        self, requester: str, user_id: str, data_type: str, *, room_id: str | None = None
    ) -> dict[str, Any]:
        """The content of ``user_id``'s account data of ``data_type``;
        ``M_NOT_FOUND`` when there is none.
        """
        _check(requester, user_id, data_type, room_id)
        stored = await self._store.get_account_data(user_id, room_id or "", data_type)
        if stored is None:
            where = "" if room_id is None else f" in {room_id}"
            raise MatrixError(
                f"{user_id} has no {data_type} account data{where}",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        content: dict[str, Any] = msgspec.json.decode(stored)
        return content

    async def position(self) -> int:
        """The account data stream's newest position."""
        return await self._store.account_data_position()

    async def updates(self, user_id: str, after: int | None, upto: int) -> AccountDataUpdates:
        """``user_id``'s entries whose newest change is in ``(after, upto]``.

        ``after`` None asks for every entry, as an initial sync does. It is
        not the same as 0 (a token from before the stream's first change)
        for a subclass that shows a type whether or not anything is stored
        (:class:`~ranvier.core.push_rules.PushRulesAccountData`).
        """
        updates = AccountDataUpdates()
        for change in await self._store.account_data_changes(user_id, after or 0, upto):
            event = {"type": change.type, "content": msgspec.json.decode(change.content)}
            if change.room_id:
                updates.room_events.setdefault(change.room_id, []).append(event)
            else:
                updates.global_events.append(event)
        return updates


def _check(requester: str, user_id: str, data_type: str, room_id: str | None) -> None:
    if not is_valid_user_id(user_id):
        raise MatrixError(
            f"{user_id!r} is not a user ID", errcode="M_INVALID_PARAM", http_status=400
        )
    if requester != user_id:
        raise _forbidden(requester, user_id)
    if not data_type or len(data_type) > _MAX_TYPE_LENGTH:
        raise MatrixError(
            f"an account data type must be 1 to {_MAX_TYPE_LENGTH} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    if room_id is not None and (not room_id.startswith("!") or len(room_id) > 255):
        raise MatrixError(
            f"{room_id!r} is not a room ID", errcode="M_INVALID_PARAM", http_status=400
        )
