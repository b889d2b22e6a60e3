"""Which membership events a device's client already holds, for ``/sync``
with lazy-loaded members and ``include_redundant_members: false``.

The spec lets a server assume a client remembers the membership events it
was sent, and skip sending them again ("redundant membership events"). A
client holds exactly what the responses up to its ``since`` token brought
it: a token comes only from a response the client read. So what was sent is
remembered per device *by the token of the response it went out in*: a sync
from token T skips what the chain of responses ending in T carried, and its
own response's token remembers that plus what it adds.

A token this process did not hand out to the device (another process's, one
from before a restart, one forgotten to stay within bounds) has nothing
remembered, and the sync sends every sender's membership: redundant, which
the spec allows, never missing. Two answers under one token that carried
different events (two syncs racing from the same token) keep only what both
carried, since the client may hold either.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

__all__ = ["SentMembers"]

_NOTHING: Final[frozenset[str]] = frozenset()


class SentMembers:
    """What each device's client holds, by sync token, within bounds: the
    ``devices`` most recently syncing, each with its ``tokens_per_device``
    latest tokens, each naming at most ``events_per_token`` events (past
    that, nothing more is remembered for the chain, so later syncs send
    again).
    """

    def __init__(
        self,
        *,
        devices: int = 2_000,
        tokens_per_device: int = 4,
        events_per_token: int = 10_000,
    ) -> None:
        self._devices: OrderedDict[tuple[str, str], OrderedDict[str, frozenset[str]]] = (
            OrderedDict()
        )
        self._max_devices = devices
        self._max_tokens = tokens_per_device
        self._max_events = events_per_token

    def held(self, user_id: str, device_id: str, token: str) -> frozenset[str]:
        """The membership event IDs the client syncing from ``token`` holds."""
        tokens = self._devices.get((user_id, device_id))
        if tokens is None:
            return _NOTHING
        return tokens.get(token, _NOTHING)

    def record(self, user_id: str, device_id: str, token: str, held: Iterable[str]) -> None:
        """Remember that a response under ``token`` left the client holding ``held``."""
        events = frozenset(held)
        if len(events) > self._max_events:
            events = _NOTHING
        key = (user_id, device_id)
        tokens = self._devices.get(key)
        if tokens is None:
            tokens = self._devices[key] = OrderedDict()
        self._devices.move_to_end(key)
        earlier = tokens.get(token)
        if earlier is not None:
            events &= earlier
            tokens.move_to_end(token)
        tokens[token] = events
        while len(tokens) > self._max_tokens:
            tokens.popitem(last=False)
        while len(self._devices) > self._max_devices:
            self._devices.popitem(last=False)
