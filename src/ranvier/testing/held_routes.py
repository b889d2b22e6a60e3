"""A server's federation routes with some requests held back until a test
lets them go.

A joiner's resync reads the room's state from the resident; holding those
reads keeps the joiner's room partial for as long as a test needs, however
fast the machine, while the rest of federation (joins, transactions) is
answered at once. Put it in front of a server's routes:
``app.router = held = HeldRoutes(app.router)``, then ``held.released.set()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any, Final

import trio

from ranvier.web import Handler, Request, RouteMatch, Router

__all__ = ["RESYNC_READS", "HeldRoutes"]

#: The (method, route pattern) of each federation read a resync makes.
RESYNC_READS: Final = frozenset(
    ("GET", f"/_matrix/federation/v1/{pattern}")
    for pattern in ("state_ids/{room_id}", "state/{room_id}", "event/{event_id}")
)


class HeldRoutes(Router):
    """``inner``'s routes, with requests to ``held_routes`` (method and
    route pattern) answered only once :attr:`released` is set; never, if
    it is not, until the server stops.
    """

    def __init__(
        self, inner: Router, held_routes: Collection[tuple[str, str]] = RESYNC_READS
    ) -> None:
        super().__init__()
        self._inner = inner
        self._held_routes = frozenset(held_routes)
        #: Set to answer what is held, and everything after.
        self.released = trio.Event()
        #: The targets of the requests held so far, in order of arrival.
        self.held: list[str] = []
        #: Set when the first request is held.
        self.first_held = trio.Event()

    def match(self, method: str, path: str) -> RouteMatch:
        found = self._inner.match(method, path)
        if (found.route.method, found.route.pattern) not in self._held_routes:
            return found
        return RouteMatch(
            dataclasses.replace(found.route, handler=self._holding(found.route.handler)),
            found.params,
        )

    def _holding(self, handler: Handler) -> Handler:
        async def held(request: Request) -> Any:
            self.held.append(request.uri)
            self.first_held.set()
            await self.released.wait()
            return await handler(request)

        return held
