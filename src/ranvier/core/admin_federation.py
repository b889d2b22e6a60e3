"""Outgoing federation as an admin sees it, in the shape of Synapse's
federation admin API: the destinations this server sends to with their
retry state, the rooms each has events noted in, and a destination's
backoff cleared so that it is tried again at once.

Clearing a backoff is two steps: the stored retry state goes (as a delivery
would take it), then the process delivering to the destination is woken
(``wake``: the same news as a request signed by the destination, which
makes a queue backing off look at the stored state again and, finding it
gone, send at once). Retry state is written only by the sender, so the
worst a race can do is a new failure written after the clearing, which is
the truth.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.admin_federation import (
    DESTINATION_ORDERS,
    DestinationQuery,
    DestinationRoomRow,
    DestinationRow,
)

__all__ = ["AdminFederation", "DestinationListRequest", "FederationAdminStore"]


class FederationAdminStore(Protocol):
    """:class:`ranvier.storage.admin_federation.FederationAdminStorage`."""

    async def list_destinations(
        self, query: DestinationQuery
    ) -> tuple[list[DestinationRow], int]: ...

    async def destination(self, name: str) -> DestinationRow | None: ...

    async def destination_rooms(
        self, name: str, *, offset: int, limit: int, backwards: bool
    ) -> tuple[list[DestinationRoomRow], int]: ...

    async def clear_destination_backoff(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DestinationListRequest:
    """The list's query parameters, paging already checked."""

    offset: int
    limit: int
    backwards: bool
    order_by: str = "destination"
    name_contains: str | None = None


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _not_found(name: str) -> MatrixError:
    return MatrixError(
        f"{name[:300]!r} is not a known destination", errcode="M_NOT_FOUND", http_status=404
    )


def _destination_json(row: DestinationRow) -> dict[str, Any]:
    return {
        "destination": row.destination,
        "retry_last_ts": row.retry_last_ts,
        "retry_interval": row.retry_interval_ms,
        "failure_ts": row.failure_ts,
        "last_successful_stream_ordering": row.last_sent_stream_ordering,
        # Not in Synapse's answer: when the destination last took a
        # transaction (None: not since this was kept).
        "last_success_ts": row.last_success_ts,
    }


def _page(key: str, items: list[dict[str, Any]], *, offset: int, total: int) -> dict[str, Any]:
    answer: dict[str, Any] = {key: items, "total": total}
    if offset + len(items) < total:
        answer["next_token"] = str(offset + len(items))
    return answer


class AdminFederation:
    """Reads and resets destinations; see the module's doc."""

    def __init__(
        self, *, store: FederationAdminStore, wake: Callable[[str], Awaitable[None]]
    ) -> None:
        self._store = store
        self._wake = wake

    async def list_destinations(self, request: DestinationListRequest) -> dict[str, Any]:
        """A page of the known destinations; ``next_token`` when more follow."""
        if request.order_by not in DESTINATION_ORDERS:
            raise _invalid(f"unknown order_by {request.order_by[:40]!r}")
        rows, total = await self._store.list_destinations(
            DestinationQuery(
                offset=request.offset,
                limit=request.limit,
                order_by=request.order_by,
                backwards=request.backwards,
                name_contains=request.name_contains,
            )
        )
        return _page(
            "destinations",
            [_destination_json(row) for row in rows],
            offset=request.offset,
            total=total,
        )

    async def destination(self, name: str) -> dict[str, Any]:
        """``name``'s retry state; 404 ``M_NOT_FOUND`` if it is not known."""
        row = await self._store.destination(name)
        if row is None:
            raise _not_found(name)
        return _destination_json(row)

    async def destination_rooms(
        self, name: str, *, offset: int, limit: int, backwards: bool
    ) -> dict[str, Any]:
        """A page of the rooms noted for ``name``: ``stream_ordering`` the
        newest event meant for it there, ``sent_stream_ordering`` the newest
        it acknowledged (None before the first)."""
        if await self._store.destination(name) is None:
            raise _not_found(name)
        rows, total = await self._store.destination_rooms(
            name, offset=offset, limit=limit, backwards=backwards
        )
        rooms = [
            {
                "room_id": row.room_id,
                "stream_ordering": row.stream_ordering,
                "sent_stream_ordering": row.sent_stream_ordering,
            }
            for row in rows
        ]
        return _page("rooms", rooms, offset=offset, total=total)

    async def reset_connection(self, name: str) -> dict[str, Any]:
        """Clear ``name``'s backoff and have it tried again now; 400 if it
        is not failing, as there is nothing to reset."""
        row = await self._store.destination(name)
        if row is None:
            raise _not_found(name)
        if row.retry_last_ts == 0:
            raise MatrixError(
                f"{name[:300]!r} is not backing off: there is no retry timing to reset",
                errcode="M_UNKNOWN",
                http_status=400,
            )
        await self._store.clear_destination_backoff(name)
        await self._wake(name)
        return {}
