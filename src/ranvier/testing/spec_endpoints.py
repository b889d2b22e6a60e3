"""Checking a list of the specification's endpoints against a server's routes.

The client and federation APIs each keep a list of the endpoints their part
of the specification defines, the ones not served with a reason, and the
ones served for some values of a path parameter only (with the routes that
serve them). :class:`SpecListing` holds one such list and answers which of
its endpoints have no route, and what is wrong with the list itself, so
that both tests judge a route and a list the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["Endpoint", "SpecListing"]

#: (method, path template)
Endpoint = tuple[str, str]

_PARAM: Final = re.compile(r"\{[^}/]*\}")
_METHODS: Final = frozenset({"GET", "PUT", "POST", "DELETE"})


def _shape(method: str, path: str) -> Endpoint:
    """An endpoint with its path parameters' names dropped and no trailing
    ``/`` (the router takes a request path with one more)."""
    return method, _PARAM.sub("{}", path).rstrip("/")


@dataclass(frozen=True)
class SpecListing:
    """The specification's ``endpoints``; those ``not_served``, with why;
    and those ``served_for`` some values only, with the routes serving
    them and why the other values are not."""

    endpoints: tuple[Endpoint, ...]
    not_served: Mapping[Endpoint, str]
    served_for: Mapping[Endpoint, tuple[tuple[str, ...], str]]

    def unrouted(self, endpoints: Iterable[Endpoint], routes: Iterable[Endpoint]) -> list[Endpoint]:
        """The ``endpoints`` (and the routes of those served for some
        values only) that none of ``routes`` serves."""
        routed = {_shape(method, path) for method, path in routes}
        missing = []
        for method, path in endpoints:
            served_as = self.served_for.get((method, path), ((path,), ""))[0]
            missing += [(method, p) for p in served_as if _shape(method, p) not in routed]
        return missing

    def wanted(self) -> list[Endpoint]:
        """The endpoints that must have a route."""
        return [endpoint for endpoint in self.endpoints if endpoint not in self.not_served]

    def faults(self) -> list[str]:
        """What is wrong with the list itself: an endpoint listed twice or
        with an odd method, an exception that names no endpoint of the
        specification or is both kinds, a reason empty or longer than a line."""
        faults = [
            f"listed twice: {endpoint}"
            for endpoint in sorted(set(self.endpoints))
            if self.endpoints.count(endpoint) > 1
        ]
        faults += [f"odd method: {e}" for e in self.endpoints if e[0] not in _METHODS]
        spec = set(self.endpoints)
        faults += [f"not the spec's: {e}" for e in sorted(set(self.not_served) - spec)]
        faults += [f"not the spec's: {e}" for e in sorted(set(self.served_for) - spec)]
        both = set(self.not_served) & set(self.served_for)
        faults += [f"both not served and served for some: {e}" for e in sorted(both)]
        reasons = [*self.not_served.values(), *(why for _, why in self.served_for.values())]
        faults += [f"reason not one line: {why!r}" for why in reasons if not why or "\n" in why]
        return faults
