"""The user directory: ``POST /user_directory/search``.

A user finds the users they share a joined room with, and those joined to
a room with a public join rule or world-readable history that a user of
this server is still in, by user ID or display name (the one their
member event carries), case-insensitively. Results come sorted, local and
exact matches first.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final, Protocol

import msgspec

__all__ = ["MAX_RESULTS", "UserDirectory", "UserDirectoryStore"]

#: The most results one search returns, whatever the client asks.
MAX_RESULTS: Final = 50
DEFAULT_RESULTS: Final = 10


class UserDirectoryStore(Protocol):
    """(:class:`ranvier.storage.client_data.ClientDataStorage`)"""

    async def user_directory(self, user_id: str) -> dict[str, str]: ...


class _Content(msgspec.Struct, frozen=True):
    displayname: object = None
    avatar_url: object = None


class _Member(msgspec.Struct):
    content: _Content = _Content()


_decode_member = msgspec.json.Decoder(_Member).decode


class UserDirectory:
    """Searches the users a requester may find."""

    def __init__(self, store: UserDirectoryStore, *, hidden: Collection[str] = ()) -> None:
        self._store = store
        # Users nobody finds: the server notices user, in every notice room.
        self._hidden = frozenset(hidden)

    async def search(self, user_id: str, term: str, limit: int = DEFAULT_RESULTS) -> dict[str, Any]:
        folded = term.casefold().strip()
        results: list[dict[str, Any]] = []
        for other, member_json in (await self._store.user_directory(user_id)).items():
            if other in self._hidden:
                continue
            try:
                content = _decode_member(member_json).content
            except msgspec.ValidationError:
                content = _Content()
            name = content.displayname if isinstance(content.displayname, str) else None
            if folded not in other.casefold() and (name is None or folded not in name.casefold()):
                continue
            result: dict[str, Any] = {"user_id": other}
            if name is not None:
                result["display_name"] = name
            if isinstance(content.avatar_url, str):
                result["avatar_url"] = content.avatar_url
            results.append(result)
        results.sort(
            key=lambda found: (
                found["user_id"].partition(":")[0][1:].casefold() != folded
                and str(found.get("display_name", "")).casefold() != folded,
                found["user_id"],
            )
        )
        size = max(0, min(limit, MAX_RESULTS))
        return {"results": results[:size], "limited": len(results) > size}
