"""Marks of where the actor's writes stood, so that a write can tell that
nothing touched a room since an earlier one.

Ingestion judges a room's next transaction against what it knows of the
room from its own last write (see :mod:`ranvier.core.ingest_batch`),
rather than reading it all again. That knowledge holds exactly as long as
no other write has changed the room since, which only the actor can tell:
every write of the whole system, a worker's included, is one of its
operations, run one after another on the writer thread.

So the actor counts them. A write that says which rooms it writes
(``rooms_written``, as event persists do) moves those rooms' counts, and
one that writes nothing of any room's events or state
(:func:`writes_no_room`: receipts, the federation sender's bookkeeping)
moves none; any other write may have touched any room, and moves a count
of its own that every room's mark includes. A write given the mark that an earlier write
of its room got back (:meth:`WriteMarks.check`) runs only if the room's
mark is still that one. The marks start again with each actor, under a new
epoch, so a mark from before a restart never matches.

Counting too much is safe (a run reads the room again); counting too little
is not, which is why a write of unknown reach counts against every room.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ranvier.errors import StaleRunError

__all__ = ["WriteMark", "WriteMarks", "rooms_written", "writes_no_room"]

_F = TypeVar("_F", bound=Callable[..., object])


@dataclass(frozen=True, slots=True)
class WriteMark:
    """Where the writes stood for one room at one moment."""

    #: The actor's, new with every start.
    epoch: str
    #: Writes run that did not say which rooms they write.
    unscoped: int
    #: Writes run that said they write this room.
    room: int


def writes_no_room(function: _F) -> _F:
    """Say of a write function that it writes nothing a run of a room's
    events reads: no event, state, extremity, partial state or redaction."""
    function.rooms_written = frozenset()  # type: ignore[attr-defined]
    return function


def rooms_written(operation: Any) -> Iterable[str] | None:
    """The rooms a write says it writes, or None when it does not say.

    A write says so with a ``rooms_written`` attribute: a property of a
    write that is a class, or :func:`writes_no_room` on a function (which
    the partial made of it shows).
    """
    if isinstance(operation, functools.partial):
        operation = operation.func
    rooms: Iterable[str] | None = getattr(operation, "rooms_written", None)
    return rooms


class WriteMarks:
    """The actor's counts of writes; touched only on the writer thread."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(8)
        self._unscoped = 0
        self._rooms: dict[str, int] = {}

    def of(self, room_id: str) -> WriteMark:
        """The room's mark now."""
        return WriteMark(self.epoch, self._unscoped, self._rooms.get(room_id, 0))

    def note(self, operation: Any) -> None:
        """Count a write that ran (or was tried: counting it is safe either way)."""
        rooms = rooms_written(operation)
        if rooms is None:
            self._unscoped += 1
        else:
            self.wrote(rooms)

    def wrote(self, rooms: Iterable[str]) -> None:
        """Count a write of ``rooms``."""
        counts = self._rooms
        for room_id in set(rooms):
            counts[room_id] = counts.get(room_id, 0) + 1

    def check(self, room_id: str, since: WriteMark) -> None:
        """Raise :class:`~ranvier.errors.StaleRunError` unless no write that
        may have touched ``room_id`` ran since it was ``since``."""
        now = self.of(room_id)
        if now != since:
            if now.epoch != since.epoch:
                reason = "storage restarted"
            elif now.room != since.room:
                reason = f"{now.room - since.room} other write(s) of the room"
            else:
                reason = f"{now.unscoped - since.unscoped} write(s) that may touch any room"
            raise StaleRunError(
                f"{room_id} may have changed since the run's knowledge of it: {reason}"
            )
