"""Room tags: ``/user/{userId}/rooms/{roomId}/tags``, kept as the room's
``m.tag`` account data.

Clients sort rooms by them (``m.favourite``, ``m.lowpriority``, their own
``u.*``). A tag is added or removed one at a time, so each change edits
the ``m.tag`` entry in place through :meth:`AccountData.update`, which
keeps two changes made at once (on two devices, through two processes)
from undoing each other. ``/sync`` carries the entry as any room account
data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.errors import MatrixError

from .account_data import AccountData

__all__ = ["TAG_TYPE", "RoomTags"]

#: The room account data type that holds a room's tags.
TAG_TYPE: Final = "m.tag"
#: The spec's limit on a tag's name, in bytes.
_MAX_TAG_BYTES: Final = 255


class RoomTags:
    """A user's tags on rooms, read and changed by that user only."""

    def __init__(self, account_data: AccountData) -> None:
        self._account_data = account_data

    async def get(self, requester: str, user_id: str, room_id: str) -> dict[str, Any]:
        """``{"tags": {...}}``: the room's tags, none when nothing is stored."""
        try:
            content = await self._account_data.get(requester, user_id, TAG_TYPE, room_id=room_id)
        except MatrixError as exc:
            if exc.errcode != "M_NOT_FOUND":
                raise
            content = {}
        return {"tags": _tags_of(content)}

    async def add(
        self, requester: str, user_id: str, room_id: str, tag: str, content: object
    ) -> None:
        """Tag the room with ``tag``, its ``content`` (``order``) replacing
        what the tag had."""
        _check_tag(tag)
        if not isinstance(content, Mapping):
            raise MatrixError("a tag must be a JSON object", errcode="M_NOT_JSON", http_status=400)
        order = content.get("order")
        if "order" in content and (
            isinstance(order, bool) or not isinstance(order, int | float) or not 0 <= order <= 1
        ):
            raise MatrixError(
                "a tag's order must be a number from 0 to 1",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        given = dict(content)

        def added(held: dict[str, Any]) -> dict[str, Any]:
            return held | {"tags": _tags_of(held) | {tag: given}}

        await self._account_data.update(requester, user_id, TAG_TYPE, added, room_id=room_id)

    async def remove(self, requester: str, user_id: str, room_id: str, tag: str) -> None:
        """Take ``tag`` off the room; nothing happens if it had none."""
        _check_tag(tag)

        def removed(held: dict[str, Any]) -> dict[str, Any]:
            tags = _tags_of(held)
            tags.pop(tag, None)
            return held | {"tags": tags}

        await self._account_data.update(requester, user_id, TAG_TYPE, removed, room_id=room_id)


def _tags_of(content: Mapping[str, Any]) -> dict[str, Any]:
    """The tags an ``m.tag`` entry holds; an entry set through the account
    data endpoint may hold anything, and only objects count as tags."""
    tags = content.get("tags")
    if not isinstance(tags, dict):
        return {}
    return {name: value for name, value in tags.items() if isinstance(value, dict)}


def _check_tag(tag: str) -> None:
    if not tag or len(tag.encode("utf-8")) > _MAX_TAG_BYTES:
        raise MatrixError(
            f"a tag's name must be 1 to {_MAX_TAG_BYTES} bytes",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
